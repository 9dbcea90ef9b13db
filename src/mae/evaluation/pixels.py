"""The raw-pixel baselines every learned feature must beat: kNN on the pixels themselves, and a pixel "encoder"
that the linear probe can train on.

Under exactly the encoder's protocol (same bank, same queries, same ``k`` and temperature, cosine similarity),
two pixel features are scored: the raw pixels in ``[0, 1]`` and the pixels standardised per position with the
bank's own mean and standard deviation (what a practitioner would try first). The better of the two is the
baseline; both are reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mae.evaluation.knn import knn_top1

PIXEL_FEATURES = ("raw", "standardized")
STD_FLOOR = 1e-6  # border pixels that are black in every image have zero spread: leave them at zero


def raw_pixels(loader: Iterable, mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened pixels in ``[0, 1]`` ``(N, C*H*W)`` and labels ``(N,)`` of a loader of normalised images.

    The loaders serve ``(pixel - mean) / std`` per channel; undoing it gives the pixels as stored.
    """
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    images, labels = [], []
    for batch in loader:
        imgs = batch[0].float()
        images.append((imgs * std_t + mean_t).flatten(1))
        labels.append(torch.as_tensor(batch[1]).long())
    if not images:
        raise ValueError("the loader yielded no batches; the pixel baseline needs labelled images")
    return torch.cat(images), torch.cat(labels)


def standardize(bank: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets standardised per pixel with the bank's statistics (never the queries': no test-set peeking)."""
    mean, std = bank.mean(dim=0), bank.std(dim=0).clamp_min(STD_FLOOR)
    return (bank - mean) / std, (queries - mean) / std


def pixel_knn_top1(
    train_loader: Iterable,
    val_loader: Iterable,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float]:
    """kNN top-1 of raw and of standardised pixels, ``{"raw": ..., "standardized": ...}``, on the given loaders."""
    bank, bank_labels = raw_pixels(train_loader, mean, std)
    queries, query_labels = raw_pixels(val_loader, mean, std)
    scores = {}
    for name, (b, q) in zip(PIXEL_FEATURES, ((bank, queries), standardize(bank, queries))):
        scores[name] = knn_top1(
            F.normalize(b, dim=1), bank_labels, F.normalize(q, dim=1), query_labels, num_classes, k, temperature
        )
    return scores


class PixelEncoder(nn.Module):
    """The identity "encoder" of the pixel baselines: the whole flattened image as its one token.

    ``forward_features(imgs)`` returns ``(N, 2, C*H*W)``: the image as the cls token and again as the only patch
    token, so that a probe pooling either way reads the same pixels. It has no parameters to train or load, and
    stands in for an MAE wherever a frozen encoder is expected (``experiment=linprobe_pixels``).
    """

    def __init__(self, img_size: int, in_chans: int) -> None:
        super().__init__()
        if img_size < 1 or in_chans < 1:
            raise ValueError(f"img_size={img_size} and in_chans={in_chans} must be at least 1")
        self.img_size, self.in_chans = img_size, in_chans
        self.embed_dim = in_chans * img_size * img_size

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        flat = imgs.flatten(1).unsqueeze(1)
        return torch.cat([flat, flat], dim=1)
