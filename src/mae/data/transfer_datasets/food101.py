"""Food-101 in torchvision's layout: ``<root>/food-101/{images/<class>/<id>.jpg, meta/train.json, meta/test.json,
meta/classes.txt}``.

``meta/classes.txt`` lists one class per line; a label is the line's index (the release lists them
alphabetically, so labels equal torchvision's, which sorts the JSON keys). ``meta/{train,test}.json`` map each
class to its images, ``{"apple_pie": ["apple_pie/1005649", ...], ...}``, each the file ``images/<entry>.jpg``.
Training uses train (75750 images), evaluation test (25250): the official split.
"""

from __future__ import annotations

from pathlib import Path

from torchvision import datasets

from mae.data.decoding import ImageLoader
from mae.data.transfer_datasets.base import ListedImages, TransferDataModule
from mae.data.transfer_datasets.files import corrupt, read_json, read_rows

FOLDER = "food-101"


def is_listing(document: object) -> bool:
    """Whether a parsed JSON document has the shape of ``meta/{train,test}.json``: class -> list of names."""
    return isinstance(document, dict) and all(
        isinstance(entries, list) and all(isinstance(entry, str) for entry in entries) for entries in document.values()
    )


class Food101DataModule(TransferDataModule):
    """Food-101 (101 dishes); see :mod:`mae.data.transfer_datasets.food101`.

    Args: those of :class:`~mae.data.transfer_datasets.base.TransferDataModule`; ``root`` holds ``food-101/``
    (torchvision's download target).
    """

    dataset_name = "Food-101"
    release_classes = 101
    eval_split = "test"
    layout = f"{FOLDER}/{{images/<class>/*.jpg,meta/train.json,meta/test.json,meta/classes.txt}}"

    @property
    def base(self) -> Path:
        return self.root / FOLDER

    def required_paths(self) -> list[Path]:
        meta = self.base / "meta"
        return [self.base / "images", meta / "train.json", meta / "test.json", meta / "classes.txt"]

    def read_classes(self) -> list[str]:
        path = self.base / "meta" / "classes.txt"
        names = [words[0] for _, words in read_rows(path, 1)]
        if not names or len(set(names)) != len(names):
            raise corrupt(path, "expected one distinct class name per line" if names else "no classes listed")
        return names

    def read_split(self, split: str, loader: ImageLoader) -> ListedImages:
        path = self.base / "meta" / f"{split}.json"
        listing = read_json(path)
        if not is_listing(listing):
            raise corrupt(path, "expected a JSON object mapping each class to a list of image names")
        label_of = {name: label for label, name in enumerate(self.classes)}
        unknown = [name for name in listing if name not in label_of]
        if unknown:
            raise corrupt(path, f"class {unknown[0]!r} is not in classes.txt")
        paths = [f"{self.base}/images/{entry}.jpg" for entries in listing.values() for entry in entries]
        labels = [label_of[name] for name, entries in listing.items() for _ in entries]
        return ListedImages(paths, labels, loader)

    def read_splits(self, loader: ImageLoader) -> tuple[ListedImages, ListedImages]:
        return self.read_split("train", loader), self.read_split("test", loader)

    def fetch(self) -> None:
        datasets.Food101(str(self.root), download=True)
