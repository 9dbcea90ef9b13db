"""Oxford Flowers-102 in torchvision's layout: ``<root>/flowers-102/{jpg/image_00001.jpg, ..., imagelabels.mat,
setid.mat}``.

``imagelabels.mat`` holds ``labels``, the class (1-102) of image ``i`` at position ``i - 1``; ``setid.mat`` holds
the image ids (1-based) of the official splits: ``trnid`` (train, 10 per class), ``valid`` (val, 10 per class)
and ``tstid`` (test, 6149 images). Labels are served 0-based.

Splits: as configured (``conf/data/flowers102.yaml``) training uses train + val (2040 images) and evaluation uses
test, the usual transfer protocol (the val split is too small to be worth holding out once hyper-parameters are fixed); ``train_splits`` and
``val_split`` select others, e.g. train on ``train`` and evaluate on ``val`` to tune. Class names are
torchvision's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torchvision import datasets

from mae.data.decoding import ImageLoader
from mae.data.transfer_datasets.base import ListedImages, TransferDataModule
from mae.data.transfer_datasets.files import corrupt, read_mat

FOLDER = "flowers-102"
LABELS_FILE = "imagelabels.mat"
SPLITS_FILE = "setid.mat"
SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}
CLASS_NAMES = tuple(datasets.Flowers102.classes)  # in label order


def check_splits(train_splits: Sequence[str], val_split: str) -> tuple[tuple[str, ...], str]:
    """The split choice as a tuple and a name: known names, no repeats, evaluation not on a training split."""
    allowed = ", ".join(SPLIT_KEYS)
    train = (train_splits,) if isinstance(train_splits, str) else tuple(train_splits or ())
    if not train or any(name not in SPLIT_KEYS for name in train) or len(set(train)) != len(train):
        raise ValueError(f"train_splits={list(train)} must be distinct names among {allowed}")
    if val_split not in SPLIT_KEYS:
        raise ValueError(f"val_split={val_split!r} must be one of {allowed}")
    if val_split in train:
        raise ValueError(f"val_split={val_split!r} is also in train_splits={list(train)}; evaluate on another split")
    return train, val_split


def integers(values: np.ndarray, path: Path, key: str) -> list[int]:
    """A .mat variable as Python ints (MATLAB stores these as doubles or unsigned ints)."""
    if values.dtype.kind not in "iuf" or (values.dtype.kind == "f" and not np.all(values == np.round(values))):
        raise corrupt(path, f"{key!r} must hold integers, found {values.dtype}")
    return values.astype(np.int64).tolist()


class Flowers102DataModule(TransferDataModule):
    """Oxford Flowers-102 (102 classes); see :mod:`mae.data.transfer_datasets.flowers102`.

    Args:
        root: folder holding ``flowers-102/`` (torchvision's download target).
        train_splits: official splits trained on ("train", "val", "test"); the config: train + val.
        val_split: official split evaluated on; the config: test.
        settings: every other argument of :class:`~mae.data.transfer_datasets.base.TransferDataModule`.
    """

    dataset_name = "Flowers-102"
    release_classes = 102
    layout = f"{FOLDER}/{{jpg/image_00001.jpg...,{LABELS_FILE},{SPLITS_FILE}}}"

    def __init__(self, *, train_splits: Sequence[str], val_split: str, **settings: Any) -> None:
        self.train_splits, self.val_split = check_splits(train_splits, val_split)
        self.eval_split = self.val_split
        super().__init__(**settings)

    @property
    def base(self) -> Path:
        return self.root / FOLDER

    def required_paths(self) -> list[Path]:
        return [self.base / "jpg", self.base / LABELS_FILE, self.base / SPLITS_FILE]

    def image_labels(self) -> list[int]:
        """The 0-based label of every image, image id ``i`` at position ``i - 1``."""
        path = self.base / LABELS_FILE
        labels = integers(read_mat(path, "labels")["labels"], path, "labels")
        bad = [label for label in labels if not 1 <= label <= len(CLASS_NAMES)]
        if bad or not labels:
            raise corrupt(path, f"label {bad[0]} outside 1-{len(CLASS_NAMES)}" if bad else "no labels")
        return [label - 1 for label in labels]

    def read_classes(self) -> list[str]:
        # A partial copy (a subset of the classes) has the first max(label) classes.
        return list(CLASS_NAMES[: max(self.image_labels()) + 1])

    def read_split(self, names: Sequence[str], labels: list[int], loader: ImageLoader) -> ListedImages:
        path = self.base / SPLITS_FILE
        keys = [SPLIT_KEYS[name] for name in names]
        ids = [image_id for key, values in read_mat(path, *keys).items() for image_id in integers(values, path, key)]
        bad = [image_id for image_id in ids if not 1 <= image_id <= len(labels)]
        if bad:
            raise corrupt(path, f"image id {bad[0]} outside 1-{len(labels)} (the images {LABELS_FILE} labels)")
        return ListedImages(
            [f"{self.base}/jpg/image_{image_id:05d}.jpg" for image_id in ids],
            [labels[image_id - 1] for image_id in ids],
            loader,
        )

    def read_splits(self, loader: ImageLoader) -> tuple[ListedImages, ListedImages]:
        labels = self.image_labels()
        return self.read_split(self.train_splits, labels, loader), self.read_split((self.val_split,), labels, loader)

    def fetch(self) -> None:
        datasets.Flowers102(str(self.root), download=True)
