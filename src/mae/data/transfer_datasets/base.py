"""What every transfer-learning dataset module shares: settings, the file check, downloads and ``setup()``.

A dataset module only says which files its layout needs, how to read the class list, how to read the two
splits and (where torchvision can) how to download; :class:`TransferDataModule` does the rest in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from mae.data.base import ImageDataModule
from mae.data.decoding import ImageLoader

log = logging.getLogger(__name__)


class ListedImages(Dataset):
    """``(image, label)`` pairs (uint8 tensor or PIL image, as the loader decodes) from a list of image files and their labels (the splits of list-file datasets).

    Paths are kept as plain strings: per-item ``Path`` objects would cost memory and time for nothing.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], loader: ImageLoader) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} image paths but {len(labels)} labels")
        self.paths, self.labels, self.loader = list(paths), list(labels), loader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | Image.Image, int]:
        return self.loader(self.paths[index]), self.labels[index]


def shorten(paths: Sequence[object], limit: int = 4) -> str:
    """``a, b, c, d and 3 more``: a list that keeps an error message on one readable line."""
    shown = ", ".join(str(path) for path in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


class TransferDataModule(ImageDataModule):
    """A labelled dataset in its official on-disk layout, for fine-tuning and linear probing.

    The constructor fails before any work: every file and folder of :meth:`required_paths` must exist (else a
    one-line ``FileNotFoundError`` naming what is missing and how to fix it), and the class list is read then,
    so ``num_classes`` is known before the model is built. With ``download=True`` and files missing,
    ``prepare_data()`` fetches them and ``num_classes`` is the official release's until then. The image lists
    are read by ``setup()``; an image file is only opened when served.

    Args:
        root: folder holding the dataset (see the subclass for its layout); also the download target.
        download: let ``prepare_data()`` fetch the dataset with torchvision when files are missing (only for the
            datasets torchvision can download).
        img_size: side of the served images.
        in_chans: 3 (RGB) or 1 (images converted to grayscale).
        batch_size, num_workers, pin_memory, persistent_workers: DataLoader settings (persistent workers
            only apply with ``num_workers > 0``).
        seed: seeds the per-epoch shuffling and the fixed subsets.
        crop_scale: RandomResizedCrop area range of the training augmentation (Inception-style 0.08-1 for
            transfer, as in the reference's fine-tuning).
        hflip: random horizontal flips in the training augmentation.
        interpolation: resampling of every resize ("bicubic", "bilinear" or "nearest").
        eval_resize_ratio: evaluation resizes the shorter side to ``img_size / eval_resize_ratio`` and then
            centre-crops ``img_size`` (224 -> 256 -> 224 at 0.875).
        mean, std: per-channel normalisation of the [0, 1] pixels (ImageNet's: the pre-trained encoder's).
        train_samples: train on a fixed seeded subset of this many training images (None: all).
        knn_train_samples, knn_val_samples: caps of the kNN evaluation's train and val sets (None: all).
        rand_augment, random_erasing: fine-tuning augmentation (timm RandAugment policy, erasing probability);
            None and 0 give the paper's crop + flip.
        decoder: "torchvision" (uint8 tensors, the fast path) or "pil" (the reference's decoding and resampling);
            see :mod:`mae.data.decoding`.
    """

    dataset_name: str = "dataset"
    """How error messages call the dataset."""
    layout: str = ""
    """The expected files relative to ``root``, as error messages show them."""
    source: str | None = None
    """Where to get a dataset torchvision cannot download (None: ``data.download=true`` fetches it)."""
    release_classes: int | None = None
    """Classes of the official release: ``num_classes`` while a download is pending (the model is built first)."""

    def __init__(
        self,
        *,
        root: str,
        download: bool,
        eval_resize_ratio: float,
        decoder: str,
        on_bad_image: str,
        max_bad_fraction: float,
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        self.read_image_files(decoder, eval_resize_ratio, on_bad_image, max_bad_fraction)
        self.root = Path(root)
        self.download = bool(download)
        if self.download and self.source is not None:
            raise ValueError(
                f"data.download=true: torchvision cannot download {self.dataset_name} in its official "
                f"layout; get it from {self.source} into {self.root}"
            )
        self._classes: list[str] | None = None
        missing = self.missing_paths()
        if not missing:
            self._classes = self.read_classes()
        elif not self.download:  # with download=True, prepare_data() fetches the files first
            raise self.not_found(missing)

    # -- what a dataset module provides ----------------------------------------------------------------------
    def required_paths(self) -> list[Path]:
        """Files and folders that must exist under ``root`` (individual images are only opened when served)."""
        raise NotImplementedError

    def read_classes(self) -> list[str]:
        """Class names, index = label."""
        raise NotImplementedError

    def read_splits(self, loader: ImageLoader) -> tuple[Dataset, Dataset]:
        """(training, validation) datasets of ``(image, label)`` pairs, untransformed."""
        raise NotImplementedError

    def fetch(self) -> None:
        """Download the dataset into ``root`` with torchvision (only called with ``download=True``)."""
        raise NotImplementedError

    # -- shared behaviour ------------------------------------------------------------------------------------
    def missing_paths(self) -> list[Path]:
        return [path for path in self.required_paths() if not path.exists()]

    def not_found(self, missing: Sequence[Path]) -> FileNotFoundError:
        fix = f"get it from {self.source}" if self.source is not None else "set data.download=true to fetch it"
        return FileNotFoundError(
            f"{self.dataset_name} not found: missing {shorten(missing)} (expected {self.root}/{self.layout}); "
            f"set data.root=... to the folder holding it, or {fix}"
        )

    @property
    def classes(self) -> list[str]:
        """Class names, index = label (read from the dataset's files)."""
        if self._classes is None:  # only after a construction with download=True and nothing there yet
            missing = self.missing_paths()
            if missing:
                raise self.not_found(missing)
            self._classes = self.read_classes()
        return self._classes

    @property
    def num_classes(self) -> int:
        if self._classes is None and self.download and self.release_classes is not None and self.missing_paths():
            return self.release_classes  # what prepare_data() will fetch; the files cannot be read yet
        return len(self.classes)

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node: the only place that may download.
        if self.download and self.missing_paths():
            self.fetch()

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        classes = self.classes  # also reports files still missing
        train, val = self.read_splits(self.image_loader)
        log.info(
            "%s: %d training and %d validation images in %d classes",
            self.dataset_name,
            len(train),
            len(val),
            len(classes),
        )
        self.set_splits(train, val, *self.transforms(self.eval_resize_ratio))
