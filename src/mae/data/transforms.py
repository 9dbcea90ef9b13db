"""Image transforms of the MAE recipe, for PIL images (ImageFolder) and uint8 tensors (in-memory datasets).

Pre-training and linear probing (the paper's): RandomResizedCrop(scale, bicubic) + horizontal flip + normalise.
Fine-tuning (the reference's): timm's ``create_transform`` with RandAugment and random erasing.
Evaluation (the reference's): resize the shorter side to ``img_size / resize_ratio`` + centre crop + normalise.

Both are small callables over torchvision's functional ops rather than ``v2.Compose`` pipelines: on a 28x28
image the pipeline's per-transform overhead and RandomResizedCrop's ~20 tiny RNG calls cost about 3x the
resampling itself, which matters when 60000 images are augmented per epoch on a CPU. Resampling stays
torchvision's, which matches PIL (the reference's backend) to within one grey level on uint8 images.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

ImageLike = Image.Image | torch.Tensor

INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}
ASPECT_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default, as in the reference
CROP_ATTEMPTS = 10  # RandomResizedCrop's number of tries before its centre-crop fallback


def interpolation_mode(name: str) -> InterpolationMode:
    """The torchvision mode for a config name; ``ValueError`` listing the choices otherwise."""
    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation={name!r} must be one of {', '.join(INTERPOLATIONS)}")
    return INTERPOLATIONS[name]


def check_crop_scale(crop_scale: Sequence[float]) -> tuple[float, float]:
    """RandomResizedCrop's area range as a tuple; it must satisfy ``0 < low <= high <= 1``."""
    values = tuple(float(v) for v in crop_scale)
    if len(values) != 2 or not 0.0 < values[0] <= values[1] <= 1.0:
        raise ValueError(f"crop_scale={list(crop_scale)} must be two numbers with 0 < low <= high <= 1")
    return values[0], values[1]


AUTO = "auto"
"""``mean: auto`` / ``std: auto`` in a data group: statistics measured on the data (see ``ImageDataModule``)."""


def check_normalization(
    mean: Sequence[float] | str, std: Sequence[float] | str, in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]] | tuple[None, None]:
    """Per-channel mean and std as tuples: one value per channel, std positive; ``(None, None)`` for ``auto``."""
    if mean == AUTO or std == AUTO:
        if mean != std:
            raise ValueError(f"mean={mean!r} and std={std!r}: give both as numbers, or both as {AUTO!r}")
        return None, None
    if isinstance(mean, str) or isinstance(std, str):
        raise ValueError(f"mean={mean!r} and std={std!r} must be lists of numbers or {AUTO!r}")
    mean_t, std_t = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean_t) != in_chans or len(std_t) != in_chans:
        raise ValueError(f"mean={list(mean_t)} and std={list(std_t)} must have in_chans={in_chans} values each")
    if min(std_t) <= 0:
        raise ValueError(f"std={list(std_t)} must be positive")
    return mean_t, std_t


class Normalize:
    """PIL image or uint8 tensor ``(C, H, W)`` to a float tensor of ``(pixel / 255 - mean) / std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        # Folded onto the 0-255 scale: two in-place ops per image instead of three.
        self.offset = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255
        self.scale = 1 / (torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255)

    def __call__(self, img: ImageLike) -> torch.Tensor:
        if isinstance(img, Image.Image):
            img = F.pil_to_tensor(img)
        if img.dtype != torch.uint8:
            raise TypeError(f"expected a PIL image or a uint8 tensor, got a {img.dtype} tensor")
        return img.float().sub_(self.offset).mul_(self.scale)


def sample_crop(
    height: int, width: int, scale: Sequence[float], ratio: Sequence[float], uniforms: Sequence[float]
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box ``(top, left, h, w)``, its algorithm step for step, fed with pre-drawn uniforms.

    Up to ``CROP_ATTEMPTS`` tries (4 uniforms each: area, log aspect ratio, top, left) of a box whose area is
    a ``scale`` fraction of the image and whose aspect ratio is log-uniform in ``ratio``; if none fits, the
    largest centred box with the ratio clamped to ``ratio``. Drawing all uniforms in one ``torch.rand`` call
    instead of ~20 small ones makes the augmentation of a small image several times faster.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(CROP_ATTEMPTS):
        u_area, u_ratio, u_top, u_left = uniforms[4 * attempt : 4 * attempt + 4]
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            # Same as randint(0, height - h + 1): a uniform integer over the valid offsets.
            top = min(int(u_top * (height - h + 1)), height - h)
            left = min(int(u_left * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class PretrainTransform:
    """The paper's pre-training augmentation. Draws from ``generator`` when given (the loaders pass one seeded
    per sample and epoch, so augmentation repeats exactly after a resume), else from the global torch RNG."""

    def __init__(
        self,
        img_size: int,
        crop_scale: Sequence[float],
        hflip: bool,
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bicubic",
    ) -> None:
        self.size = [img_size, img_size]
        self.scale = list(check_crop_scale(crop_scale))
        self.ratio = list(ASPECT_RATIO)
        self.hflip = hflip
        self.interpolation = interpolation_mode(interpolation)
        self.normalize = Normalize(mean, std)

    def __call__(self, img: ImageLike, generator: torch.Generator | None = None) -> torch.Tensor:
        uniforms = torch.rand(4 * CROP_ATTEMPTS + 1, generator=generator).tolist()  # crop tries, then the flip
        top, left, height, width = sample_crop(*F.get_size(img), self.scale, self.ratio, uniforms[:-1])
        img = F.resized_crop(img, top, left, height, width, self.size, interpolation=self.interpolation, antialias=True)
        if self.hflip and uniforms[-1] < 0.5:
            img = F.horizontal_flip(img)
        return self.normalize(img)


class EvalTransform:
    """Deterministic evaluation transform: shorter side to ``resize_size``, centre crop to ``img_size``,
    normalise. Steps that would be identities are skipped (a 28x28 image at ``img_size=28`` is only normalised)."""

    def __init__(
        self,
        img_size: int,
        resize_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bicubic",
    ) -> None:
        if resize_size < img_size:
            raise ValueError(f"resize_size={resize_size} must not be below img_size={img_size}")
        self.img_size = img_size
        self.resize_size = resize_size
        self.interpolation = interpolation_mode(interpolation)
        self.normalize = Normalize(mean, std)

    def __call__(self, img: ImageLike, generator: torch.Generator | None = None) -> torch.Tensor:
        del generator  # deterministic: accepted so that every transform is called the same way
        if min(F.get_size(img)) != self.resize_size:
            img = F.resize(img, [self.resize_size], interpolation=self.interpolation, antialias=True)
        if F.get_size(img) != [self.img_size, self.img_size]:
            img = F.center_crop(img, [self.img_size, self.img_size])
        return self.normalize(img)


def pretrain_transform(
    img_size: int,
    crop_scale: Sequence[float],
    hflip: bool,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
) -> PretrainTransform:
    """RandomResizedCrop(img_size, scale=crop_scale) + optional horizontal flip + normalisation."""
    return PretrainTransform(img_size, crop_scale, hflip, mean, std, interpolation)


def eval_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    resize_ratio: float = 0.875,
) -> EvalTransform:
    """Resize(int(img_size / resize_ratio)) + CenterCrop(img_size) + normalisation (224 -> 256 -> 224)."""
    if not 0.0 < resize_ratio <= 1.0:
        raise ValueError(f"resize_ratio={resize_ratio} must be in (0, 1]")
    return EvalTransform(img_size, int(img_size / resize_ratio), mean, std, interpolation)


class Transformed(Dataset):
    """A view of a dataset of ``(image, label)`` pairs with ``transform`` applied to the image.

    Lets one scanned or loaded split serve both augmented and unaugmented images without a second copy. A key
    may be an index, giving ``(image, label)``, or an ``(index, seed)`` pair (what
    :class:`~mae.data.loaders.EpochSeededSampler` yields), giving ``(image, label, seed)``: the seed drives the
    transform's randomness, independent of worker processes and global RNG state, and travels with the sample so
    that the training step draws the sample's mask from it too (see :mod:`mae.training.pretrain_module`).
    """

    def __init__(self, dataset: Dataset, transform: Callable[[Any], torch.Tensor]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        img, label = self.dataset[index]
        for offset in range(1, len(self)):
            if img is not None:
                break
            # An image skipped by data.on_bad_image=skip: serve the next one, so batches keep their size.
            img, label = self.dataset[(index + offset) % len(self)]
        if seed is None:
            return self.transform(img, None), label
        return self.transform(img, torch.Generator().manual_seed(seed)), label, seed


class FinetuneTransform:
    """The reference fine-tuning augmentation: timm's ``create_transform`` (RandomResizedCrop, flip, RandAugment,
    normalise, random erasing).

    timm's pipeline draws from Python's ``random``, NumPy's and the global torch RNG. Given a ``generator`` (the
    loaders pass one seeded per sample and epoch), all three are seeded from it for this one call and restored
    afterwards, so the augmentation repeats exactly after a resume and leaves the caller's RNG streams untouched.
    """

    def __init__(
        self,
        img_size: int,
        crop_scale: Sequence[float],
        hflip: bool,
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bicubic",
        rand_augment: str | None = None,
        random_erasing: float = 0.0,
    ) -> None:
        from timm.data import create_transform

        interpolation_mode(interpolation)
        if not 0.0 <= random_erasing <= 1.0:
            raise ValueError(f"random_erasing={random_erasing} must be a probability in [0, 1]")
        try:
            self.pipeline = create_transform(
                img_size,
                is_training=True,
                scale=check_crop_scale(crop_scale),
                hflip=0.5 if hflip else 0.0,
                auto_augment=rand_augment,
                interpolation=interpolation,
                re_prob=random_erasing,
                re_mode="pixel",
                re_count=1,
                mean=tuple(mean),
                std=tuple(std),
            )
        except (AssertionError, KeyError, ValueError) as error:  # timm's reactions to a malformed policy string
            raise ValueError(
                f"rand_augment={rand_augment!r} is not a timm RandAugment policy such as "
                f"'rand-m9-mstd0.5-inc1' ({error})"
            ) from error
        _allow_zero_bit_posterize(self.pipeline)

    def __call__(self, img: ImageLike, generator: torch.Generator | None = None) -> torch.Tensor:
        if isinstance(img, torch.Tensor):
            img = F.to_pil_image(img)  # timm's RandAugment operates on PIL images
        if generator is None:
            return self.pipeline(img)
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(seed)
                np.random.seed(seed % 2**32)
                torch.manual_seed(seed)
                return self.pipeline(img)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize, with 0 bits kept giving a black image as Pillow did before version 13 (which refuses 0)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _allow_zero_bit_posterize(pipeline: Any) -> None:
    """RandAugment's "PosterizeIncreasing" at magnitude 10 (reached by m9 with mstd 0.5) asks for 0 bits."""
    for transform in getattr(pipeline, "transforms", []):
        for op in getattr(transform, "ops", []):
            if "Posterize" in getattr(op, "name", ""):
                op.aug_fn = _posterize


def train_transform(
    img_size: int,
    crop_scale: Sequence[float],
    hflip: bool,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    rand_augment: str | None = None,
    random_erasing: float = 0.0,
) -> PretrainTransform | FinetuneTransform:
    """The training augmentation: the paper's crop + flip, or timm's pipeline when RandAugment or random erasing
    is asked for (fine-tuning)."""
    if rand_augment is None and random_erasing == 0.0:
        return PretrainTransform(img_size, crop_scale, hflip, mean, std, interpolation)
    return FinetuneTransform(img_size, crop_scale, hflip, mean, std, interpolation, rand_augment, random_erasing)
