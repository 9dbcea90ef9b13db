"""A thin LightningModule around the MAE model: optimiser, lr schedule, logging, reproducible epochs."""

from __future__ import annotations

import time

import torch
from torch import nn

from mae.models.masking import seeded_noise
from mae.training.optim import param_groups_weight_decay
from mae.training.scheduled import ScheduledModule


class MAEPretrainModule(ScheduledModule):
    """Pre-trains an injected MAE ``nn.Module`` with the reference recipe.

    Args:
        model: the masked autoencoder (its ``forward`` returns an output with ``loss``).
        blr: base learning rate; the actual one is ``blr * effective_batch / 256``.
        lr: absolute learning rate; when given, ``blr`` is ignored.
        min_lr: floor of the cosine schedule.
        weight_decay: AdamW decay for weights (biases and 1-D parameters get none).
        betas: AdamW betas.
        warmup_epochs: linear warmup length (fractional epochs allowed).
        epochs: length of the lr schedule; independent of the trainer's ``max_epochs`` so that a run can
            stop early and be resumed on the same schedule.
        seed: base seed of the masking noise; each batch reseeds from it, so a resumed run repeats exactly.
        compile: ``torch.compile`` the model before training.
        fused: AdamW's fused kernel (one pass over all parameters instead of about ten ops per parameter
            tensor; the same update up to float rounding, 3x faster on the CPU, see ``make bench``).
    """

    def __init__(
        self,
        model: nn.Module,
        blr: float = 1.5e-4,
        lr: float | None = None,
        min_lr: float = 0.0,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 40,
        epochs: int = 800,
        seed: int = 0,
        compile: bool = False,
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.check_schedule(blr, lr, min_lr, weight_decay, warmup_epochs, epochs)
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        self._step_started = 0.0

    def configure_model(self) -> None:
        if self.hparams.compile and not getattr(self, "_compiled", False):
            # In-place compile keeps parameter names, so checkpoints stay in the reference layout.
            self.model.compile()
            self._compiled = True

    def configure_optimizers(self):
        groups = param_groups_weight_decay(self.model, self.hparams.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.peak_lr, betas=tuple(self.hparams.betas),
                                      fused=self.hparams.fused)
        return self.with_schedule(optimizer)

    # -- steps -------------------------------------------------------------------------------------
    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)  # seeds this batch's masks
        self._step_started = time.perf_counter()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        imgs = batch[0]
        loss = self.model(imgs).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step}; stopping")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=imgs.shape[0])
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        seconds = time.perf_counter() - self._step_started
        images = batch[0].shape[0] * self.trainer.world_size
        self.log("train/img_per_s", images / max(seconds, 1e-9), prog_bar=True, on_step=True, on_epoch=False)

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        imgs = batch[0]
        # A fixed mask per batch makes validation losses comparable across epochs.
        noise = seeded_noise(imgs.shape[0], self.model.num_patches, batch_idx).to(imgs.device)
        loss = self.model(imgs, noise=noise).loss
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=imgs.shape[0], sync_dist=True)
        return loss
