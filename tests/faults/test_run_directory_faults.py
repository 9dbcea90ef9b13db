"""A run directory belongs to one run at a time; a full disk while writing a checkpoint is one line, the previous
checkpoint intact and ``results.json`` marked failed; checkpoints are written once, in their own folder; a resumed
run's record keeps only its own attempt's keys at the top."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import run_script

import mae.training.atomic_checkpoint_io as checkpoint_io
from mae.runs.atomic_files import StorageFullError
from mae.runs.run_directory import merge_json
from mae.runs.run_lock import LOCK_FILE, RunDirectoryBusy, is_launching_process, lock_run_directory
from mae.training.atomic_checkpoint_io import AtomicCheckpointIO

HERE = Path(__file__).resolve().parent

RUN = [
    "data.train_samples=128",
    "schedule.batch_size=32",
    "schedule.epochs=2",
    "schedule.warmup_epochs=1",
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "trainer.limit_val_batches=1",
    "callbacks.knn_evaluation=null",
    "callbacks.reconstruction_grid=null",
    "callbacks.progress_bar=null",
]


def train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_script(run_dir, *RUN, *overrides, import_paths=[HERE])


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


# -- checkpoints: written once, in place; a full disk ----------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_a_full_disk_keeps_the_previous_checkpoint_and_is_one_line(tmp_path, monkeypatch, code):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 8}, path)

    def full(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(checkpoint_io.torch, "save", full)
    with pytest.raises(StorageFullError) as error:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 9}, path)
    message = str(error.value)
    assert f"cannot write last.ckpt in {path.parent}: {os.strerror(code).lower()}" in message, message
    assert "\n" not in message
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 8
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no partial temporary file


def test_a_checkpoint_is_written_once_beside_its_target_and_never_staged_in_the_temp_folder(tmp_path, monkeypatch):
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    staged: list[str] = []  # Lightning's writer (fsspec's transaction) stages through mkstemp in the temp folder
    mkstemp = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: staged.append("mkstemp") or mkstemp(*a, **k))
    written: list[str] = []
    save = torch.save
    monkeypatch.setattr(checkpoint_io.torch, "save", lambda obj, f, *a, **k: (written.append(f.name), save(obj, f)))
    path = tmp_path / "run" / "checkpoints" / "epoch000.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "global_step": 1}, path)
    assert len(written) == 1 and Path(written[0]).parent == path.parent  # one write, in the final folder
    assert not list(system_tmp.iterdir()) and not staged
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["epoch000.ckpt"]


def test_a_full_disk_during_training_is_one_line_and_marks_the_run_failed(tmp_path):
    run_dir = tmp_path / "run"
    # 4 steps per epoch: epoch 0's checkpoints are written, then every write fails from step 6 on.
    result = train(run_dir, "+callbacks.disk_full._target_=disk_full.DiskFullAfter", "+callbacks.disk_full.step=6")
    line = one_error_line(result)
    assert f"in {run_dir / 'checkpoints'}: no space left on device" in line, line
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert not [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "failed" and record["reason"] == line.removeprefix("error: ")


# -- one run per run directory ---------------------------------------------------------------------------------
HOLDER = (
    "import sys, time; from mae.runs.run_lock import lock_run_directory; "
    "handle = lock_run_directory(sys.argv[1]); print('locked', flush=True); time.sleep(600)"
)


def hold_lock(directory: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_on_a_held_directory_is_refused_and_a_killed_holder_blocks_nothing(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        with pytest.raises(RunDirectoryBusy) as error:
            lock_run_directory(run_dir)
        assert str(error.value).startswith(f"run directory {run_dir} is in use by another run (pid {holder.pid})")
        assert "\n" not in str(error.value) and holder.poll() is None  # the holder is unharmed
        assert (run_dir / LOCK_FILE).read_text().strip() == str(holder.pid)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    handle = lock_run_directory(run_dir)  # the killed holder's lock went with it
    handle.close()


def test_a_second_training_run_in_a_busy_directory_exits_2_before_its_job(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        started = time.monotonic()
        line = one_error_line(train(run_dir))
        assert holder.poll() is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert line == (
        f"error: run directory {run_dir} is in use by another run (pid {holder.pid}); wait for it to "
        "end, or set hydra.run.dir=<another folder>"
    )
    assert time.monotonic() - started < 120
    assert [p.name for p in run_dir.iterdir()] == [LOCK_FILE]  # not even Hydra's .hydra/ and log file


@pytest.mark.parametrize(
    "environment, launching",
    [
        ({}, True),
        ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, True),
        ({"LOCAL_RANK": "1"}, False),
        ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False),
        ({"RANK": "3"}, False),
        ({"SLURM_PROCID": "2"}, False),
    ],
)
def test_only_the_launching_process_takes_the_lock(monkeypatch, environment, launching):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert is_launching_process() is launching


# -- results.json after a resume ---------------------------------------------------------------------------------
def test_a_finished_attempt_replaces_the_interrupted_attempts_keys(tmp_path):
    path = tmp_path / "results.json"
    merge_json(path, {"val_loss_per_epoch": [0.9]})
    merge_json(
        path,
        {
            "status": "interrupted",
            "signal": "SIGTERM",
            "epoch": 14,
            "optimizer_steps": 3443,
            "checkpoint": "run/checkpoints/last.ckpt",
        },
    )
    merge_json(path, {"val_loss_per_epoch": [0.9, 0.8]})  # the resumed attempt's callbacks
    record = merge_json(path, {"status": "finished", "epochs": 16, "optimizer_steps": 3744, "top1": 91.25})
    assert json.loads(path.read_text()) == record
    assert record["status"] == "finished" and record["top1"] == 91.25 and record["val_loss_per_epoch"] == [0.9, 0.8]
    assert not {"signal", "epoch", "checkpoint"} & set(record)
    assert record["attempts"] == [
        {
            "status": "interrupted",
            "signal": "SIGTERM",
            "epoch": 14,
            "checkpoint": "run/checkpoints/last.ckpt",
            "optimizer_steps": 3443,
        },
        {"status": "finished", "optimizer_steps": 3744},
    ]
