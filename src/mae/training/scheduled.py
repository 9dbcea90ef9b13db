"""The reference's lr rules as a LightningModule base: linear scaling by the effective batch, per-step
warmup then half-cycle cosine, measured in epochs of the configured schedule."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from mae.training.optim import scaled_lr, warmup_cosine_lr


def batch_seed(seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    """A distinct 63-bit seed per (seed, epoch, batch, rank)."""
    return hash((seed, epoch, batch_idx, rank)) & (2**63 - 1)


def check_iteration_schedule(
    lr: float, min_lr: float, weight_decay: float, layer_decay: float, warmup_steps: int, total_steps: int
) -> None:
    """The dense tasks' shared schedule values (counted in iterations); a one-line ``ValueError`` for one out of
    its range."""
    if lr <= 0:
        raise ValueError(f"lr={lr} must be positive")
    if not 0 <= min_lr <= lr:
        raise ValueError(f"min_lr={min_lr} must be in [0, lr={lr}]")
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay} must be non-negative")
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay={layer_decay} must be in (0, 1]")
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"total_steps={total_steps} must be at least 1 and above warmup_steps={warmup_steps} (>= 0)")


class ScheduledModule(L.LightningModule):
    """Base of the training modules; subclasses call :meth:`check_schedule` and :meth:`with_schedule`.

    Expects hyperparameters ``blr``, ``lr``, ``min_lr``, ``warmup_epochs``, ``epochs`` and ``seed`` (saved with
    ``save_hyperparameters``). ``epochs`` is independent of the trainer's ``max_epochs`` so that a run can stop
    early and be resumed on the same schedule.
    """

    @staticmethod
    def check_schedule(
        blr: float, lr: float | None, min_lr: float, weight_decay: float, warmup_epochs: float, epochs: int
    ) -> None:
        for name, value in (
            ("blr", blr),
            ("min_lr", min_lr),
            ("weight_decay", weight_decay),
            ("warmup_epochs", warmup_epochs),
        ):
            if value < 0:
                raise ValueError(f"{name}={value} must be non-negative")
        if epochs < 1 or warmup_epochs > epochs:
            raise ValueError(f"epochs={epochs} must be at least 1 and not below warmup_epochs={warmup_epochs}")
        if lr is not None and lr <= 0:
            raise ValueError(f"lr={lr} must be positive (or null to derive it from blr)")
        if lr is not None and min_lr > lr:
            raise ValueError(f"min_lr={min_lr} is above the peak lr={lr}")

    @property
    def effective_batch_size(self) -> int:
        batch = self.trainer.datamodule.batch_size
        return batch * self.trainer.accumulate_grad_batches * self.trainer.world_size

    @property
    def peak_lr(self) -> float:
        if self.hparams.lr is not None:
            return self.hparams.lr
        return scaled_lr(self.hparams.blr, self.effective_batch_size)

    def lr_at_step(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based), the reference's per-iteration schedule."""
        # Step 0 needs no epoch length: the scheduler asks for it when built, and asking the trainer then would
        # build the training loader before a resumed run's position is restored (see mae.data.loaders).
        epoch = 0.0 if step == 0 else step / (self.trainer.estimated_stepping_batches / self.trainer.max_epochs)
        return warmup_cosine_lr(
            epoch, self.peak_lr, self.hparams.min_lr, self.hparams.warmup_epochs, self.hparams.epochs
        )

    def with_schedule(self, optimizer: torch.optim.Optimizer) -> dict:
        """``configure_optimizers``' answer: ``optimizer`` (built at ``peak_lr``, times any per-group scale) with
        the per-step schedule."""
        peak = self.peak_lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_at_step(step) / peak)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def layer_decay_adamw(self, groups: list[dict], betas: tuple[float, float] | None = None) -> dict:
        """``configure_optimizers``' answer for layer-decay groups (each with an ``lr_scale``): AdamW with every
        group at ``peak_lr`` times its scale (the schedule then scales every group alike), ``betas`` (None:
        AdamW's own) and the module's ``fused`` setting, with the per-step schedule."""
        peak = self.peak_lr
        for group in groups:
            group["lr"] = peak * group.pop("lr_scale")
        extra = {} if betas is None else {"betas": tuple(betas)}
        return self.with_schedule(torch.optim.AdamW(groups, lr=peak, fused=self.hparams.fused, **extra))

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # A batch's random draws from the global stream (mixup, drop path; masks only of batches that carry no
        # sample seeds) are a pure function of (seed, epoch, batch, rank), whatever the data loader drew before: a
        # resumed run repeats those of a run that never stopped.
        seed = batch_seed(self.hparams.seed, self.current_epoch, batch_idx, self.global_rank)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)  # timm's Mixup draws from NumPy
