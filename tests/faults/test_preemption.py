"""Preemption and crashes: SIGTERM/SIGUSR1 mid-epoch save the current step and exit 128 + signal, SIGKILL loses
at most the periodic checkpoint interval, and a resumed run ends with the weights of an uninterrupted one."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# 256 images in batches of 32: 8 steps per epoch, 2 epochs. A signal sent as step 11 begins (epoch 1, batch 3) stops
# the run once that batch has trained: at step 12.
RUN = [
    "data.train_samples=256",
    "schedule.batch_size=32",
    "schedule.epochs=2",
    "schedule.warmup_epochs=1",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "trainer.limit_val_batches=2",
    "callbacks.knn_evaluation=null",
    "callbacks.reconstruction_grid=null",
    "callbacks.progress_bar=null",
    "trainer.log_every_n_steps=1",
]
STEPS = 16


def train(
    run_dir: Path, *overrides: str, signal_at: tuple[int, int] | None = None, base: list[str] = RUN
) -> subprocess.CompletedProcess:
    extra = []
    if signal_at is not None:
        extra = [
            "+callbacks.signal._target_=signal_at_step.SignalAtStep",
            f"+callbacks.signal.step={signal_at[0]}",
            f"+callbacks.signal.signum={signal_at[1]}",
        ]
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"hydra.run.dir={run_dir}",
            f"paths.log_dir={run_dir.parent / 'outputs'}",
            *base,
            *overrides,
            *extra,
        ],
        cwd=run_dir.parent,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return [
            (int(row["step"]), float(row["train/loss_step"]))
            for row in csv.DictReader(handle)
            if row.get("train/loss_step")
        ]


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_weights(run_dir: Path, reference: Path) -> None:
    resumed, full = checkpoint(run_dir), checkpoint(reference)
    assert resumed["global_step"] == full["global_step"] == STEPS
    assert resumed["state_dict"].keys() == full["state_dict"].keys()
    different = [key for key, value in full["state_dict"].items() if not torch.equal(value, resumed["state_dict"][key])]
    assert not different, different[:5]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("full") / "run"
    result = train(run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("num_workers", [0, 2])
def test_sigterm_mid_epoch_saves_the_step_and_resume_is_exact(tmp_path, uninterrupted, num_workers):
    run_dir = tmp_path / "run"
    stopped = train(run_dir, f"data.num_workers={num_workers}", signal_at=(11, signal.SIGTERM))
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1 and "stopped by SIGTERM at epoch 1, step 12" in lines[0], stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted" and results["signal"] == "SIGTERM"
    assert results["optimizer_steps"] == 12 and checkpoint(run_dir)["global_step"] == 12

    resumed = train(run_dir, f"data.num_workers={num_workers}", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr
    assert_same_weights(run_dir, uninterrupted)
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "finished" and record["optimizer_steps"] == STEPS
    assert not {"signal", "epoch", "checkpoint"} & set(record), record  # the interrupted attempt's keys are gone
    assert [(a["status"], a.get("signal"), a["optimizer_steps"]) for a in record["attempts"]] == [
        ("interrupted", "SIGTERM", 12),
        ("finished", None, STEPS),
    ]
    # Resumed in its own directory, the run appends to the metrics of its first attempt: one curve, every step once.
    stitched, full = step_losses(run_dir), step_losses(uninterrupted)
    assert [step for step, _ in stitched] == [step for step, _ in full] == list(range(STEPS))
    assert [loss for _, loss in stitched] == pytest.approx([loss for _, loss in full], rel=1e-6)


@pytest.fixture(scope="module")
def fashion_shards(tmp_path_factory) -> Path:
    """litdata shards of a Fashion-MNIST-format dataset of 256 training images (random pixels)."""
    from mae.data.fashion_mnist import FILES, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC
    from mae.data.shards.__main__ import main as convert

    root = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for split, count in (("train", 256), ("val", 16)):
        arrays = {
            "images": (rng.integers(0, 256, (count, 28, 28)), IDX_IMAGES_MAGIC),
            "labels": (rng.integers(0, 10, count), IDX_LABELS_MAGIC),
        }
        for kind, (array, magic) in arrays.items():
            header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            (root / FILES[f"{split}_{kind}"]).write_bytes(header + array.astype(np.uint8).tobytes())
    assert (
        convert(["data=fashion_mnist", str(root / "shards"), f"data.root={root}", "data.val_size=0", "num_workers=1"])
        == 0
    )
    return root / "shards"


def test_a_streamed_run_stopped_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, fashion_shards):
    """data=fashion_mnist_stream with 2 loader workers: litdata's loader state travels in the checkpoint."""
    base = [o for o in RUN if not o.startswith("data.train_samples")]
    stream = ["data=fashion_mnist_stream", f"data.input_dir={fashion_shards}", "data.num_workers=2"]
    full = tmp_path / "full" / "run"
    full.parent.mkdir()
    assert train(full, *stream, base=base).returncode == 0
    run_dir = tmp_path / "run"
    stopped = train(run_dir, *stream, base=base, signal_at=(11, signal.SIGTERM))
    assert stopped.returncode == 143 and checkpoint(run_dir)["global_step"] == 12, stopped.stderr[-3000:]
    resumed = train(run_dir, *stream, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", base=base)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(run_dir, full)
    stitched, expected = step_losses(run_dir), step_losses(full)
    assert [loss for _, loss in stitched] == pytest.approx([loss for _, loss in expected], rel=1e-6)


@pytest.mark.slow
def test_two_processes_stopped_mid_epoch_resume_exactly_on_two_and_closely_on_one(tmp_path):
    """DDP over 2 CPU processes at a global batch of 32. SIGTERM reaches the launching process (Lightning forwards
    it to the other); resuming on 2 processes gives the uninterrupted weights exactly, and resuming on 1 process
    with the same global batch continues the same experiment (same samples, crops and masks) to float tolerance."""
    base = [o for o in RUN if o != "schedule.batch_size=32"] + ["schedule.global_batch_size=32"]
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    full = tmp_path / "full" / "run"
    full.parent.mkdir()
    assert train(full, *ddp, base=base).returncode == 0
    two, one = tmp_path / "two" / "run", tmp_path / "one" / "run"
    two.parent.mkdir(), one.parent.mkdir()
    stopped = train(two, *ddp, "+callbacks.signal.rank=0", base=base, signal_at=(11, signal.SIGTERM))
    assert stopped.returncode == 143 and checkpoint(two)["global_step"] == 12, stopped.stderr[-3000:]
    (one / "checkpoints").mkdir(parents=True)
    (one / "checkpoints" / "last.ckpt").write_bytes((two / "checkpoints" / "last.ckpt").read_bytes())
    resumed = train(two, *ddp, f"ckpt_path={two / 'checkpoints' / 'last.ckpt'}", base=base)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(two, full)
    alone = train(one, f"ckpt_path={one / 'checkpoints' / 'last.ckpt'}", base=base)
    assert alone.returncode == 0, alone.stderr[-3000:]
    resumed_alone, expected = checkpoint(one), checkpoint(full)
    assert resumed_alone["global_step"] == STEPS
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(resumed_alone["state_dict"][key], value, rtol=0, atol=1e-5, msg=key)


def test_sigusr1_stops_like_sigterm_with_its_own_exit_code(tmp_path):
    run_dir = tmp_path / "run"
    stopped = train(run_dir, signal_at=(5, signal.SIGUSR1))
    assert stopped.returncode == 128 + signal.SIGUSR1 == 138, stopped.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["signal"] == "SIGUSR1" and results["optimizer_steps"] == 6
    assert checkpoint(run_dir)["global_step"] == 6


def test_sigkill_loses_at_most_the_periodic_interval(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    killed = train(run_dir, "callbacks.preemption.every_n_train_steps=4", signal_at=(11, signal.SIGKILL))
    assert killed.returncode == -signal.SIGKILL
    assert checkpoint(run_dir)["global_step"] == 8  # the last multiple of 4 before the kill
    assert not [path.name for path in (run_dir / "checkpoints").iterdir() if ".tmp" in path.name]
    resumed = train(
        run_dir, "callbacks.preemption.every_n_train_steps=4", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(run_dir, uninterrupted)


def test_lightning_slurm_requeue_keeps_its_sigusr1_handler(tmp_path):
    """Under SLURM (auto-requeue on), SIGUSR1 is Lightning's: it saves hpc_ckpt_1.ckpt and asks `scontrol requeue`
    (a stand-in here that records its arguments); the job then runs on until SLURM's SIGTERM, which is ours."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    slurm = {
        "SLURM_NTASKS": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "mae",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    run_dir = tmp_path / "run"
    saved = {key: os.environ.get(key) for key in slurm}
    os.environ.update(slurm)
    try:
        result = train(run_dir, signal_at=(5, signal.SIGUSR1))
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    assert result.returncode == 0, result.stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    assert torch.load(run_dir / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)["global_step"] in (5, 6)
