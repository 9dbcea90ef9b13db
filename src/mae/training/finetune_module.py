"""End-to-end fine-tuning with the reference recipe: layer-wise lr decay, mixup/cutmix, label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from mae.models.classifier import vit_classifier_from_mae
from mae.models.mae import MaskedAutoencoderViT
from mae.training.classification import ClassificationModule
from mae.training.optim import layer_decay_param_groups


class FinetuneModule(ClassificationModule):
    """Fine-tunes a timm ``VisionTransformer`` classifier (see :func:`mae.models.classifier.vit_classifier_from_mae`).

    Args:
        model: the classifier (drop path is set when it is built).
        num_classes: classes of the task.
        blr, lr, min_lr, warmup_epochs, epochs: the schedule (see :class:`ScheduledModule`).
        weight_decay: AdamW decay, none on 1-D parameters, cls token and position embeddings.
        layer_decay: lr scale ``layer_decay ** (depth + 1 - layer)`` (0.65 for ViT-B, 0.75 for L/H), the reference's
            layers (see :func:`~mae.training.optim.layer_decay_param_groups`): the final norms and the head at 1.
        mixup, cutmix, label_smoothing: timm ``Mixup`` alphas and smoothing (0.8, 1.0, 0.1 in the paper);
            with mixup and cutmix both 0 the loss is label-smoothed cross-entropy on hard labels.
        seed: base seed of each batch's random draws (mixup, drop path), so a resumed run repeats exactly.
        fused: AdamW's fused kernel (see :class:`~mae.training.MAEPretrainModule`).
        compile: ``torch.compile`` the classifier in place before training (parameter names unchanged).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        blr: float = 5e-4,
        lr: float | None = None,
        min_lr: float = 1e-6,
        weight_decay: float = 0.05,
        layer_decay: float = 0.65,
        warmup_epochs: float = 5,
        epochs: int = 100,
        mixup: float = 0.8,
        cutmix: float = 1.0,
        label_smoothing: float = 0.1,
        seed: int = 0,
        fused: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.check_schedule(blr, lr, min_lr, weight_decay, warmup_epochs, epochs)
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay={layer_decay} must be in (0, 1]")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.mixup = (
            Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing, num_classes=num_classes)
            if mixup > 0 or cutmix > 0
            else None
        )
        self.soft_target_loss = SoftTargetCrossEntropy()  # mixed targets already carry the smoothing
        self.add_metrics(num_classes)

    @classmethod
    def from_encoder(
        cls,
        encoder: MaskedAutoencoderViT,
        num_classes: int,
        global_pool: str = "avg",
        drop_path_rate: float = 0.1,
        **hparams,
    ) -> FinetuneModule:
        """Fine-tune ``encoder`` as a timm ViT classifier (see :func:`vit_classifier_from_mae`)."""
        model = vit_classifier_from_mae(encoder, num_classes, global_pool=global_pool, drop_path_rate=drop_path_rate)
        return cls(model, num_classes, **hparams)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.model(imgs)

    def modules_to_compile(self) -> list[nn.Module]:
        return [self.model]

    def configure_optimizers(self):
        groups = layer_decay_param_groups(self.model, self.hparams.weight_decay, self.hparams.layer_decay)
        return self.layer_decay_adamw(groups)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        imgs, labels = batch[0], batch[1]  # a third item, the samples' seeds, is for masks
        if self.mixup is not None and imgs.shape[0] % 2 == 0:  # timm's Mixup pairs images, so batches are even
            imgs, targets = self.mixup(imgs, labels)
            loss = self.soft_target_loss(self(imgs), targets)
        else:
            loss = F.cross_entropy(self(imgs), labels, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=imgs.shape[0])
        self.log("train/lr", max(group["lr"] for group in self.optimizers().param_groups), on_step=True, on_epoch=False)
        return loss
