"""Linear probing: a frozen encoder, and a BatchNorm (no affine) + Linear head trained with LARS."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mae.evaluation.knn import check_pool, pool_tokens
from mae.training.classification import ClassificationModule
from mae.training.optim import LARS


def linear_probe_head(width: int, num_classes: int) -> nn.Sequential:
    """The reference probe: ``BatchNorm1d(affine=False, eps=1e-6)`` then a Linear initialised trunc-normal(.01)."""
    linear = nn.Linear(width, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(width, affine=False, eps=1e-6), linear)


class LinearProbeModule(ClassificationModule):
    """Trains only a linear head on the frozen encoder's pooled features (the reference: the normalised cls token).

    Args:
        encoder: a module whose ``forward_features(imgs)`` returns normalised tokens ``(N, 1 + L, D)``, cls
            first (the MAE model, or a timm ViT).
        num_classes: classes of the downstream task.
        blr, lr, min_lr, warmup_epochs, epochs: the schedule (see :class:`ScheduledModule`).
        weight_decay: LARS weight decay, on the Linear's weight only (the reference probes with 0).
        momentum, trust_coefficient: LARS settings of the reference (0.9, 0.001); see :class:`~mae.training.optim.LARS`.
        seed: base seed of each batch's random draws, so a resumed run repeats exactly.
        pool: ``"cls"`` (the reference) or ``"mean"`` (the average of the patch tokens) as the probe's features.
        compile: ``torch.compile`` the encoder's blocks and the head in place before training (``forward_features``
            is a method, not ``__call__``, so the blocks are what a compiled call reaches; names unchanged).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        blr: float = 0.1,
        lr: float | None = None,
        min_lr: float = 0.0,
        weight_decay: float = 0.0,
        warmup_epochs: float = 10,
        epochs: int = 90,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
        seed: int = 0,
        pool: str = "cls",
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.check_schedule(blr, lr, min_lr, weight_decay, warmup_epochs, epochs)
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be at least 2")
        check_pool(pool)
        self.save_hyperparameters(ignore=["encoder"])
        self.encoder = encoder.requires_grad_(False)
        width = encoder.embed_dim
        self.head = linear_probe_head(width, num_classes)
        self.add_metrics(num_classes)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = pool_tokens(self.encoder.forward_features(imgs), self.hparams.pool)
        return self.head(features)

    def modules_to_compile(self) -> list[nn.Module]:
        return [*self.encoder.blocks, self.head]

    def on_train_epoch_start(self) -> None:
        self.encoder.eval()  # frozen: nothing in it may change, normalisation statistics included

    def configure_optimizers(self):
        optimizer = LARS(
            self.head.parameters(),
            lr=self.peak_lr,
            weight_decay=self.hparams.weight_decay,
            momentum=self.hparams.momentum,
            trust_coefficient=self.hparams.trust_coefficient,
        )
        return self.with_schedule(optimizer)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        imgs, labels = batch[0], batch[1]  # a third item, the samples' seeds, is for masks
        loss = F.cross_entropy(self(imgs), labels)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=imgs.shape[0])
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss
