"""A thin LightningModule around the MAE model: optimiser, lr schedule, logging, reproducible epochs."""

from __future__ import annotations

import torch
from torch import nn

from mae.data.loaders import mixed_seed
from mae.models.masking import per_sample_noise, seeded_noise
from mae.models.sharding import shard_blocks
from mae.training.optim import param_groups_weight_decay
from mae.training.scheduled import ScheduledModule

MASK_STREAM = 1
"""Mixed into a sample's seed for its mask, so that mask and augmentation draw from unrelated streams."""


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
        seed: base seed of the per-batch random stream (masks of batches that carry no sample seeds); each batch
            reseeds from it, so a resumed run repeats exactly.
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

    def configure_model(self) -> None:
        # Lightning's ModelParallelStrategy (FSDP2) hands over a device mesh and leaves the sharding to the module;
        # every other strategy (DDP, one device) has none and keeps the model as it is. Lightning may call this
        # hook more than once, hence the flags.
        if self.device_mesh is not None and not getattr(self, "_sharded", False):
            tensor_parallel = self.device_mesh["tensor_parallel"].size()
            if tensor_parallel > 1:
                # With no tensor-parallel plan, each rank of a tensor-parallel group would train its own copy.
                raise ValueError(
                    f"tensor_parallel_size={tensor_parallel}: the MAE has no tensor parallelism; set "
                    "the strategy's tensor_parallel_size to 1 and data_parallel_size to the number of "
                    "processes"
                )
            shard_blocks(self.model, self.device_mesh["data_parallel"])
            self._sharded = True
        if self.hparams.compile and not getattr(self, "_compiled", False):
            # In-place compile keeps parameter names, so checkpoints stay in the reference layout.
            self.model.compile()
            self._compiled = True

    def configure_optimizers(self):
        groups = param_groups_weight_decay(self.model, self.hparams.weight_decay)
        optimizer = torch.optim.AdamW(
            groups, lr=self.peak_lr, betas=tuple(self.hparams.betas), fused=self.hparams.fused
        )
        return self.with_schedule(optimizer)

    # -- steps -------------------------------------------------------------------------------------
    # Images per second, FLOP/s and MFU: mae.callbacks.AnalyticThroughputMonitor (callbacks.throughput).
    def training_noise(self, batch) -> torch.Tensor | None:
        """The batch's masking noise, row ``i`` drawn from sample ``i``'s seed (the third item of a training batch,
        a function of (seed, epoch, sample index)), so a sample is masked alike on any number of processes;
        None for batches without seeds (the model then draws from the per-batch seeded global stream)."""
        if len(batch) < 3:
            return None
        seeds = [mixed_seed(int(seed), MASK_STREAM) for seed in batch[2].tolist()]
        return per_sample_noise(seeds, self.model.num_patches).to(batch[0].device)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        imgs = batch[0]
        loss = self.model(imgs, noise=self.training_noise(batch)).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step}; stopping"
            )
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=imgs.shape[0])
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        imgs = batch[0]
        # A fixed mask per batch makes validation losses comparable across epochs.
        noise = seeded_noise(imgs.shape[0], self.model.num_patches, batch_idx).to(imgs.device)
        loss = self.model(imgs, noise=noise).loss
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=imgs.shape[0], sync_dist=True)
        return loss
