"""Pure functions for MAE's patch layout: images to sequences of flattened patches and back."""

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


def unpatchify(
    patches: torch.Tensor, patch_size: int, channels: int, grid_size: tuple[int, int] | None = None
) -> torch.Tensor:
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
