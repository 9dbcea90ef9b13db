"""This machine's matmul peak: GFLOP/s of large square matrix products, per dtype, measured in-process.

The harness divides each step's achieved GFLOP/s by the peak of its dtype (fp32 rows by the fp32 peak, bf16
autocast rows by the bf16 peak), so both must come from the same machine, threads and run. Torch's thread
count is left as it is set (on the 2-core CPU: 2 threads).

Sizes are tried in increasing order and a size is skipped once one product of it would take longer than
``max_call_s`` (predicted from the last size by the cube law): a CPU without bf16 matmul instructions runs bf16
products at ~1 GFLOP/s, where one 3072^3 product would take a minute.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

DEFAULT_SIZES = (256, 512, 1024, 2048, 3072)


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class PeakResult:
    """Peak of one dtype: the best size's median GFLOP/s, and every size's median."""

    dtype: str
    gflops_per_s: float
    by_size: dict[int, float] = field(default_factory=dict)


def matmul_gflops(size: int, dtype: torch.dtype, device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """Median GFLOP/s of ``repeats`` products of two ``size x size`` matrices (``2 * size^3`` FLOPs each)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def measure_peak(dtype: torch.dtype, device: torch.device, sizes: Sequence[int] = DEFAULT_SIZES,
                 repeats: int = 5, max_call_s: float = 1.0) -> PeakResult:
    """The matmul peak of ``dtype``: the highest per-size median over ``sizes`` (ascending; the first always
    measured, the larger ones while one product is predicted to take at most ``max_call_s``)."""
    by_size: dict[int, float] = {}
    for size in sorted(sizes):
        if by_size:
            last = max(by_size)
            if 2 * size**3 / (by_size[last] * 1e9) > max_call_s:
                break
        by_size[size] = matmul_gflops(size, dtype, device, repeats)
    name = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype).removeprefix("torch."))
    return PeakResult(name, max(by_size.values()), by_size)
