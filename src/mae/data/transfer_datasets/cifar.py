"""CIFAR-10 and CIFAR-100 from the official Python pickles in torchvision's layout, held in memory as uint8.

``<root>/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta}`` and
``<root>/cifar-100-python/{train, test, meta}``. A batch pickle holds ``data``, uint8 ``(N, 3072)``: per image the
1024 red, then the green, then the blue values of the 32x32 picture, each row-major; and the labels, ``labels``
(CIFAR-10) or ``fine_labels`` (CIFAR-100's 100-class task). The meta pickle names the classes.

Read here rather than through torchvision's classes, which check the files' MD5 sums and so refuse anything but
the exact release (a re-pickled or a tiny test copy). Training uses the 50000 training images, evaluation the
10000 test images.

The 32 px images are served at ``img_size`` (224 in the usual transfer protocol): the training crop is resized
up, and evaluation resizes the whole image (``eval_resize_ratio`` 1, no centre crop: cutting 12.5% off an
image this small removes object, not background, and gains nothing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision import datasets
from torchvision.transforms.v2 import functional as F

from mae.data.base import InMemoryImages
from mae.data.decoding import ImageLoader
from mae.data.transfer_datasets.base import TransferDataModule
from mae.data.transfer_datasets.files import corrupt, read_pickle

SIDE = 32
PIXELS = 3 * SIDE * SIDE


class _CIFARDataModule(TransferDataModule):
    """CIFAR in torchvision's layout; the two variants differ only in file and key names.

    Args:
        root: folder holding ``folder`` (torchvision's download target).
        eval_resize_ratio: 1 in ``conf/data/cifar*.yaml``: evaluation resizes the whole 32 px image to ``img_size``.
        settings: every other argument of :class:`~mae.data.transfer_datasets.base.TransferDataModule`.
    """

    folder: str
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    meta_file: str
    names_key: str
    """Key of the class names in the meta pickle."""
    label_key: str
    """Key of the labels in a batch pickle."""
    torchvision_name: str
    eval_split = "test"  # CIFAR has no validation split

    @property
    def base(self) -> Path:
        return self.root / self.folder

    def required_paths(self) -> list[Path]:
        return [self.base / name for name in (*self.train_files, *self.val_files, self.meta_file)]

    def read_classes(self) -> list[str]:
        path = self.base / self.meta_file
        meta = read_pickle(path)
        names = meta.get(self.names_key) if isinstance(meta, dict) else None
        if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
            raise corrupt(path, f"expected a dict with a list of class names under {self.names_key!r}")
        return names

    def read_batch(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """``data`` ``(N, 3072)`` and labels ``(N,)`` of one batch pickle, checked."""
        entry = read_pickle(path)
        if not isinstance(entry, dict) or "data" not in entry or self.label_key not in entry:
            raise corrupt(path, f"expected a dict with 'data' and {self.label_key!r}")
        data, labels = entry["data"], np.asarray(entry[self.label_key])
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
            found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise corrupt(path, f"'data' must be a uint8 array (N, {PIXELS}), found {found}")
        if labels.shape != (len(data),) or (len(labels) and labels.dtype.kind not in "iu"):
            raise corrupt(
                path,
                f"{self.label_key!r} must hold one integer per image ({len(data)}), "
                f"found {labels.dtype} {labels.shape}",
            )
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if len(bad):
            raise corrupt(path, f"label {bad[0]} outside 0-{self.num_classes - 1}")
        return data, labels

    def read_split(self, names: tuple[str, ...]) -> InMemoryImages:
        batches = [self.read_batch(self.base / name) for name in names]
        # The row layout is (C, H, W) already: a reshape, no copy beyond the concatenation.
        images = torch.from_numpy(np.concatenate([data for data, _ in batches]).reshape(-1, 3, SIDE, SIDE))
        if self.in_chans == 1:
            images = F.rgb_to_grayscale(images)  # once for the split rather than once per served image
        labels = torch.from_numpy(np.concatenate([labels for _, labels in batches]).astype(np.int64))
        return InMemoryImages(images, labels, self.in_chans)

    def read_splits(self, loader: ImageLoader) -> tuple[InMemoryImages, InMemoryImages]:
        del loader  # no image files: the pixels are in the pickles
        return self.read_split(self.train_files), self.read_split(self.val_files)

    def fetch(self) -> None:
        # One archive holds both splits and the meta file.
        getattr(datasets, self.torchvision_name)(str(self.root), train=True, download=True)


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 (50000 training / 10000 test images of 32 px, 10 classes); see :mod:`mae.data.transfer_datasets.cifar`."""

    dataset_name = "CIFAR-10"
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    val_files = ("test_batch",)
    meta_file = "batches.meta"
    names_key = "label_names"
    label_key = "labels"
    torchvision_name = "CIFAR10"
    release_classes = 10
    layout = f"{folder}/{{data_batch_1..5,test_batch,batches.meta}}"


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (50000 training / 10000 test images of 32 px, 100 fine classes); see
    :mod:`mae.data.transfer_datasets.cifar`."""

    dataset_name = "CIFAR-100"
    folder = "cifar-100-python"
    train_files = ("train",)
    val_files = ("test",)
    meta_file = "meta"
    names_key = "fine_label_names"
    label_key = "fine_labels"
    torchvision_name = "CIFAR100"
    release_classes = 100
    layout = f"{folder}/{{train,test,meta}}"
