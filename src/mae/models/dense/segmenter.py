"""Semantic segmentation on the MAE encoder: backbone, pyramid neck, UperNet head and FCN auxiliary head, wired
as MMSegmentation's ``EncoderDecoder`` in its MAE ADE20K config. The loss is the training module's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mae.models.dense.backbone import ViTBackbone, vit_backbone_from_mae
from mae.models.dense.heads import FCNHead, UPerHead, resize_bilinear
from mae.models.dense.neck import FeatureToPyramid
from mae.models.mae import MaskedAutoencoderViT

# The auxiliary FCNHead of mmseg's UperNet-MAE config: one 3x3 convolution, no concatenation with its input.
AUX_NUM_CONVS = 1
AUX_KERNEL_SIZE = 3


@dataclass
class SegmenterOutput:
    """What one segmenter forward pass returns."""

    logits: torch.Tensor
    """``(N, K, H, W)`` class logits of the decode head, resized bilinearly to the input's size."""
    aux_logits: torch.Tensor | None
    """The auxiliary head's logits, same shape; only in training mode (as in mmseg, where it only adds a loss
    term), else ``None``."""


class Segmenter(nn.Module):
    """Backbone -> neck -> decode head (+ auxiliary head in training), logits upsampled to the input's size.

    Args:
        backbone: the ViT's feature maps, in the order the neck takes them.
        neck: turns them into a pyramid, finest first.
        decode_head: the pyramid to class logits at the finest level.
        auxiliary_head: a second head on the pyramid whose loss regularises training, or ``None``.
    """

    def __init__(
        self, backbone: ViTBackbone, neck: FeatureToPyramid, decode_head: UPerHead, auxiliary_head: FCNHead | None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head

    @property
    def num_classes(self) -> int:
        return self.decode_head.num_classes

    def forward(self, images: torch.Tensor) -> SegmenterOutput:
        """Segment ``images`` ``(N, C, H, W)``, ``H`` and ``W`` divisible by the patch size."""
        pyramid = self.neck(list(self.backbone(images).values()))
        size = images.shape[2:]
        logits = resize_bilinear(self.decode_head(pyramid), size)
        aux_logits = None
        if self.auxiliary_head is not None and self.training:
            aux_logits = resize_bilinear(self.auxiliary_head(pyramid), size)
        return SegmenterOutput(logits, aux_logits)


def segmenter_from_mae(
    mae: MaskedAutoencoderViT,
    num_classes: int,
    crop_size: int | Sequence[int],
    out_indices: Sequence[int],
    drop_path_rate: float,
    rel_pos_bias: bool,
    layer_scale_init_value: float | None,
    rescales: Sequence[float],
    channels: int,
    pool_scales: Sequence[int],
    dropout: float,
    aux_channels: int | None,
    aux_in_index: int,
) -> Segmenter:
    """UperNet on ``mae``'s encoder as mmseg's MAE ADE20K config builds it (counterpart of
    ``vit_classifier_from_mae``); mmseg's values for ViT-B in brackets.

    Args:
        mae: the pre-trained model whose encoder becomes the backbone.
        num_classes: classes to segment [150].
        crop_size: training crop, ``int`` or ``(height, width)`` [512].
        out_indices: 0-based blocks whose outputs feed the neck, one per rescale factor [3, 5, 7, 11].
        drop_path_rate: stochastic depth of the last block [0.1].
        rel_pos_bias: zero-initialised relative position bias tables in every block [on in mmseg's MAE backbone].
        layer_scale_init_value: start of learnable per-channel layer scales, ``None`` for none [1.0].
        rescales: the neck's factor per block output [4, 2, 1, 0.5].
        channels: UperNet's internal width [768].
        pool_scales: its pyramid pooling sides [1, 2, 3, 6].
        dropout: ``Dropout2d`` before each head's classifier [0.1].
        aux_channels: width of the auxiliary FCN head, ``None`` for no auxiliary head [256].
        aux_in_index: the pyramid level it reads [2].
    """
    if len(out_indices) != len(rescales):
        raise ValueError(f"out_indices={list(out_indices)} and rescales={list(rescales)} must have equal lengths")
    backbone = vit_backbone_from_mae(mae, crop_size, out_indices, drop_path_rate, rel_pos_bias, layer_scale_init_value)
    width = backbone.embed_dim
    neck = FeatureToPyramid(width, rescales)
    decode_head = UPerHead([width] * len(rescales), channels, num_classes, pool_scales, dropout)
    auxiliary_head = None
    if aux_channels is not None:
        if not -len(rescales) <= aux_in_index < len(rescales):
            raise ValueError(f"aux_in_index={aux_in_index} is not one of the {len(rescales)} pyramid levels")
        auxiliary_head = FCNHead(
            width, aux_channels, num_classes, AUX_NUM_CONVS, AUX_KERNEL_SIZE, False, dropout, aux_in_index
        )
    return Segmenter(backbone, neck, decode_head, auxiliary_head)
