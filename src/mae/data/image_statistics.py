"""Decode a seeded sample of a dataset's image files: per-channel statistics (``mean: auto``) and a check that the
files can be read at all, before any training."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torchvision.transforms.v2 import functional as F

from mae.data.decoding import ImageLoader
from mae.data.errors import CorruptDataError
from mae.data.loaders import seeded_permutation

log = logging.getLogger(__name__)


@dataclass
class ImageSample:
    """What decoding a sample of files found: per-channel sums of pixel means over the decoded images, and the
    files that could not be decoded with the reason."""

    decoded: int = 0
    channel_mean_sum: torch.Tensor | None = None
    channel_square_sum: torch.Tensor | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)

    def add(self, pixels: torch.Tensor) -> None:
        """One image, ``(C, H, W)`` uint8: its per-channel mean and mean square of ``pixel / 255``."""
        values = pixels.flatten(1).double() / 255
        mean, square = values.mean(dim=1), values.square().mean(dim=1)
        if self.channel_mean_sum is None:
            self.channel_mean_sum, self.channel_square_sum = mean, square
        else:
            self.channel_mean_sum += mean
            self.channel_square_sum += square
        self.decoded += 1

    def statistics(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the pixels in [0, 1], every image weighing the same (as every image is one
        training sample), rounded to 4 decimals (the precision published statistics carry)."""
        if not self.decoded:
            raise ValueError("no image was decoded")
        mean = self.channel_mean_sum / self.decoded
        std = (self.channel_square_sum / self.decoded - mean.square()).clamp_min(0).sqrt()
        return [round(float(v), 4) for v in mean], [round(max(float(v), 1e-4), 4) for v in std]


def sample_files(root: str, files: Sequence[str], loader: ImageLoader, samples: int, seed: int) -> ImageSample:
    """Decode ``samples`` files (all when fewer) of a seeded permutation of ``files`` (relative to ``root``) with
    a fresh copy of ``loader``'s settings (the training loader's counts and report file are left alone); an
    undecodable file is recorded, whatever ``on_bad_image`` says, for the caller to judge."""
    probe = ImageLoader(loader.mode, loader.decoder, "error")
    found = ImageSample()
    for index in seeded_permutation(len(files), seed)[:samples].tolist():
        path = os.path.join(root, files[index])
        try:
            image = probe(path)
        except CorruptDataError as error:
            found.failures.append((path, str(error)))
            continue
        found.add(image if isinstance(image, torch.Tensor) else F.pil_to_tensor(image))
    return found


def check_decodable(found: ImageSample, loader: ImageLoader, where: str) -> None:
    """One line when the sample shows the files cannot be trained on: none decoded, any failure under
    ``on_bad_image=error``, or more failures than ``max_bad_fraction`` of the sample."""
    tried = found.decoded + len(found.failures)
    if not found.failures:
        return
    first = found.failures[0][1]
    if not found.decoded:
        raise CorruptDataError(f"{where}: none of the {tried} image files tried could be decoded (the first: {first})")
    if loader.on_bad_image == "error":
        raise CorruptDataError(
            f"{first} ({len(found.failures)} of {tried} sampled files could not be decoded; "
            "remove them, or set data.on_bad_image=skip)"
        )
    if len(found.failures) > loader.max_bad_fraction * tried:
        raise CorruptDataError(
            f"{where}: {len(found.failures)} of the {tried} sampled image files could not be "
            f"decoded, more than data.max_bad_fraction={loader.max_bad_fraction} (the first: {first})"
        )
    log.warning(
        "%s: %d of the %d sampled image files could not be decoded and will be skipped (the first: %s)",
        where,
        len(found.failures),
        tried,
        first,
    )
