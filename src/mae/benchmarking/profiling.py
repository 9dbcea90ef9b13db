"""Where a pre-training step's time goes: ``torch.profiler`` over a few steps, top operators by self time.

python -m mae.benchmarking.profiling --preset mae_vit_base_patch16 --batch 8 --dtype fp32
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from mae.benchmarking.peak import synchronize
from mae.benchmarking.step import DTYPES, TrainStep


def profile_step(step: TrainStep, steps: int = 1, warmup: int = 1, row_limit: int = 15) -> str:
    """Run ``warmup`` unprofiled steps, then profile ``steps``; the operator table sorted by self time."""
    for _ in range(warmup):
        step()
    synchronize(step.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if step.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(step.device)
    key = "self_cuda_time_total" if step.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=row_limit)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mae.benchmarking.profiling", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mae_vit_base_patch16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    step = TrainStep(args.preset, args.batch, args.dtype, args.compiled, args.device)
    print(profile_step(step, args.steps, row_limit=args.rows))


if __name__ == "__main__":
    main()
