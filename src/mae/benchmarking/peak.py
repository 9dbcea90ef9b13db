"""This machine's matmul peak: GFLOP/s of large square matrix products, per dtype, measured in-process.

The harness divides each step's achieved GFLOP/s by the peak of the dtype its matmuls run in (fp32 rows by the
fp32 peak, bf16 autocast rows by the bf16 peak), so both must come from the same machine, threads and run.
Torch's thread count is left as it is set (on the 2-core CPU: 2 threads).

Each size is measured in the three operand layouts of a training step's matmuls (:data:`LAYOUTS`) and the
peak is the best of them: without bf16 matmul instructions torch runs bf16 through a fallback GEMM whose speed
depends on the layout by up to ~8x (3 GFLOP/s for plain ``A @ B``, its slowest, 22 for ``A^T @ B`` at 256 on
the 2-core CPU), so a peak of ``A @ B`` alone is no bound on a step that mixes all three; a bf16 step's share of
such a peak read ~300%. (Such a peak is still no yardstick: the report gives emulated dtypes no share at all.)

Sizes are tried in increasing order and a size is skipped once one product of it would take longer than
``max_call_s`` (predicted from the last size's slowest layout by the cube law): such a CPU runs bf16 products
at ~1 GFLOP/s, where one 3072^3 product would take a minute.

Whether the device runs a dtype natively (:func:`native_support`) is read off the hardware, not timed: on x86
``/proc/cpuinfo`` lists ``avx512_bf16`` or ``amx_bf16``, on CUDA :func:`torch.cuda.is_bf16_supported` without
emulation. A dtype without it is emulated, and its "peak" is no yardstick for anything.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

DEFAULT_SIZES = (256, 512, 1024, 2048, 3072)
LAYOUTS: dict[str, tuple[bool, bool]] = {"nn": (False, False), "nt": (False, True), "tn": (True, False)}
"""Layout name: whether the left and the right operand are transposed (column-major) views. A linear layer's
forward is ``x @ W^T`` ("nt"), its input gradient ``g @ W`` ("nn") and its weight gradient ``g^T @ x`` ("tn")."""
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""CPU flags of bf16 matmul instructions: x86's AVX512-BF16 and AMX-BF16 (``flags``), AArch64's BF16
(``Features``)."""
CPUINFO = Path("/proc/cpuinfo")


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class PeakResult:
    """Peak of one dtype: the best size's best-layout median GFLOP/s, every size's best, every layout's, and
    the best size's rate of a training step's mix of layouts (:func:`layout_mix_gflops`)."""

    dtype: str
    gflops_per_s: float
    by_size: dict[int, float] = field(default_factory=dict)
    by_layout: dict[str, dict[int, float]] = field(default_factory=dict)
    mixed_gflops_per_s: float | None = None


def layout_mix_gflops(rates: Mapping[str, float]) -> float:
    """GFLOP/s of equal FLOPs in each layout of ``rates`` (a linear layer's forward, input gradient and weight
    gradient are one product each of the same size): their harmonic mean. Where layouts differ (emulated bf16)
    this, not the best layout, bounds how fast a step can be, e.g. to decide whether a row can finish in time."""
    return len(rates) / sum(1 / rate for rate in rates.values())


def dtype_name(dtype: torch.dtype) -> str:
    """The results' name of ``dtype``: ``fp32``, ``bf16``, or torch's name without the prefix."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype).removeprefix("torch."))


def operand(size: int, dtype: torch.dtype, device: torch.device, transposed: bool) -> torch.Tensor:
    """A random ``size x size`` matrix, as a transposed view of a contiguous one when ``transposed``."""
    matrix = torch.randn(size, size, device=device).to(dtype)
    return matrix.t() if transposed else matrix


def matmul_gflops(
    size: int, dtype: torch.dtype, device: torch.device, repeats: int = 5, warmup: int = 1, layout: str = "nn"
) -> float:
    """Median GFLOP/s of ``repeats`` products of two ``size x size`` matrices (``2 * size^3`` FLOPs each) in
    ``layout`` (a key of :data:`LAYOUTS`)."""
    left, right = LAYOUTS[layout]
    a, b = operand(size, dtype, device, left), operand(size, dtype, device, right)
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


def measure_peak(
    dtype: torch.dtype,
    device: torch.device,
    sizes: Sequence[int] = DEFAULT_SIZES,
    repeats: int = 5,
    max_call_s: float = 1.0,
    layouts: Iterable[str] = tuple(LAYOUTS),
) -> PeakResult:
    """The matmul peak of ``dtype``: the highest per-size, per-layout median over ``sizes`` (ascending; the
    first always measured, the larger ones while one product of the slowest layout is predicted to take at most
    ``max_call_s``) and ``layouts``."""
    by_layout: dict[str, dict[int, float]] = {layout: {} for layout in layouts}
    by_size: dict[int, float] = {}
    for size in sorted(sizes):
        if by_size:
            last = max(by_size)
            slowest = min(rates[last] for rates in by_layout.values())
            if 2 * size**3 / (slowest * 1e9) > max_call_s:
                break
        for layout, rates in by_layout.items():
            rates[size] = matmul_gflops(size, dtype, device, repeats, layout=layout)
        by_size[size] = max(rates[size] for rates in by_layout.values())
    mixed = max(layout_mix_gflops({layout: rates[size] for layout, rates in by_layout.items()}) for size in by_size)
    return PeakResult(dtype_name(dtype), max(by_size.values()), by_size, by_layout, mixed)


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The CPU flags every processor in ``cpuinfo`` (``/proc/cpuinfo`` text) lists, from its ``flags`` (x86)
    or ``Features`` (AArch64) lines; empty when there are none."""
    lists = [
        frozenset(line.split(":", 1)[1].split())
        for line in cpuinfo.splitlines()
        if line.split(":", 1)[0].strip() in ("flags", "Features") and ":" in line
    ]
    return frozenset.intersection(*lists) if lists else frozenset()


def native_bf16_cpu(flags: frozenset[str]) -> bool:
    """Whether CPU ``flags`` include bf16 matmul instructions (without them oneDNN or torch's fallback GEMM
    converts to fp32 and back, far below the fp32 speed)."""
    return bool(flags & NATIVE_BF16_FLAGS)


def native_support(dtype: str, device: torch.device, cpuinfo: Path = CPUINFO) -> bool | None:
    """Whether ``device`` runs ``dtype`` ("fp32" or "bf16") matmuls in hardware; ``None`` when it cannot be told
    (a CPU without ``/proc/cpuinfo`` flags, or another device type)."""
    if dtype == "fp32":
        return True
    if dtype != "bf16":
        return None
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu" and cpuinfo.exists():
        flags = cpu_flags(cpuinfo.read_text())
        return native_bf16_cpu(flags) if flags else None
    return None
