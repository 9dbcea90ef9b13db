"""Joint image + label transforms of MMSegmentation's ADE20K pipeline, on ``tv_tensors`` with torchvision's v2 ops.

Training (mmseg: ``RandomResize(scale, ratio_range, keep_ratio=True)``, ``RandomCrop(crop_size, cat_max_ratio)``,
``RandomFlip(prob)``, ``PhotoMetricDistortion``, then the data preprocessor's normalisation and padding): rescale so
that the image fits ``scale`` times a ratio drawn from ``ratio_range``, crop at a random place (redrawn up to 10
times while one class covers ``cat_max_ratio`` of the crop or more), flip, distort brightness and contrast (and
saturation and hue for RGB), normalise, and pad to ``crop_size`` at the bottom and right (image 0 after
normalisation, i.e. the mean, as mmseg pads the normalised batch; label 255). Evaluation: rescale to fit ``scale``,
normalise; the label keeps its original resolution (metrics are computed there, on upsampled logits). Labels are
always resized with nearest neighbour, taken at pixel centres.

Small callables over the functional ops rather than ``v2.Compose`` pipelines, as :mod:`mae.data.transforms`: every
random number comes from the ``generator`` the loaders seed per sample and epoch (a resumed run augments exactly as
an uninterrupted one), the global torch RNG only without one. Images are resized bilinearly with antialiasing
(mmseg's OpenCV resize has none; it differs only when shrinking).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from mae.data.dense.ade20k import IGNORE_INDEX
from mae.data.transforms import Normalize

CROP_ATTEMPTS = 10  # mmseg's RandomCrop redraws a crop this many times for cat_max_ratio
# PhotoMetricDistortion's settings in mmseg's ADE20K recipe (its defaults): each step applies with probability 1/2.
BRIGHTNESS_DELTA = 32.0  # added to 0-255 pixels, uniform in [-delta, delta]
CONTRAST_RANGE = (0.5, 1.5)  # pixels multiplied by a uniform factor
SATURATION_RANGE = (0.5, 1.5)  # HSV saturation multiplied by a uniform factor
HUE_DELTA = 18  # OpenCV hue units (180 per turn), an integer in [-delta, delta)

Pair = tuple[torch.Tensor, torch.Tensor]


def rescale_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: ``(height, width)`` times the largest factor with which the long side fits
    ``max(scale)`` and the short side ``min(scale)``, rounded."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def crop_origin(
    height: int, width: int, crop_size: Sequence[int], generator: torch.Generator | None
) -> tuple[int, int]:
    """mmseg's random crop box origin ``(top, left)``: uniform over the positions inside the image (0 along a side
    shorter than the crop, which is then cropped to the image and padded later)."""
    top = int(torch.randint(max(height - crop_size[0], 0) + 1, (1,), generator=generator))
    left = int(torch.randint(max(width - crop_size[1], 0) + 1, (1,), generator=generator))
    return top, left


def dominated(label: torch.Tensor, cat_max_ratio: float) -> bool:
    """Whether a crop's label fails mmseg's ``cat_max_ratio`` rule: fewer than two classes, or one class covering
    ``cat_max_ratio`` of the labelled (non-255) pixels or more."""
    counts = torch.bincount(label[label != IGNORE_INDEX].flatten())
    counts = counts[counts > 0]
    return len(counts) < 2 or int(counts.max()) / int(counts.sum()) >= cat_max_ratio


def random_crop(
    label: torch.Tensor, crop_size: Sequence[int], cat_max_ratio: float, generator: torch.Generator | None
) -> tuple[int, int]:
    """The crop origin, redrawn up to :data:`CROP_ATTEMPTS` times while the crop is :func:`dominated` (the last draw
    stays when none passes; ``cat_max_ratio`` 1 draws once)."""
    height, width = label.shape[-2:]
    top, left = crop_origin(height, width, crop_size, generator)
    if cat_max_ratio < 1.0:
        for _ in range(CROP_ATTEMPTS):
            if not dominated(label[..., top : top + crop_size[0], left : left + crop_size[1]], cat_max_ratio):
                break
            top, left = crop_origin(height, width, crop_size, generator)
    return top, left


def _scaled(image: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """``image * alpha + beta`` clipped to uint8 and truncated, as mmseg's ``convert``."""
    return (image.float() * alpha + beta).clamp_(0, 255).to(torch.uint8)


def _saturated(image: torch.Tensor, factor: float) -> torch.Tensor:
    """RGB ``(3, H, W)`` uint8 with its HSV saturation multiplied by ``factor`` (clipped at 1), hue and value kept:
    every channel moves away from the pixel's maximum by the same factor."""
    pixels = image.float()
    value, smallest = pixels.amax(0, keepdim=True), pixels.amin(0, keepdim=True)
    spread = value - smallest
    # A saturation clipped at 1 puts the smallest channel at 0: the factor is at most value / spread.
    stretch = torch.where(spread > 0, torch.minimum(torch.tensor(factor), value / spread.clamp_min(1e-6)), 1.0)
    return (value - (value - pixels) * stretch).round_().clamp_(0, 255).to(torch.uint8)


def photometric_distortion(image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """mmseg's ``PhotoMetricDistortion`` on a ``(C, H, W)`` uint8 image: brightness, then contrast either second or
    last, saturation and hue in between (RGB only), each applied with probability 1/2."""
    u = torch.rand(9, generator=generator).tolist()
    if u[0] < 0.5:
        image = _scaled(image, beta=BRIGHTNESS_DELTA * (2 * u[1] - 1))
    contrast = CONTRAST_RANGE[0] + (CONTRAST_RANGE[1] - CONTRAST_RANGE[0]) * u[3]
    contrast_first = u[2] < 0.5
    if contrast_first and u[4] < 0.5:
        image = _scaled(image, alpha=contrast)
    if image.shape[0] == 3:
        if u[5] < 0.5:
            image = _saturated(image, SATURATION_RANGE[0] + (SATURATION_RANGE[1] - SATURATION_RANGE[0]) * u[6])
        if u[7] < 0.5:
            shift = min(math.floor(-HUE_DELTA + 2 * HUE_DELTA * u[8]), HUE_DELTA - 1)
            image = F.adjust_hue(image, shift / 180)
    if not contrast_first and u[4] < 0.5:
        image = _scaled(image, alpha=contrast)
    return image


class SegmentationTrainTransform:
    """The training augmentation (see the module's docstring), ``(image (C, H, W) uint8, label (H, W) int64)`` to
    ``(image (C, crop_h, crop_w) float32, label (crop_h, crop_w) int64)``.

    Args:
        scale: the base scale: the long and the short side's bounds (mmseg's ``(2048, 512)``), in either order.
        ratio_range: range of the random factor on ``scale`` (uniform).
        crop_size: ``(height, width)`` of the crops.
        cat_max_ratio: largest share one class may cover in a crop (1: no redraws).
        hflip: probability of a horizontal flip.
        mean, std: per-channel normalisation of the [0, 1] pixels.
    """

    def __init__(
        self,
        scale: Sequence[int],
        ratio_range: Sequence[float],
        crop_size: Sequence[int],
        cat_max_ratio: float,
        hflip: float,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.scale, self.ratio_range, self.crop_size = tuple(scale), tuple(ratio_range), tuple(crop_size)
        self.cat_max_ratio, self.hflip = cat_max_ratio, hflip
        self.normalize = Normalize(mean, std)

    def geometry(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        """Random rescale, crop and flip: ``(image uint8, label)`` of at most ``crop_size``, still aligned."""
        image, label = tv_tensors.Image(image), tv_tensors.Mask(label)
        u_ratio, u_flip = torch.rand(2, generator=generator).tolist()
        ratio = self.ratio_range[0] + (self.ratio_range[1] - self.ratio_range[0]) * u_ratio
        size = list(rescale_size(*label.shape, [int(side * ratio) for side in self.scale]))
        image = F.resize(image, size, InterpolationMode.BILINEAR, antialias=True)
        # Nearest neighbour at pixel centres, aligned with the bilinear image (mmseg's OpenCV nearest is shifted by up
        # to half a pixel).
        label = F.resize(label, size, InterpolationMode.NEAREST_EXACT)
        top, left = random_crop(label, self.crop_size, self.cat_max_ratio, generator)
        height, width = min(self.crop_size[0], size[0] - top), min(self.crop_size[1], size[1] - left)
        image, label = F.crop(image, top, left, height, width), F.crop(label, top, left, height, width)
        if u_flip < self.hflip:
            image, label = F.horizontal_flip(image), F.horizontal_flip(label)
        return image.as_subclass(torch.Tensor), label.as_subclass(torch.Tensor)

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        image, label = self.geometry(image, label, generator)
        image = self.normalize(photometric_distortion(image, generator))
        bottom, right = self.crop_size[0] - image.shape[-2], self.crop_size[1] - image.shape[-1]
        if bottom or right:
            image = F.pad(image, [0, 0, right, bottom], fill=0.0)
            label = F.pad(tv_tensors.Mask(label), [0, 0, right, bottom], fill=IGNORE_INDEX).as_subclass(torch.Tensor)
        return image, label


class SegmentationEvalTransform:
    """Evaluation: the image rescaled to fit ``scale`` (keeping its aspect ratio) and normalised; the label
    unchanged, at its original resolution."""

    def __init__(self, scale: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> None:
        self.scale = tuple(scale)
        self.normalize = Normalize(mean, std)

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None) -> Pair:
        del generator  # deterministic: accepted so that every transform is called the same way
        size = rescale_size(*image.shape[-2:], self.scale)
        if size != tuple(image.shape[-2:]):
            image = F.resize(image, list(size), InterpolationMode.BILINEAR, antialias=True)
        return self.normalize(image), label


class Paired(Dataset):
    """A view of a dataset of ``(image, label)`` pairs with a joint ``transform`` applied; the label is whatever
    the transform takes with the image (a label map here, a dict of instances for detection).

    A key may be an index or an ``(index, seed)`` pair (what :class:`~mae.data.loaders.EpochSeededSampler`
    yields): the seed drives the transform's randomness. Either way the item is ``(image, label)``.
    """

    def __init__(self, dataset: Dataset, transform: Callable[..., tuple[torch.Tensor, Any]]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.dataset[index]
        return self.transform(image, label, None if seed is None else torch.Generator().manual_seed(seed))
