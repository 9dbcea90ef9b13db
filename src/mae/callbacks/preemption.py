"""Stop cleanly when a scheduler asks, and keep what was trained.

SLURM, Kubernetes and most batch systems send SIGTERM before they kill a job; SLURM can also be told to send
SIGUSR1 ahead of the time limit (``#SBATCH --signal=USR1@90``). Either signal ends the batch in progress, saves
``last.ckpt`` at that step, marks ``results.json`` interrupted and makes the job exit with ``128 + signal``
(143 for SIGTERM, 138 for SIGUSR1): a scheduler or a sweep sees a failure, not a success, and resuming from
``last.ckpt`` continues with the next batch of the same epoch. Lightning's own SLURM auto-requeue keeps its
SIGUSR1 handler when it installed one.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mae.runs.run_directory import RESULTS_FILE, last_checkpoint, merge_json

log = logging.getLogger(__name__)


class Preempted(Exception):
    """A job stopped by a signal after saving its checkpoint; ``exit_code`` is ``128 + signal``."""

    def __init__(self, signum: int, epoch: int, global_step: int, checkpoint: Path | None) -> None:
        self.exit_code = 128 + signum
        saved = (
            f"resume with ckpt_path={checkpoint}"
            if checkpoint is not None
            else "no checkpoint of this step was saved (callbacks.preemption is off)"
        )
        super().__init__(f"stopped by {signal.Signals(signum).name} at epoch {epoch}, step {global_step}; {saved}")


class PreemptionCheckpoint(L.Callback):
    """Save ``<run dir>/checkpoints/last.ckpt`` mid-epoch when the job is asked to stop, and every
    ``every_n_train_steps`` optimizer steps when set (so that even SIGKILL loses at most that many steps).

    Args:
        every_n_train_steps: also refresh ``last.ckpt`` every this many optimizer steps (None: only on a signal).
        stop_on_sigusr1: treat SIGUSR1 as SIGTERM (SLURM's advance warning), unless a handler already owns it.
    """

    def __init__(self, every_n_train_steps: int | None, stop_on_sigusr1: bool) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps={every_n_train_steps} must be at least 1, or null")
        self.every_n_train_steps = every_n_train_steps
        self.stop_on_sigusr1 = stop_on_sigusr1
        self.signal: int | None = None
        self.preempted: Preempted | None = None
        """Set when a signal stopped training: what the job re-raises (see :func:`mae.jobs.harness.fit`)."""
        self._saved_step: int | None = None
        self._previous_sigusr1: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning registered its handlers (SLURM auto-requeue claims SIGUSR1 for itself).
        if self.stop_on_sigusr1 and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            self._previous_sigusr1 = signal.signal(signal.SIGUSR1, self._forward_as_sigterm)

    def _forward_as_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum
        signal.raise_signal(signal.SIGTERM)  # Lightning's own path: the loop stops after this batch

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0  # not halfway through an accumulation
        periodic = (
            self.every_n_train_steps is not None and stepped and trainer.global_step % self.every_n_train_steps == 0
        )
        if trainer.received_sigterm or (periodic and trainer.global_step != self._saved_step):
            self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        if self._saved_step != trainer.global_step:
            self._save(trainer)  # the signal came outside a training batch (validation, an epoch end)
        signum = self.signal or signal.SIGTERM
        if trainer.is_global_zero:
            merge_json(
                Path(trainer.default_root_dir) / RESULTS_FILE,
                {
                    "status": "interrupted",
                    "signal": signal.Signals(signum).name,
                    "epoch": trainer.current_epoch,
                    "optimizer_steps": trainer.global_step,
                    "checkpoint": str(self.checkpoint(trainer)),
                },
            )
        self.preempted = Preempted(signum, trainer.current_epoch, trainer.global_step, self.checkpoint(trainer))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous_sigusr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_sigusr1)
            self._previous_sigusr1 = None

    @staticmethod
    def checkpoint(trainer: L.Trainer) -> Path:
        return last_checkpoint(Path(trainer.default_root_dir))

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.checkpoint(trainer), weights_only=False)  # full state: optimizer, loops
        self._saved_step = trainer.global_step
        log.info("saved %s at epoch %d, step %d", self.checkpoint(trainer), trainer.current_epoch, trainer.global_step)
