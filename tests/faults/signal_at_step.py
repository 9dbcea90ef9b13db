"""A test callback that signals its own process when a given optimizer step begins, as a scheduler would."""

from __future__ import annotations

import os

import lightning as L


class SignalAtStep(L.Callback):
    """``rank``: signal only that global rank's process (as a scheduler that signals the launching process), or
    every process when None."""

    def __init__(self, step: int, signum: int, rank: int | None = None) -> None:
        self.step, self.signum, self.rank = step, signum, rank

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signum)
