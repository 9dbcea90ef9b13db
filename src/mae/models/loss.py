"""MAE's reconstruction target and loss."""

from __future__ import annotations

import torch

NORM_PIX_EPS = 1e-6


def patch_statistics(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and unbiased variance over the patch vector (last dim), kept for broadcasting."""
    return patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)


def normalize_patches(patches: torch.Tensor) -> torch.Tensor:
    """Normalise each patch by its own mean and unbiased variance: ``(t - mean) / sqrt(var + 1e-6)``."""
    mean, var = patch_statistics(patches)
    return (patches - mean) / (var + NORM_PIX_EPS) ** 0.5


def denormalize_patches(normalized: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Map norm-pix predictions back to pixel space with the statistics of ``reference`` patches."""
    mean, var = patch_statistics(reference)
    return normalized * (var + NORM_PIX_EPS) ** 0.5 + mean


def masked_mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over each patch vector, then over removed patches (``mask == 1``) only."""
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()
