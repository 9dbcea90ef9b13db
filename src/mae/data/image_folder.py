"""Image-folder datasets (``<root>/<split>/<class>/<image>``), ImageNet-1K's standard layout among them.

Images are decoded by torchvision into uint8 tensors (or by PIL, ``decoder="pil"``) and transformed with the paper's recipe; the class list comes from the training
folder and is imposed on the validation folder, so a label means the same class in both splits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from mae.data.base import ImageDataModule
from mae.data.decoding import ImageLoader
from mae.data.file_listing import list_image_files

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _FixedClassImageFolder(ImageFolder):
    """An ImageFolder whose classes are given (the training split's) instead of read from its own folders."""

    def __init__(self, root: str, classes: Sequence[str], loader: ImageLoader, allow_empty: bool) -> None:
        self._given_classes = list(classes)
        super().__init__(root, loader=loader, allow_empty=allow_empty)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._given_classes, {name: index for index, name in enumerate(self._given_classes)}


def class_folders(directory: Path) -> list[str]:
    """Sorted names of the sub-directories (classes) of ``directory``, as torchvision orders them."""
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())


def has_image_file(directory: Path) -> bool:
    """Whether ``directory`` or a folder below it holds a file torchvision's ImageFolder would read (stops at the
    first one, so a check of ImageNet's 1000 class folders stays cheap)."""
    for _, _, files in os.walk(directory, followlinks=True):
        if any(name.lower().endswith(IMG_EXTENSIONS) for name in files):
            return True
    return False


class ImageFolderDataModule(ImageDataModule):
    """Any ImageFolder dataset with training and validation splits, for MAE pre-training and kNN evaluation.

    Defaults are ImageNet-1K's (statistics, 224 px, the paper's crop scale).

    Args:
        root: folder holding ``train_dir`` and ``val_dir``, each with one sub-folder of images per class.
        train_dir, val_dir: split folder names under ``root``.
        img_size: side of the served images.
        in_chans: 3 (RGB) or 1 (images converted to grayscale).
        batch_size, num_workers, pin_memory, persistent_workers: DataLoader settings (persistent workers
            only apply with ``num_workers > 0``).
        seed: seeds the per-epoch shuffling and the fixed subsets.
        crop_scale: RandomResizedCrop area range of the pre-training augmentation.
        hflip: random horizontal flips in the pre-training augmentation.
        interpolation: resampling of every resize ("bicubic", "bilinear" or "nearest").
        rand_augment, random_erasing: fine-tuning augmentation (timm RandAugment policy, erasing probability);
            None and 0 give the paper's crop + flip.
        eval_resize_ratio: evaluation resizes the shorter side to ``img_size / eval_resize_ratio`` and then
            centre-crops ``img_size`` (224 -> 256 -> 224 at 0.875).
        mean, std: per-channel normalisation of the [0, 1] pixels.
        train_samples: pre-train on a fixed seeded subset of this many training images (None: all).
        knn_train_samples, knn_val_samples: caps of the kNN evaluation's train and val sets (None: all).
        decoder: "torchvision" (uint8 tensors, the fast path) or "pil" (the reference's decoding and resampling);
            see :mod:`mae.data.decoding`.
        stats_samples, stats_seed: ``mean: auto`` without stored numbers measures this many training images,
            sampled with this seed.
    """

    dataset_name = "image folder dataset"
    """How error messages call the dataset."""
    file_pattern = "<image>"
    """How error messages show the expected image files."""

    measures_statistics = True

    def __init__(
        self,
        *,
        root: str,
        train_dir: str,
        val_dir: str,
        eval_resize_ratio: float,
        decoder: str,
        on_bad_image: str,
        max_bad_fraction: float,
        stats_samples: int,
        stats_seed: int,
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        self.read_image_files(decoder, eval_resize_ratio, on_bad_image, max_bad_fraction, stats_samples, stats_seed)
        self.root = Path(root)
        self.train_path, self.val_path = self.root / train_dir, self.root / val_dir
        # Fail before any work, and cheaply: only the class folders are listed here; setup() scans the files.
        self.classes = self._check_layout()
        self.num_classes = len(self.classes)

    def _not_found(self, problem: str) -> FileNotFoundError:
        return FileNotFoundError(
            f"{self.dataset_name} not found: expected {self.train_path}/<class>/{self.file_pattern} and "
            f"{self.val_path}/<class>/{self.file_pattern} ({problem}); set data.root=... to the folder holding "
            f"{self.train_path.name}/ and {self.val_path.name}/"
        )

    def _check_layout(self) -> list[str]:
        for path in (self.root, self.train_path, self.val_path):
            if not path.is_dir():
                raise self._not_found(f"{path} is missing")
        classes = class_folders(self.train_path)
        if not classes:
            raise self._not_found(f"{self.train_path} has no class folders")
        unknown = sorted(set(class_folders(self.val_path)) - set(classes))
        if unknown:
            shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise ValueError(f"{self.val_path} has {len(unknown)} class folders absent from {self.train_path}: {shown}")
        for name in classes:
            if not has_image_file(self.train_path / name):
                raise ValueError(
                    f"class folder {self.train_path / name} has no image files ({', '.join(IMG_EXTENSIONS)}); "
                    "add its images or remove the folder"
                )
        return classes

    def statistics_files(self) -> tuple[str, list[str]]:
        return str(self.train_path), list_image_files(self.train_path)

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        loader = self.image_loader
        # Every training class must have images; the validation split may cover a subset of them.
        train = _FixedClassImageFolder(str(self.train_path), self.classes, loader, allow_empty=False)
        val = _FixedClassImageFolder(str(self.val_path), self.classes, loader, allow_empty=True)
        if len(val) == 0:
            raise self._not_found(f"{self.val_path} has no images")
        log.info(
            "%s: %d training and %d validation images in %d classes",
            self.dataset_name,
            len(train),
            len(val),
            self.num_classes,
        )
        self.set_splits(train, val, *self.transforms(self.eval_resize_ratio))


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-1K in the standard layout: ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG``.

    The generic module (``conf/data/imagenet.yaml`` holds ImageNet's settings); only its error messages speak of ImageNet.
    """

    dataset_name = "ImageNet"
    file_pattern = "*.JPEG"
