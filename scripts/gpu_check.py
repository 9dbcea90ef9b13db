"""GPU smoke check, `make gpu-check` or `python scripts/gpu_check.py` on a CUDA machine (about 5 minutes, one GPU).

One line per check, PASS or FAIL with its numbers:

1. ddp: bf16-mixed pre-training steps of the tiny MAE through a Lightning Trainer with conf/trainer/ddp.yaml's
   strategy on 1 device: every loss finite, and the loss fell or at least the weights changed.
2. fsdp: the same with conf/trainer/fsdp.yaml's FSDPStrategy (FULL_SHARD, one unit per block).
3. compile: ``model.compile()`` gives eager's loss for the same images and ``noise``, in fp32 and bf16 autocast.
4. throughput: ViT-B/16 pre-training steps (224 px, bf16 autocast, fused AdamW; :mod:`mae.benchmarking.step`)
   in images/s after warm-up, and their share of this GPU's measured bf16 matmul peak
   (:mod:`mae.benchmarking.peak`), or why there is no share.

Exit status: 0 when every check passes, 1 when one fails, and 2, with a one-line message, when there is no CUDA
device: a check meant for GPUs that could not run is no pass.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import Strategy
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from mae.benchmarking.peak import DEFAULT_SIZES, measure_peak, native_support
from mae.benchmarking.report import Peaks, achieved_gflops, peak_share
from mae.benchmarking.step import measure_step
from mae.models import mae_vit_tiny_patch7
from mae.runs.config import CONF_DIR
from mae.training import MAEPretrainModule

EPOCHS = 3
IMAGES = 64
BATCH = 16
"""The Trainer checks fit ``EPOCHS`` passes over ``IMAGES`` fixed random images: 12 optimizer steps."""
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}
"""Relative loss difference allowed between compiled and eager (fused kernels round differently)."""
THROUGHPUT_BATCH = 64
PEAK_SIZES = (*DEFAULT_SIZES, 4096, 8192)
"""Matmul sizes of the peak: a large GPU reaches its peak only on products well above the CPU's 3072."""


@dataclass(frozen=True)
class Check:
    """The outcome of one check: its name, whether it passed, and its numbers."""

    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        """The report line, e.g. ``PASS ddp: 12 steps, ...``."""
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.detail}"


def config_strategy(trainer_group: str, **overrides: Any) -> Strategy:
    """The strategy of ``conf/trainer/<trainer_group>.yaml``, instantiated with ``overrides``: the check runs the
    project's configuration, not a copy of it."""
    node = OmegaConf.load(CONF_DIR / "trainer" / f"{trainer_group}.yaml").strategy
    return instantiate(node, **overrides)


def trained_well(losses: list[float], weight_change: float) -> bool:
    """Whether a short run trained: every loss finite, and the last below the first or some weight moved."""
    if not losses or not all(math.isfinite(loss) for loss in losses):
        return False
    return losses[-1] < losses[0] or weight_change > 0


class LossRecorder(L.Callback):
    """Keeps every training step's loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.losses.append(float(outputs["loss"]))


def trainer_check(name: str, strategy: Strategy, accelerator: str = "gpu", precision: str = "bf16-mixed") -> Check:
    """Pre-train the tiny MAE for a few steps through a 1-device Trainer with ``strategy`` and ``precision``."""
    torch.manual_seed(0)
    module = MAEPretrainModule(mae_vit_tiny_patch7(), lr=1e-3, warmup_epochs=0, epochs=EPOCHS)
    before = {key: value.detach().clone() for key, value in module.state_dict().items()}
    images = TensorDataset(torch.randn(IMAGES, 3, 28, 28), torch.zeros(IMAGES, dtype=torch.long))
    recorder = LossRecorder()
    started = time.perf_counter()
    environment = dict(os.environ)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=1,
            strategy=strategy,
            precision=precision,
            max_epochs=EPOCHS,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=root,
            callbacks=[recorder],
        )
        try:
            trainer.fit(module, DataLoader(images, batch_size=BATCH))
            # The strategy's full state dict: an FSDP module's own parameters are its shards.
            after = trainer.strategy.lightning_module_state_dict()
        finally:
            # Each check starts its own process group, so that the next one may use another backend.
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            # Lightning's DDP leaves MASTER_ADDR/PORT, NODE_RANK and LOCAL_RANK behind: a later launch in this
            # process would take LOCAL_RANK as "already launched" and never start its other processes.
            os.environ.clear()
            os.environ.update(environment)
    change = max(
        (after[key].float().cpu() - value.float().cpu()).abs().max().item()
        for key, value in before.items()
        if key in after and value.is_floating_point()
    )
    losses = recorder.losses
    detail = (
        (
            f"{len(losses)} steps {precision}, loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
            f"max |weight change| {change:.2e}, {time.perf_counter() - started:.1f} s"
        )
        if losses
        else "no steps ran"
    )
    return Check(name, trained_well(losses, change), detail)


def relative_difference(a: float, b: float) -> float:
    """``|a - b|`` relative to ``|b|`` (absolute when ``b`` is 0)."""
    return abs(a - b) / (abs(b) or 1.0)


def compile_check(device: torch.device) -> Check:
    """The compiled tiny MAE's loss against eager's, for the same images and masking noise, in fp32 and bf16."""
    torch.manual_seed(0)
    model = mae_vit_tiny_patch7().to(device).eval()
    images = torch.randn(8, 3, 28, 28, device=device)
    noise = torch.rand(8, model.num_patches, device=device)

    def losses() -> dict[str, float]:
        with torch.no_grad():
            fp32 = model(images, noise=noise).loss.item()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                bf16 = model(images, noise=noise).loss.item()
        return {"fp32": fp32, "bf16": bf16}

    eager = losses()
    started = time.perf_counter()
    model.compile()
    compiled = losses()
    seconds = time.perf_counter() - started
    torch._dynamo.reset()
    gaps = {dtype: relative_difference(compiled[dtype], eager[dtype]) for dtype in eager}
    passed = all(gaps[dtype] <= TOLERANCE[dtype] for dtype in gaps)
    detail = ", ".join(
        f"{dtype} eager {eager[dtype]:.6f} compiled {compiled[dtype]:.6f} "
        f"(rel. diff {gaps[dtype]:.1e}, allowed {TOLERANCE[dtype]:.0e})"
        for dtype in gaps
    )
    return Check("compile", passed, f"{detail}; compiling and running {seconds:.1f} s")


def throughput_detail(forward_flops: int, batch: int, s_per_step: float, peaks: Peaks, device: str) -> str:
    """Images/s and achieved TFLOP/s of a bf16 step of ``batch`` images taking ``s_per_step`` s, and its share
    of the measured bf16 matmul peak in ``peaks``, or, where that peak is no yardstick, why not."""
    gflops = achieved_gflops(forward_flops, batch, s_per_step)
    share = peak_share(gflops, "bf16", device, peaks)
    rate = f"batch {batch}: {batch / s_per_step:.1f} img/s, {gflops / 1e3:.1f} TFLOP/s"
    if share["pct_of_peak"] is None:
        return f"{rate}; peak unknown ({share['peak_note']})"
    return (
        f"{rate}, {share['pct_of_peak']:.1f}% of the measured bf16 matmul peak "
        f"({share['peak_gflops_per_s'] / 1e3:.1f} TFLOP/s)"
    )


def throughput_check(device: torch.device) -> Check:
    """ViT-B/16 pre-training throughput at the largest batch up to :data:`THROUGHPUT_BATCH` that fits."""
    batch = THROUGHPUT_BATCH
    while True:
        try:
            result = measure_step("mae_vit_base_patch16", batch, "bf16", device=device, warmup=3, repeats=10)
            break
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            torch.cuda.empty_cache()
    # fp32's peak too: peak_share refuses a bf16 "peak" that is far below fp32's (an emulation's).
    measured = {
        name: measure_peak(dtype, device, PEAK_SIZES, repeats=3).gflops_per_s
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    peaks = Peaks(measured, {name: native_support(name, device) for name in measured})
    detail = throughput_detail(result.forward_flops, batch, result.s_per_step, peaks, device.type)
    return Check("throughput", True, f"ViT-B/16 224 px bf16 {detail}")


def run(name: str, check: Callable[[], Check]) -> Check:
    """``check()``, or a failed check naming the exception it raised."""
    try:
        return check()
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        return Check(name, False, f"{type(error).__name__}: {first_line}")


def main() -> int:
    """Run the four checks on the first CUDA device and print one line each; the exit status (see above)."""
    if not torch.cuda.is_available():
        print(f"error: no CUDA device found (torch {torch.__version__}); gpu_check.py needs one", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0)
    # Lightning's start-up notes would bury the four result lines (its warnings still show).
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, lightning {L.__version__}", flush=True)
    checks = {
        "ddp": lambda: trainer_check("ddp", config_strategy("ddp")),
        "fsdp": lambda: trainer_check("fsdp", config_strategy("fsdp")),
        "compile": lambda: compile_check(device),
        "throughput": lambda: throughput_check(device),
    }
    results = []
    for name, check in checks.items():
        results.append(run(name, check))
        print(results[-1].line(), flush=True)
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
