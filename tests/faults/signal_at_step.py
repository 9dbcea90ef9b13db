"""A test callback that signals its own process when a given optimizer step begins, as a scheduler would."""

from __future__ import annotations

import os

import lightning as L


class SignalAtStep(L.Callback):
    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)
