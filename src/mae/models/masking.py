"""Pure functions for MAE's patch layout and per-sample random masking."""

from __future__ import annotations

import torch


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(N, C, H, W)`` images to ``(N, L, p*p*C)`` patches; inside a patch: row, column, channel."""
    n, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(N, L, p*p*C)`` to ``(N, C, H, W)`` (a square grid unless given)."""
    n, length, dim = patches.shape
    p = patch_size
    if dim != p * p * channels:
        raise ValueError(f"patch vectors have {dim} values, expected {p}*{p}*{channels}={p * p * channels}")
    if grid_size is None:
        side = int(round(length**0.5))
        if side * side != length:
            raise ValueError(f"{length} patches do not form a square grid; pass grid_size")
        grid_size = (side, side)
    rows, cols = grid_size
    x = patches.reshape(n, rows, cols, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, rows * p, cols * p)


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Number of visible patches, truncated exactly as the reference (49 of 196 at 0.75)."""
    return int(num_patches * (1 - mask_ratio))


def random_masking(
    tokens: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random subset of ``tokens`` (N, L, D) per sample.

    Patches with the smallest ``noise`` (uniform in [0, 1) unless given) are kept. Returns the kept tokens
    ``(N, len_keep, D)``, the binary mask ``(N, L)`` in original order (1 = removed) and ``ids_restore``
    ``(N, L)``, which puts a shuffled sequence back into original order.
    """
    n, length, dim = tokens.shape
    len_keep = num_kept(length, mask_ratio)
    if noise is None:
        noise = torch.rand(n, length, device=tokens.device)
    elif noise.shape != (n, length):
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {(n, length)}")
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    kept = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, length, device=tokens.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return kept, mask, ids_restore
