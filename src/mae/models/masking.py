"""Pure functions for MAE's per-sample random masking, and the seeded noise that fixes a mask."""

from __future__ import annotations

import math

import torch


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Number of visible patches, truncated exactly as the reference (49 of 196 at 0.75)."""
    return int(num_patches * (1 - mask_ratio))


def check_trainable_mask_ratio(mask_ratio: float, num_patches: int) -> None:
    """A training mask ratio must remove at least one of ``num_patches`` patches (the loss averages over the
    removed ones) and keep at least one (the encoder needs an input)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} is outside [0, 1)")
    kept = num_kept(num_patches, mask_ratio)
    if not 1 <= kept < num_patches:
        highest = math.floor((1 - 1 / num_patches) * 1e4) / 1e4
        raise ValueError(
            f"mask_ratio={mask_ratio} keeps {kept} of the {num_patches} patches visible; training needs "
            f"at least one masked and one visible patch: 0 < mask_ratio <= {highest}"
        )


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


def seeded_noise(num_images: int, num_patches: int, seed: int) -> torch.Tensor:
    """``(num_images, num_patches)`` masking noise from a private generator seeded with ``seed``: the same seed
    hides the same patches in every caller (the pre-training's grid callback, the visualisation job), and the
    global random stream is not touched."""
    return torch.rand(num_images, num_patches, generator=torch.Generator().manual_seed(int(seed)))


def per_sample_noise(seeds: torch.Tensor | list[int], num_patches: int) -> torch.Tensor:
    """``(len(seeds), num_patches)`` masking noise whose row ``i`` depends on ``seeds[i]`` alone.

    A sample's mask then does not depend on which batch, process or node drew it: a run gives the same result on
    any number of processes for the same global batch, and resumes the same experiment on another one.
    """
    rows = [torch.rand(num_patches, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
    if not rows:
        return torch.empty(0, num_patches)
    return torch.stack(rows)
