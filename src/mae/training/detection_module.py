"""Object detection and instance segmentation on an MAE encoder with ViTDet's Mask R-CNN recipe: the sum of
torchvision's Mask R-CNN losses, AdamW with ViTDet's layer-wise lr decay and weight-decay rule, a linear warmup then
step (or cosine) decay counted in iterations, and COCO box and mask AP on the validation and test splits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN

from mae.evaluation.detection import DetectionMetric, DetectionScores
from mae.models.dense.detector import detector_from_mae
from mae.models.mae import MaskedAutoencoderViT
from mae.training.optim import layer_decay_groups, warmup_step_lr
from mae.training.scheduled import ScheduledModule, check_iteration_schedule
from mae.training.split_scores import ScoresPerSplit

NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)
"""Their parameters are not decayed (Detectron2's ``weight_decay_norm=0``); ChannelLayerNorm is a LayerNorm."""


def norm_parameter_ids(model: nn.Module) -> set[int]:
    """``id`` of every parameter that belongs to a normalisation layer of ``model``."""
    return {id(param) for module in model.modules() if isinstance(module, NORM_LAYERS) for param in module.parameters()}


class DetectionModule(ScoresPerSplit, ScheduledModule):
    """Trains torchvision's ``MaskRCNN`` on a ViTDet backbone and scores it with :class:`DetectionMetric`.

    Args:
        model: the detector (:func:`~mae.models.dense.detector.detector_from_mae`).
        num_classes: object classes of the task (without the background).
        lr: peak AdamW lr, not scaled by batch (ViTDet ViT-B: 1e-4 at batch 64).
        weight_decay: AdamW decay (ViTDet: 0.1) on every parameter but those of norm layers and the position
            embedding (Detectron2's rule: biases are decayed).
        layer_decay: lr scale ``layer_decay ** (depth + 1 - layer)`` of the encoder's layers (position and patch
            embedding 0, block ``i`` ``i + 1``); pyramid and heads at 1 (ViTDet: 0.7 for ViT-B, 0.8 for ViT-L).
        betas: AdamW's betas.
        warmup_steps, warmup_factor: Detectron2's linear warmup (ViTDet: 250 iterations from 0.001).
        total_steps: iterations of the schedule.
        milestones, gamma: the step schedule's milestones as fractions of ``total_steps`` and its factor per
            milestone (ViTDet: 163889/184375 and 177546/184375, 0.1).
        cosine: a cosine schedule to ``min_lr`` instead of the steps.
        min_lr: where the cosine schedule ends.
        seed: base seed of each batch's random draws (drop path, RoI sampling).
        fused: AdamW's fused kernel.
        compile: ``torch.compile`` the backbone in place before training.
    """

    def __init__(
        self,
        model: MaskRCNN,
        num_classes: int,
        lr: float,
        weight_decay: float,
        layer_decay: float,
        betas: tuple[float, float],
        warmup_steps: int,
        warmup_factor: float,
        total_steps: int,
        milestones: Sequence[float],
        gamma: float,
        cosine: bool,
        min_lr: float,
        seed: int,
        fused: bool,
        compile: bool,
    ) -> None:
        super().__init__()
        check_detection_schedule(
            lr, weight_decay, layer_decay, warmup_steps, warmup_factor, total_steps, milestones, gamma, min_lr
        )
        # Plain Python values: checkpoints load with weights_only=True.
        betas = tuple(float(beta) for beta in betas)
        milestones = [float(fraction) for fraction in milestones]
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.init_split_scores(DetectionMetric)

    @classmethod
    def from_encoder(
        cls,
        encoder: MaskedAutoencoderViT,
        num_classes: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        drop_path_rate: float,
        window_size: int,
        global_blocks: list[int],
        rel_pos: bool,
        out_channels: int,
        scale_factors: list[float],
        anchor_sizes: list[float],
        canonical_scale: float,
        rpn_conv_depth: int,
        box_convs: list[int],
        box_fc: list[int],
        mask_convs: list[int],
        detector_settings: dict,
        **hparams,
    ) -> DetectionModule:
        """Detect with ``encoder`` as the backbone of ViTDet's Mask R-CNN (see :func:`detector_from_mae`)."""
        model = detector_from_mae(
            encoder,
            num_classes=num_classes,
            image_size=image_size,
            drop_path_rate=drop_path_rate,
            window_size=window_size,
            global_blocks=tuple(global_blocks),
            rel_pos=rel_pos,
            out_channels=out_channels,
            scale_factors=tuple(scale_factors),
            anchor_sizes=tuple(anchor_sizes),
            canonical_scale=canonical_scale,
            rpn_conv_depth=rpn_conv_depth,
            box_convs=tuple(box_convs),
            box_fc=tuple(box_fc),
            mask_convs=tuple(mask_convs),
            mean=tuple(mean),
            std=tuple(std),
            detector_settings=dict(detector_settings),
        )
        return cls(model, num_classes, **hparams)

    # -- schedule ----------------------------------------------------------------------------------
    @property
    def peak_lr(self) -> float:
        return self.hparams.lr

    def lr_at_step(self, step: int) -> float:
        h = self.hparams
        return warmup_step_lr(
            step, h.lr, h.warmup_steps, h.warmup_factor, h.total_steps, h.milestones, h.gamma, h.cosine, h.min_lr
        )

    @property
    def vit(self) -> nn.Module:
        """The plain ViT inside the pyramid."""
        return self.model.backbone.net

    def configure_optimizers(self):
        vit = self.vit
        named = list(vit.named_parameters())
        named += [
            (f"head.{name}", p) for name, p in self.model.named_parameters() if not name.startswith("backbone.net.")
        ]
        norms = norm_parameter_ids(self.model)
        groups = layer_decay_groups(
            named,
            len(vit.blocks),
            self.hparams.weight_decay,
            self.hparams.layer_decay,
            decayed=lambda name, param: id(param) not in norms and name != "pos_embed",
        )
        return self.layer_decay_adamw(groups, self.hparams.betas)

    def configure_model(self) -> None:
        if self.hparams.compile and not getattr(self, "_compiled", False):
            # The ViT only: torchvision's detection heads have data-dependent shapes.
            self.vit.compile()
            self._compiled = True

    # -- steps -------------------------------------------------------------------------------------
    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections of images ``[(C, H, W) in [0, 1]]`` at their own sizes: torchvision's output dicts (boxes,
        labels 1..K, scores, masks ``(M, 1, H, W)`` probabilities)."""
        return self.model(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, targets)
        loss = sum(losses.values())
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False, batch_size=len(images))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(images))
        self.log("train/lr", max(group["lr"] for group in self.optimizers().param_groups), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        self.val_scores.update(self(images), targets)

    def test_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        self.test_scores.update(self(images), targets)

    def log_scores(self, split: str, scores: DetectionScores) -> None:
        for key in ("box_ap", "box_ap50", "mask_ap"):
            value = getattr(scores, key)
            self.log(f"{split}/{key}", -1.0 if value is None else value, prog_bar=key != "box_ap50")


def check_detection_schedule(
    lr: float,
    weight_decay: float,
    layer_decay: float,
    warmup_steps: int,
    warmup_factor: float,
    total_steps: int,
    milestones: Sequence[float],
    gamma: float,
    min_lr: float,
) -> None:
    """One-line ``ValueError`` for a schedule value out of its range."""
    check_iteration_schedule(lr, min_lr, weight_decay, layer_decay, warmup_steps, total_steps)
    if not 0 < warmup_factor <= 1:
        raise ValueError(f"warmup_factor={warmup_factor} must be in (0, 1]")
    fractions = list(milestones)
    if fractions != sorted(fractions) or any(not 0 < fraction < 1 for fraction in fractions):
        raise ValueError(f"milestones={fractions} must be increasing fractions of the schedule in (0, 1)")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma={gamma} must be in (0, 1]")
