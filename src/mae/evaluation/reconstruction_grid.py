"""Reconstruction grids: what the MAE saw, what it was asked to fill in, and what it predicted.

Each row of a grid is one image; the columns are the original, the masked input, the decoder's
reconstruction of every patch, and the reconstruction with the visible patches pasted back in. Small images are
enlarged by a whole factor, nearest-neighbour (each pixel becomes a ``k x k`` block, no smoothing), until a cell
is at least ``min_cell_size`` pixels; a header row names the columns (PIL's default font).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torchvision.utils import make_grid, save_image

from mae.models.loss import denormalize_patches
from mae.runs.atomic_files import replaced_atomically
from mae.runs.torch_state import eval_mode, model_device_and_dtype

COLUMNS = ("original", "masked", "reconstruction", "pasted")
COLUMN_LABELS = {
    "original": "original",
    "masked": "masked",
    "reconstruction": "reconstruction",
    "pasted": "recon. + visible",
}
"""The header text of each column."""
DEFAULT_MIN_CELL_SIZE = 112
"""Smallest side of a grid cell, in pixels, that small images are enlarged to (28-pixel images: 4x, 112 pixels)."""


@dataclass
class ReconstructionViews:
    """Four ``(N, C, H, W)`` views of a batch, float32 on the CPU, in the model's (normalised) input space."""

    original: torch.Tensor
    """The input images."""
    masked: torch.Tensor
    """The input with removed patches set to 0, which de-normalises to the dataset mean colour (a neutral grey)."""
    reconstruction: torch.Tensor
    """The decoder's prediction for every patch, visible ones included, in pixel (not norm-pix) space."""
    pasted: torch.Tensor
    """The reconstruction with visible patches replaced by the original pixels: what the MAE actually adds."""
    mask: torch.Tensor
    """``(N, 1, H, W)`` pixel mask, 1 where the patch was removed."""
    loss: float
    """The model's training loss on this batch and mask (mean squared error over the removed patches)."""

    def columns(self) -> tuple[torch.Tensor, ...]:
        """The views in grid column order (see ``COLUMNS``)."""
        return tuple(getattr(self, name) for name in COLUMNS)


def reconstruct(
    model: nn.Module,
    imgs: torch.Tensor,
    noise: torch.Tensor | None = None,
    mask_ratio: float | None = None,
) -> ReconstructionViews:
    """Mask, encode and decode ``imgs`` once and return the views of a reconstruction grid.

    Args:
        model: a ``MaskedAutoencoderViT`` (or anything with its ``forward``/``patchify``/``unpatchify``);
            run in eval mode without gradients and left in the mode it had.
        imgs: ``(N, C, H, W)`` normalised images, on any device.
        noise: optional ``(N, L)`` masking noise, for the same mask across calls.
        mask_ratio: fraction of patches to remove; the model's own when omitted.
    """
    device, dtype = model_device_and_dtype(model)
    with eval_mode(model), torch.no_grad():
        inputs = imgs.to(device=device, dtype=dtype)
        out = model(inputs, mask_ratio=mask_ratio, noise=None if noise is None else noise.to(device))
        pred = out.pred.float()
        if getattr(model, "norm_pix_loss", False):
            # The prediction is in per-patch normalised space; the target patch's own statistics put it back
            # in pixels, as the reference visualisation does (the model never predicts them itself).
            pred = denormalize_patches(pred, model.patchify(inputs.float()))
        reconstruction = model.unpatchify(pred).cpu()
        patch_dim = pred.shape[-1]
        mask = model.unpatchify(out.mask.float().unsqueeze(-1).expand(-1, -1, patch_dim))[:, :1].cpu()
    original = imgs.detach().float().cpu()
    return ReconstructionViews(
        original=original,
        masked=original * (1 - mask),
        reconstruction=reconstruction,
        pasted=original * (1 - mask) + reconstruction * mask,
        mask=mask,
        loss=float(out.loss),
    )


def denormalize_images(imgs: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo ``(x - mean) / std`` per channel of ``(N, C, H, W)`` images and clamp to displayable ``[0, 1]``."""
    channels = imgs.shape[1]
    if len(mean) != len(std) or len(mean) not in (1, channels):
        raise ValueError(f"mean has {len(mean)} and std {len(std)} values for images with {channels} channels")
    mean_t = torch.as_tensor(mean, dtype=imgs.dtype, device=imgs.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=imgs.dtype, device=imgs.device).view(1, -1, 1, 1)
    return (imgs * std_t + mean_t).clamp(0.0, 1.0)


def upscale_factor(height: int, width: int, min_cell_size: int) -> int:
    """The smallest whole factor that makes an image's shorter side at least ``min_cell_size`` pixels; 1 for images
    that are that large already (they are never shrunk)."""
    if min_cell_size < 0:
        raise ValueError(f"min_cell_size={min_cell_size} must be non-negative (0: images at their own size)")
    side = min(height, width)
    return max(1, -(-min_cell_size // side))


def upscale_nearest(imgs: torch.Tensor, factor: int) -> torch.Tensor:
    """``(..., H, W)`` images enlarged ``factor`` times, each pixel an exact ``factor x factor`` block."""
    if factor == 1:
        return imgs
    return imgs.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def _label_font(labels: Sequence[str], cell_width: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at about a ninth of the cell width (10 to 24 points), smaller where a label would not fit."""
    size = min(24, max(10, cell_width // 9))
    while True:
        try:
            font = ImageFont.load_default(size=size)
        except (TypeError, ImportError, OSError):  # a Pillow without FreeType: its fixed bitmap font
            return ImageFont.load_default()
        if size <= 8 or max(font.getbbox(label)[2] for label in labels) <= cell_width - 4:
            return font
        size -= 1


def header_row(labels: Sequence[str], cell_width: int, padding: int, width: int) -> torch.Tensor:
    """A ``(3, h, width)`` white strip with ``labels[i]`` in black, centred over column ``i`` of a grid of cells
    ``cell_width`` wide separated by ``padding``."""
    font = _label_font(labels, cell_width)
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (11, 0)
    margin = max(3, (ascent + descent) // 3)
    strip = Image.new("L", (width, ascent + descent + 2 * margin), 255)
    draw = ImageDraw.Draw(strip)
    for column, label in enumerate(labels):
        text_width = draw.textlength(label, font=font)
        left = padding + column * (cell_width + padding) + (cell_width - text_width) / 2
        draw.text((max(0.0, left), margin), label, fill=0, font=font)
    pixels = torch.from_numpy(np.asarray(strip, dtype=np.float32) / 255.0)
    return pixels.unsqueeze(0).expand(3, -1, -1).contiguous()


def make_grid_image(
    views: ReconstructionViews,
    mean: Sequence[float],
    std: Sequence[float],
    padding: int = 2,
    min_cell_size: int = DEFAULT_MIN_CELL_SIZE,
    labels: bool = True,
) -> torch.Tensor:
    """One ``(3, H, W)`` image in ``[0, 1]``: a row per input image, a column per view (``COLUMNS``).

    Images whose shorter side is under ``min_cell_size`` pixels are enlarged by the whole factor of
    :func:`upscale_factor`, nearest-neighbour; with ``labels`` a header row above the grid names the columns
    (``COLUMN_LABELS``). Grayscale views come out as 3 identical channels, as ``torchvision.utils.make_grid`` makes
    them.
    """
    columns = [denormalize_images(view, mean, std) for view in views.columns()]
    factor = upscale_factor(*columns[0].shape[-2:], min_cell_size)
    # (N, 4, C, H, W) -> (4N, C, H, W) interleaves the views image by image, i.e. row-major grid order.
    tiles = upscale_nearest(torch.stack(columns, dim=1).flatten(0, 1), factor)
    grid = make_grid(tiles, nrow=len(COLUMNS), padding=padding, pad_value=1.0)
    if not labels:
        return grid
    header = header_row([COLUMN_LABELS[name] for name in COLUMNS], tiles.shape[-1], padding, grid.shape[-1])
    return torch.cat([header, grid], dim=1)


def save_reconstruction_grid(
    model: nn.Module,
    imgs: torch.Tensor,
    path: str | Path,
    mean: Sequence[float],
    std: Sequence[float],
    noise: torch.Tensor | None = None,
    mask_ratio: float | None = None,
    min_cell_size: int = DEFAULT_MIN_CELL_SIZE,
    labels: bool = True,
) -> Path:
    """Reconstruct ``imgs`` and write their grid (see :func:`make_grid_image`) to ``path`` as a PNG; returns the
    path."""
    path = Path(path)
    grid = make_grid_image(
        reconstruct(model, imgs, noise=noise, mask_ratio=mask_ratio),
        mean,
        std,
        min_cell_size=min_cell_size,
        labels=labels,
    )
    with replaced_atomically(path) as tmp:
        save_image(grid, tmp, format="png")
    return path
