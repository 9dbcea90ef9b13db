"""From a ViT's single-stride feature maps to a feature pyramid: MMSegmentation's ``Feature2Pyramid``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# mmseg's module name for each rescale factor, kept so that the parameter names match its checkpoints.
_OP_NAMES = {4: "upsample_4x", 2: "upsample_2x", 1: "identity", 0.5: "downsample_2x", 0.25: "downsample_4x"}


def _rescale_op(scale: float, dim: int) -> nn.Module:
    if scale == 4:
        # mmseg normalises with SyncBN; plain BatchNorm2d here, which Lightning's ``sync_batchnorm`` turns into
        # SyncBatchNorm under DDP.
        return nn.Sequential(
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
        )
    if scale == 2:
        return nn.Sequential(nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2))
    if scale == 1:
        return nn.Identity()
    return nn.MaxPool2d(kernel_size=round(1 / scale), stride=round(1 / scale))


class FeatureToPyramid(nn.Module):
    """Rescale same-stride maps, one factor each, into a pyramid (mmseg's ``Feature2Pyramid``, ViTDet's idea).

    Factor 4: ``ConvTranspose2d(2, 2)`` -> ``BatchNorm2d`` -> GELU -> ``ConvTranspose2d(2, 2)``; 2: one
    ``ConvTranspose2d(2, 2)``; 1: identity; 0.5 and 0.25: max-pooling by 2 and 4. From maps of stride ``p`` (the
    patch size), factors ``(4, 2, 1, 0.5)`` give strides ``p/4, p/2, p, 2p``: 4, 8, 16, 32 for patch 16, and
    fractional strides (3.5, 7, 14, 28) for patch 14.

    Args:
        embed_dim: channels of every input map, kept by every output.
        rescales: one factor per input map, from ``(4, 2, 1, 0.5, 0.25)``, no repeats (mmseg: ``(4, 2, 1, 0.5)``).
    """

    def __init__(self, embed_dim: int, rescales: Sequence[float]) -> None:
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"embed_dim={embed_dim} must be at least 1")
        rescales = tuple(rescales)
        if not rescales or any(r not in _OP_NAMES for r in rescales) or len(set(rescales)) != len(rescales):
            raise ValueError(f"rescales={list(rescales)} must be distinct factors from {list(_OP_NAMES)}")
        self.rescales = rescales
        for scale in rescales:
            self.add_module(_OP_NAMES[scale], _rescale_op(scale, embed_dim))

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``features[i]`` ``(N, D, h, w)`` rescaled by ``rescales[i]``: ``(N, D, h * r, w * r)``."""
        if len(features) != len(self.rescales):
            raise ValueError(f"got {len(features)} feature maps for {len(self.rescales)} rescale factors")
        return [getattr(self, _OP_NAMES[scale])(x) for scale, x in zip(self.rescales, features)]
