"""An item of a scene as the encoder sees it, alone or in its scene: the two views that ``task=item_knn`` compares.

Alone: the item's square box cut out of the scene and resized to the pre-training's image size, so that the encoder
sees one item on a few patches, as in pre-training. In its scene: the whole scene through the encoder, the item's
feature pooled from the patches its mask covers, as a dense head reads it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def square_box(box: torch.Tensor | list[float]) -> tuple[int, int, int]:
    """``(left, top, side)`` in whole pixels of the square centred on ``box`` (XYXY) whose side is its longer one."""
    x0, y0, x1, y1 = (float(value) for value in box)
    side = max(1, round(max(x1 - x0, y1 - y0)))
    left = round((x0 + x1) / 2 - side / 2)
    top = round((y0 + y1) / 2 - side / 2)
    return left, top, side


def crop_square(image: torch.Tensor, box: torch.Tensor | list[float], size: int, fill: float) -> torch.Tensor:
    """``image`` ``(C, H, W)`` inside :func:`square_box` of ``box``, resized to ``size`` x ``size`` (bilinear,
    antialiased); where the square leaves the image, ``fill``."""
    left, top, side = square_box(box)
    height, width = image.shape[-2:]
    square = image.new_full((image.shape[0], side, side), fill)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + side, width), min(top + side, height)
    if x1 > x0 and y1 > y0:
        square[:, y0 - top : y1 - top, x0 - left : x1 - left] = image[:, y0:y1, x0:x1]
    return F.interpolate(square[None].float(), size=(size, size), mode="bilinear", antialias=True)[0]


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor, patch_size: int) -> torch.Tensor | None:
    """The mean of the patch tokens ``(D, h, w)`` weighted by how much of each patch ``mask`` ``(h * p, w * p)``
    covers (values in [0, 1]); ``None`` when it covers none."""
    if mask.shape[-2:] != (tokens.shape[-2] * patch_size, tokens.shape[-1] * patch_size):
        raise ValueError(
            f"a mask of {tuple(mask.shape[-2:])} pixels does not fit a {tuple(tokens.shape[-2:])} grid of "
            f"{patch_size}-pixel patches"
        )
    weights = F.avg_pool2d(mask[None, None].float(), patch_size)[0, 0]
    total = weights.sum()
    if total <= 0:
        return None
    return (tokens * weights).sum(dim=(1, 2)) / total
