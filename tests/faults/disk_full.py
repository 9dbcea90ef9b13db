"""A test callback that makes every checkpoint write from a given step on fail as a full disk does (``ENOSPC`` from
the write, after some bytes went out), in the training process itself."""

from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import lightning as L

import mae.training.atomic_checkpoint_io as checkpoint_io


def _full(obj, f, *args, **kwargs) -> None:
    f.write(b"partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class DiskFullAfter(L.Callback):
    """From optimizer step ``step`` on, the checkpoint writer's ``torch.save`` writes some bytes, then fails."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            checkpoint_io.torch = SimpleNamespace(save=_full)  # the writer's module only
