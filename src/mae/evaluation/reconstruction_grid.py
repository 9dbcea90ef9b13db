"""Reconstruction grids: what the MAE saw, what it was asked to fill in, and what it predicted.

Each row of a grid is one image; the columns are the original, the masked input, the decoder's
reconstruction of every patch, and the reconstruction with the visible patches pasted back in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.utils import make_grid, save_image

from mae.runs.atomic_files import replaced_atomically
from mae.models.loss import denormalize_patches
from mae.runs.torch_state import eval_mode, model_device_and_dtype

COLUMNS = ("original", "masked", "reconstruction", "pasted")


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


def make_grid_image(
    views: ReconstructionViews,
    mean: Sequence[float],
    std: Sequence[float],
    padding: int = 2,
) -> torch.Tensor:
    """One ``(3, H, W)`` image in ``[0, 1]``: a row per input image, a column per view (``COLUMNS``).

    Grayscale views come out as 3 identical channels, as ``torchvision.utils.make_grid`` makes them.
    """
    columns = [denormalize_images(view, mean, std) for view in views.columns()]
    # (N, 4, C, H, W) -> (4N, C, H, W) interleaves the views image by image, i.e. row-major grid order.
    tiles = torch.stack(columns, dim=1).flatten(0, 1)
    return make_grid(tiles, nrow=len(COLUMNS), padding=padding, pad_value=1.0)


def save_reconstruction_grid(
    model: nn.Module,
    imgs: torch.Tensor,
    path: str | Path,
    mean: Sequence[float],
    std: Sequence[float],
    noise: torch.Tensor | None = None,
    mask_ratio: float | None = None,
) -> Path:
    """Reconstruct ``imgs`` and write their grid to ``path`` as a PNG; returns the path."""
    path = Path(path)
    grid = make_grid_image(reconstruct(model, imgs, noise=noise, mask_ratio=mask_ratio), mean, std)
    with replaced_atomically(path) as tmp:
        save_image(grid, tmp, format="png")
    return path
