"""Places365-Standard in torchvision's layout.

``<root>/categories_places365.txt`` (lines ``/a/airfield 0``: class, label),
``<root>/places365_train_standard.txt`` (lines ``/a/airfield/00000001.jpg 0``: image under the training folder,
label) and ``<root>/places365_val.txt`` (lines ``Places365_val_00000001.jpg 165``: image under the validation
folder, label). Images: ``data_256_standard/`` and ``val_256/`` with ``small=True`` (the 256x256 release),
``data_large_standard/`` and ``val_large/`` otherwise. torchvision renames the archive's training folder
(``data_256/``, ``data_large/``); both names are accepted, torchvision's first.

Training uses the 1.8M standard training images, evaluation the 36500 validation images (the test labels are
not public). Labels are the files' numbers; class names as in the category file (``/a/airfield``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvision import datasets

from mae.data.decoding import ImageLoader
from mae.data.transfer_datasets.base import ListedImages, TransferDataModule
from mae.data.transfer_datasets.files import check_labels, labelled_rows, names_by_label

CATEGORIES = "categories_places365.txt"
TRAIN_LIST = "places365_train_standard.txt"
VAL_LIST = "places365_val.txt"
TRAIN_FOLDERS = {True: ("data_256_standard", "data_256"), False: ("data_large_standard", "data_large")}
VAL_FOLDERS = {True: "val_256", False: "val_large"}


class Places365DataModule(TransferDataModule):
    """Places365-Standard (365 scene classes); see :mod:`mae.data.transfer_datasets.places365`.

    Args:
        root: folder holding the list files and the image folders (torchvision's download target).
        small: the 256x256 images (True) or the high-resolution ones.
        settings: every other argument of :class:`~mae.data.transfer_datasets.base.TransferDataModule`.
    """

    dataset_name = "Places365"
    release_classes = 365
    eval_split = "val"  # the test labels are not public

    def __init__(self, *, small: bool, **settings: Any) -> None:
        self.small = bool(small)
        self.layout = (
            f"{{{CATEGORIES},{TRAIN_LIST},{VAL_LIST},{TRAIN_FOLDERS[self.small][0]}/,{VAL_FOLDERS[self.small]}/}}"
        )
        super().__init__(**settings)

    @property
    def train_folder(self) -> Path:
        """torchvision's training folder, or the archive's name for it when only that one exists."""
        candidates = [self.root / name for name in TRAIN_FOLDERS[self.small]]
        return next((path for path in candidates if path.is_dir()), candidates[0])

    def required_paths(self) -> list[Path]:
        return [self.root / name for name in (CATEGORIES, TRAIN_LIST, VAL_LIST)] + [
            self.train_folder,
            self.root / VAL_FOLDERS[self.small],
        ]

    def read_classes(self) -> list[str]:
        path = self.root / CATEGORIES
        return names_by_label(path, labelled_rows(path, 2))

    def read_list(self, name: str, folder: Path, loader: ImageLoader) -> ListedImages:
        path = self.root / name
        rows = labelled_rows(path, 2)
        check_labels(path, rows, self.num_classes)
        # String joins, not Path objects: the training list has 1.8M lines.
        return ListedImages(
            [f"{folder}/{image.lstrip('/')}" for _, image, _ in rows], [label for _, _, label in rows], loader
        )

    def read_splits(self, loader: ImageLoader) -> tuple[ListedImages, ListedImages]:
        return (
            self.read_list(TRAIN_LIST, self.train_folder, loader),
            self.read_list(VAL_LIST, self.root / VAL_FOLDERS[self.small], loader),
        )

    def fetch(self) -> None:
        for split in ("train-standard", "val"):
            datasets.Places365(str(self.root), split=split, small=self.small, download=True)
