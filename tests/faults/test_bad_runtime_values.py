"""Values that used to reach a library's own exception: the seed, and a training set smaller than one batch. Each
ends train.py with one ``error:`` line and exit code 2, before any training step or checkpoint."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import run_script
from omegaconf import OmegaConf

from mae.jobs.harness import SEED_RANGE, SetupError, check_seed

TINY = [
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "schedule.epochs=1",
    "schedule.warmup_epochs=0",
    "callbacks.knn_evaluation=null",
    "callbacks.reconstruction_grid=null",
    "callbacks.progress_bar.refresh_rate=0",
]


def train_py(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_script(tmp_path / "run", *TINY, *overrides)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "abc", True])
def test_seed_outside_the_range_is_refused(seed):
    with pytest.raises(SetupError, match=r"^seed=.* must be an integer from 0 to 4294967295$"):
        check_seed(OmegaConf.create({"seed": seed}))


@pytest.mark.parametrize("seed", [0, 1, SEED_RANGE[1]])
def test_seeds_in_the_range_pass(seed):
    check_seed(OmegaConf.create({"seed": seed}))


def test_negative_seed_is_one_line_before_work(tmp_path):
    result = train_py(tmp_path, "seed=-1", "data.train_samples=64", "schedule.batch_size=16")
    assert result.returncode == 2, result.stderr[-2000:]
    assert error_lines(result) == ["error: seed=-1 must be an integer from 0 to 4294967295"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_training_set_smaller_than_a_batch_is_one_line(tmp_path):
    result = train_py(tmp_path, "data.train_samples=100", "schedule.batch_size=256")
    assert result.returncode == 2, result.stderr[-2000:]
    assert error_lines(result) == [
        "error: the training set has 100 images, fewer than batch_size=256 x 1 "
        "process(es); lower schedule.batch_size to at most 100 or train on more images"
    ]
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))
