"""scripts/gpu_check.py on the CPU: its refusal without CUDA, its pure helpers, and the checks that can run here."""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mae.benchmarking.report import Peaks

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def load_script():
    """The script as a module (it is no package member); registered first, as its dataclass needs."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gpu_check = load_script()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_without_cuda_it_exits_2_with_one_line():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: no CUDA device found (torch {torch.__version__}); gpu_check.py needs one"
    ]


def test_throughput_detail_takes_the_share_of_the_bf16_peak():
    # 1e10 forward FLOPs x 3 (training) x 64 images in 0.1 s = 19200 GFLOP/s, half of a 38400 GFLOP/s peak.
    peaks = Peaks({"fp32": 1000.0, "bf16": 38400.0}, {"fp32": True, "bf16": True})
    assert gpu_check.throughput_detail(10**10, 64, 0.1, peaks, "cuda") == (
        "batch 64: 640.0 img/s, 19.2 TFLOP/s, 50.0% of the measured bf16 matmul peak (38.4 TFLOP/s)"
    )


@pytest.mark.parametrize(
    ("peaks", "reason"),
    [
        (Peaks({}), "no bf16 matmul peak measured in this run"),
        (Peaks({"fp32": 1000.0, "bf16": 38400.0}, {"bf16": False}), "bf16 not native on this GPU"),
        (Peaks({"fp32": 1000.0, "bf16": 9600.0}, {"bf16": True}), "inconsistent peak measurement"),
    ],
)
def test_throughput_detail_names_an_unknown_peak_instead_of_a_share(peaks, reason):
    detail = gpu_check.throughput_detail(10**10, 64, 0.1, peaks, "cuda")
    assert detail.startswith("batch 64: 640.0 img/s, 19.2 TFLOP/s; peak unknown (") and reason in detail
    assert "of the measured bf16 matmul peak" not in detail


@pytest.mark.parametrize(
    ("losses", "change", "expected"),
    [
        ([2.0, 1.5, 1.0], 0.0, True),  # the loss fell
        ([1.0, 1.2], 1e-3, True),  # the loss rose, but the weights moved
        ([1.0, 1.2], 0.0, False),
        ([2.0, math.nan, 1.0], 1e-3, False),
        ([2.0, math.inf], 1e-3, False),
        ([], 1e-3, False),
    ],
)
def test_trained_well(losses, change, expected):
    assert gpu_check.trained_well(losses, change) is expected


def test_a_raising_check_fails_with_the_first_line_of_its_error():
    def broken():
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB")

    assert gpu_check.run("fsdp", broken).line() == "FAIL fsdp: RuntimeError: CUDA out of memory."


def test_ddp_check_trains_on_the_cpu_and_leaves_no_process_group():
    environment = dict(os.environ)
    check = gpu_check.trainer_check("ddp", gpu_check.config_strategy("ddp"), accelerator="cpu")
    assert check.passed, check.line()
    assert check.line().startswith("PASS ddp: 12 steps bf16-mixed, loss ")
    assert not torch.distributed.is_initialized()
    # Nor Lightning's launch variables: a leaked LOCAL_RANK made a later 2-process run start only one process.
    assert dict(os.environ) == environment


@pytest.mark.slow  # inductor compiles C++ on the CPU: ~35 s on 2 cores with a cold cache
def test_compile_check_matches_eager_on_the_cpu():
    check = gpu_check.compile_check(torch.device("cpu"))
    assert check.passed, check.line()
    assert "fp32 eager" in check.detail and "bf16 eager" in check.detail
