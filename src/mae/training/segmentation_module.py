"""Semantic segmentation on an MAE encoder with MMSegmentation's MAE UperNet recipe: cross-entropy on the decode
head plus a weighted auxiliary head, AdamW with layer-wise lr decay, a linear warmup then polynomial decay counted
in iterations, and mIoU over the whole split, by sliding window where the images exceed the window."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mae.evaluation.segmentation import IGNORE_INDEX, SegmentationMetric, SegmentationScores
from mae.models.dense import Segmenter, segmenter_from_mae, slide_inference
from mae.models.mae import MaskedAutoencoderViT
from mae.training.optim import layer_decay_groups, warmup_poly_lr
from mae.training.scheduled import ScheduledModule, check_iteration_schedule
from mae.training.split_scores import ScoresPerSplit

# Not decayed, as in MMSegmentation's layer-decay constructor for BEiT/MAE and timm's BEiT.
NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "relative_position_bias_table")


class SegmentationModule(ScoresPerSplit, ScheduledModule):
    """Trains a :class:`~mae.models.dense.Segmenter` and scores it with :class:`SegmentationMetric`.

    Args:
        model: the segmenter (drop path and relative position bias are set when it is built).
        num_classes: classes of the task (pixels labelled 255 are ignored).
        lr: peak AdamW lr for the top layer (MMSegmentation's MAE ViT-B: 1e-4 at batch 16), not scaled by batch.
        min_lr: the lr the polynomial decay ends at.
        weight_decay: AdamW decay, none on 1-D parameters, position embeddings, the cls token and relative
            position bias tables.
        layer_decay: lr scale ``layer_decay ** (depth + 1 - layer)`` of the encoder's layers; neck and heads at 1.
        betas: AdamW's betas.
        warmup_steps, total_steps, power, warmup_start: the iteration schedule (:func:`warmup_poly_lr`).
        aux_weight: weight of the auxiliary head's loss (0.4); 0 ignores the head's output.
        window, stride: sliding-window inference at evaluation (MMSegmentation's ``mode='slide'``); ``window``
            null scores whole images in one pass.
        freeze_backbone: train neck and heads only (the frozen-encoder baseline); built without drop path, the
            encoder is then a fixed function (a ViT has no other train-mode behaviour).
        seed: base seed of each batch's random draws (drop path), so that a resumed run repeats exactly.
        fused: AdamW's fused kernel.
        compile: ``torch.compile`` the segmenter in place before training.
    """

    def __init__(
        self,
        model: Segmenter,
        num_classes: int,
        lr: float,
        min_lr: float,
        weight_decay: float,
        layer_decay: float,
        betas: tuple[float, float],
        warmup_steps: int,
        total_steps: int,
        power: float,
        warmup_start: float,
        aux_weight: float,
        window: int | None,
        stride: int | None,
        freeze_backbone: bool,
        seed: int,
        fused: bool,
        compile: bool,
    ) -> None:
        super().__init__()
        check_segmentation_schedule(
            lr, min_lr, weight_decay, layer_decay, warmup_steps, total_steps, power, warmup_start
        )
        if aux_weight < 0:
            raise ValueError(f"aux_weight={aux_weight} must be non-negative")
        if (window is None) != (stride is None) or (window is not None and not (0 < stride <= window)):
            raise ValueError(
                f"window={window} and stride={stride}: give both (0 < stride <= window) for sliding-window "
                "inference, or both null for whole images"
            )
        betas = tuple(float(beta) for beta in betas)  # plain floats: checkpoints load with weights_only=True
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        if freeze_backbone:
            self.model.backbone.requires_grad_(False)
        self.init_split_scores(lambda: SegmentationMetric(num_classes))

    @classmethod
    def from_encoder(
        cls,
        encoder: MaskedAutoencoderViT,
        num_classes: int,
        crop_size: int,
        out_indices: list[int],
        drop_path_rate: float,
        rel_pos_bias: bool,
        layer_scale_init_value: float | None,
        rescales: list[float],
        channels: int,
        pool_scales: list[int],
        dropout: float,
        aux_channels: int,
        aux_in_index: int,
        **hparams,
    ) -> SegmentationModule:
        """Segment with ``encoder`` as the backbone of a UperNet (see :func:`segmenter_from_mae`)."""
        model = segmenter_from_mae(
            encoder,
            num_classes=num_classes,
            crop_size=crop_size,
            out_indices=tuple(out_indices),
            drop_path_rate=0.0 if hparams.get("freeze_backbone") else drop_path_rate,
            rel_pos_bias=rel_pos_bias,
            layer_scale_init_value=layer_scale_init_value,
            rescales=tuple(rescales),
            channels=channels,
            pool_scales=tuple(pool_scales),
            dropout=dropout,
            aux_channels=aux_channels if hparams.get("aux_weight", 0) > 0 else None,
            aux_in_index=aux_in_index,
        )
        return cls(model, num_classes, **hparams)

    # -- schedule ----------------------------------------------------------------------------------
    @property
    def peak_lr(self) -> float:
        return self.hparams.lr

    def lr_at_step(self, step: int) -> float:
        h = self.hparams
        return warmup_poly_lr(step, h.lr, h.min_lr, h.warmup_steps, h.total_steps, h.power, h.warmup_start)

    def configure_optimizers(self):
        backbone = self.model.backbone
        named = [(name, param) for name, param in backbone.vit.named_parameters()]
        named += [
            (f"head.{name}", param) for name, param in self.model.named_parameters() if not name.startswith("backbone.")
        ]
        groups = layer_decay_groups(
            named, len(backbone.vit.blocks), self.hparams.weight_decay, self.hparams.layer_decay, NO_WEIGHT_DECAY
        )
        return self.layer_decay_adamw(groups, self.hparams.betas)

    def configure_model(self) -> None:
        if self.hparams.compile and not getattr(self, "_compiled", False):
            self.model.compile()
            self._compiled = True

    # -- steps -------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, K, H, W)`` of images ``(N, C, H, W)``, window by window when configured."""
        window, stride = self.hparams.window, self.hparams.stride
        if window is None:
            return self.model(images).logits
        return slide_inference(
            lambda crops: self.model(crops).logits,
            images,
            self.hparams.num_classes,
            window,
            stride,
            size_divisor=self.model.backbone.patch_size,
        )

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        output = self.model(images)
        loss = F.cross_entropy(output.logits, labels, ignore_index=IGNORE_INDEX)
        self.log("train/loss_decode", loss, on_step=True, on_epoch=False, batch_size=images.shape[0])
        if output.aux_logits is not None and self.hparams.aux_weight > 0:
            aux = F.cross_entropy(output.aux_logits, labels, ignore_index=IGNORE_INDEX)
            self.log("train/loss_aux", aux, on_step=True, on_epoch=False, batch_size=images.shape[0])
            loss = loss + self.hparams.aux_weight * aux
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images.shape[0])
        self.log("train/lr", max(group["lr"] for group in self.optimizers().param_groups), on_step=True, on_epoch=False)
        return loss

    def _score(self, batch, metric: SegmentationMetric) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        # Scored at the labels' own resolution, as the benchmarks do: the logits are resized to it.
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        metric.update(logits.argmax(1), labels)
        return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)

    def validation_step(self, batch, batch_idx: int) -> None:
        loss = self._score(batch, self.val_scores)
        self.log("val/loss", loss, on_epoch=True, batch_size=batch[0].shape[0], sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self._score(batch, self.test_scores)

    def log_scores(self, split: str, scores: SegmentationScores) -> None:
        self.log(f"{split}/miou", scores.miou, prog_bar=True)
        self.log(f"{split}/pixel_accuracy", scores.pixel_accuracy)
        self.log(f"{split}/mean_accuracy", scores.mean_accuracy)


def check_segmentation_schedule(
    lr: float,
    min_lr: float,
    weight_decay: float,
    layer_decay: float,
    warmup_steps: int,
    total_steps: int,
    power: float,
    warmup_start: float,
) -> None:
    """One-line ``ValueError`` for a schedule value out of its range."""
    check_iteration_schedule(lr, min_lr, weight_decay, layer_decay, warmup_steps, total_steps)
    if power <= 0:
        raise ValueError(f"power={power} must be positive")
    if not 0 < warmup_start <= 1:
        raise ValueError(f"warmup_start={warmup_start} must be in (0, 1]")
