"""Files appear whole or not at all, and an output directory that cannot be written is refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_config

from mae.jobs.harness import SetupError, build_training_run
from mae.runs.atomic_files import replaced_atomically, write_text_atomically
from mae.runs.config import instantiate_node
from mae.runs.run_directory import check_writable
from mae.training.atomic_checkpoint_io import AtomicCheckpointIO


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")  # what a write that fails halfway looks like to the caller


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = write_text_atomically(tmp_path / "results.json", '{"top1": 90.0}\n')
    with pytest.raises(RuntimeError, match="boom"), replaced_atomically(path) as tmp:
        tmp.write_text('{"top1": 9')
        raise RuntimeError("boom")
    assert path.read_text() == '{"top1": 90.0}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_checkpoint_io_keeps_the_previous_checkpoint_when_a_save_fails(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 8}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 9, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 8
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_trainer_uses_the_atomic_checkpoint_writer(tmp_path):
    trainer = instantiate_node(compose_config(output_dir=tmp_path / "run").trainer)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_output_directory_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(ValueError, match=f"output directory {blocker / 'run'} cannot be created: {blocker} is a file"):
        check_writable(blocker / "run")
    with pytest.raises(ValueError, match="output directory /proc/mae_run/x is not writable"):
        check_writable(Path("/proc/mae_run/x"))
    check_writable(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    cfg = compose_config(output_dir=blocker / "run")
    with pytest.raises(SetupError, match="cannot be created"):
        build_training_run(cfg, lambda: instantiate_node(cfg.model))
