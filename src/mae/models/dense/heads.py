"""Segmentation heads written to MMSegmentation's definitions: ``UPerHead`` (decode) and ``FCNHead`` (auxiliary).

MMSegmentation itself cannot be installed here (mmcv needs compiling), and segmentation_models_pytorch's UPerNet
lays its modules out differently from mmseg's, so both heads follow ``mmseg/models/decode_heads/{uper,psp,fcn,
decode}_head.py`` and mmcv's ``ConvModule``, module names included. mmseg's ``norm_cfg`` is SyncBN: these use
``BatchNorm2d``, which Lightning's ``sync_batchnorm`` turns into SyncBatchNorm under DDP. In training, the
pooled 1x1 map of pool scale 1 needs more than one image per BatchNorm (batch > 1, or SyncBN across devices).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CONV_SEG_INIT_STD = 0.01  # mmseg's BaseDecodeHead init_cfg: Normal(std=0.01) on conv_seg, bias 0


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of ``(N, C, h, w)`` to ``size``, ``align_corners=False`` as in mmseg's MAE config."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Module):
    """mmcv's ``ConvModule`` with mmseg's norm and activation: conv without bias -> BatchNorm2d -> ReLU.

    The convolution pads by ``kernel_size // 2`` and starts Kaiming-normal (``fan_out``, ReLU gain), mmcv's
    default; BatchNorm starts at weight 1, bias 0.

    Args:
        in_channels, out_channels: channels of the input and output maps.
        kernel_size: square kernel side, odd.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU()
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class DecodeHead(nn.Module):
    """What mmseg's heads share (``BaseDecodeHead``): ``cls_seg`` = ``Dropout2d`` -> 1x1 ``conv_seg`` to classes.

    Args:
        channels: channels of the map ``cls_seg`` classifies.
        num_classes: output channels, one logit per class.
        dropout: ``Dropout2d`` probability before ``conv_seg``; 0 for none.
    """

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        if channels < 1 or num_classes < 1:
            raise ValueError(f"channels={channels} and num_classes={num_classes} must both be at least 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} is outside [0, 1)")
        self.channels = channels
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else None
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, std=CONV_SEG_INIT_STD)
        nn.init.zeros_(self.conv_seg.bias)

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits ``(N, num_classes, h, w)`` of ``x`` ``(N, channels, h, w)``."""
        if self.dropout is not None:
            x = self.dropout(x)
        return self.conv_seg(x)


class PyramidPoolingModule(nn.ModuleList):
    """PSPNet's pooling pyramid (mmseg's ``PPM``): per scale ``s``, adaptive average pooling to ``s x s`` and a 1x1
    :class:`ConvBNReLU`, each result resized back to the input's size.

    Args:
        pool_scales: output sides of the poolings (mmseg: 1, 2, 3, 6).
        in_channels: channels of the input map.
        channels: channels of each pooled branch.
    """

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int) -> None:
        if not pool_scales or min(pool_scales) < 1:
            raise ValueError(f"pool_scales={list(pool_scales)} must be a non-empty list of sides of at least 1")
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvBNReLU(in_channels, channels, 1)) for scale in pool_scales
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One ``(N, channels, h, w)`` map per pool scale for ``x`` ``(N, in_channels, h, w)``."""
        return [resize_bilinear(branch(x), x.shape[2:]) for branch in self]


class UPerHead(DecodeHead):
    """UPerNet's decoder (Xiao et al., 2018) exactly as mmseg's ``UPerHead``.

    The last level goes through the pyramid pooling module, concatenated with itself, and a 3x3 ``bottleneck``;
    the other levels through 1x1 ``lateral_convs``. Top-down, each level adds its coarser neighbour resized to its
    size; levels but the last then pass a 3x3 ``fpn_convs``. Every level is resized to the finest level's size,
    concatenated, fused by the 3x3 ``fpn_bottleneck`` and classified by ``cls_seg``.

    Args:
        in_channels: channels of each pyramid level, finest first (mmseg's MAE config: ``[768] * 4``).
        channels: width of every internal map (mmseg's MAE config: 768).
        num_classes: logits per pixel.
        pool_scales: sides of the pyramid pooling (1, 2, 3, 6).
        dropout: ``Dropout2d`` before ``conv_seg`` (0.1).
    """

    def __init__(
        self, in_channels: Sequence[int], channels: int, num_classes: int, pool_scales: Sequence[int], dropout: float
    ) -> None:
        super().__init__(channels, num_classes, dropout)
        in_channels = list(in_channels)
        if len(in_channels) < 2 or min(in_channels) < 1:
            raise ValueError(f"in_channels={in_channels} must list at least two levels' channels, each at least 1")
        self.in_channels = in_channels
        self.psp_modules = PyramidPoolingModule(pool_scales, in_channels[-1], channels)
        self.bottleneck = ConvBNReLU(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The coarsest level ``(N, in_channels[-1], h, w)`` through pyramid pooling: ``(N, channels, h, w)``."""
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``(N, num_classes, h0, w0)`` at the finest level's size from the pyramid ``inputs``, finest
        first."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"got {len(inputs)} pyramid levels, the head was built for {len(self.in_channels)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        laterals.append(self.psp_forward(inputs[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0], *(resize_bilinear(x, size) for x in outs[1:])], dim=1))
        return self.cls_seg(fused)


class FCNHead(DecodeHead):
    """The fully convolutional head (mmseg's ``FCNHead``), the auxiliary head of mmseg's UperNet configs.

    ``num_convs`` 3x3 (``kernel_size``) :class:`ConvBNReLU` on the pyramid level ``in_index``, optionally
    concatenated with that level and fused by one more (``conv_cat``), then ``cls_seg``.

    Args:
        in_channels: channels of the chosen level (mmseg's MAE config: 768).
        channels: width of the convolutions (256).
        num_classes: logits per pixel.
        num_convs: convolutions before the classifier, at least 1 (1).
        kernel_size: their odd kernel side (3).
        concat_input: concatenate the level with the convolutions' output before classifying (False).
        dropout: ``Dropout2d`` before ``conv_seg`` (0.1).
        in_index: which pyramid level the head reads (2, the third: stride 16 for patch 16).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_convs: int,
        kernel_size: int,
        concat_input: bool,
        dropout: float,
        in_index: int,
    ) -> None:
        super().__init__(channels, num_classes, dropout)
        if num_convs < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"num_convs={num_convs} must be at least 1 and kernel_size={kernel_size} odd")
        self.in_index = in_index
        self.convs = nn.Sequential(
            *(ConvBNReLU(in_channels if i == 0 else channels, channels, kernel_size) for i in range(num_convs))
        )
        self.conv_cat = ConvBNReLU(in_channels + channels, channels, kernel_size) if concat_input else None

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``(N, num_classes, h, w)`` at the size of ``inputs[in_index]`` ``(N, in_channels, h, w)``."""
        x = inputs[self.in_index]
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.cls_seg(out)
