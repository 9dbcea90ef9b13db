"""iNaturalist 2017, 2018 and 2019 in the official competition layout (COCO-style JSON annotations).

``<root>/train{year}.json`` and ``<root>/val{year}.json`` list ``images`` (``id``, ``file_name``), ``annotations``
(``image_id``, ``category_id``) and ``categories`` (``id``, ``name``, ...). ``file_name`` is relative to ``root``:
``train_val_images/<supercategory>/<class>/<id>.jpg`` (2017), ``train_val2018/...`` (2018) and
``train_val2019/...`` (2019). Training uses the train file, evaluation the val file (the test labels are not
public).

Labels: the category ids of the training file's ``categories``, sorted, numbered ``0 .. K-1``. The official ids
already are ``0 .. K-1`` (5089, 8142 and 1010 classes), so labels equal the released ids; the renumbering only
matters for a subset of the categories. A validation image of a category the training file does not list is a
corrupt-data error. torchvision cannot download these releases in this layout: get them from the competition
pages (``https://github.com/visipedia/inat_comp/tree/master/<year>``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mae.data.decoding import ImageLoader
from mae.data.transfer_datasets.base import ListedImages, TransferDataModule
from mae.data.transfer_datasets.files import corrupt, read_json

IMAGE_FOLDERS = {2017: "train_val_images", 2018: "train_val2018", 2019: "train_val2019"}
SOURCE = "https://github.com/visipedia/inat_comp/tree/master/{year}"


def records(document: Any, key: str, path: Path) -> list[dict]:
    """The list of JSON objects under ``key`` of a COCO-style document."""
    items = document.get(key) if isinstance(document, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise corrupt(path, f"expected a JSON object with a list of objects under {key!r}")
    return items


class INaturalistDataModule(TransferDataModule):
    """iNaturalist 2017, 2018 or 2019 (species classification); see :mod:`mae.data.transfer_datasets.inaturalist`.

    The constructor reads the training JSON (a few seconds for 2018's 437513 images): the class list is in it.

    Args:
        root: folder holding ``train{year}.json``, ``val{year}.json`` and the image folder.
        year: 2017, 2018 or 2019.
        settings: every other argument of :class:`~mae.data.transfer_datasets.base.TransferDataModule`
            (``download=True`` is refused: torchvision does not fetch this layout).
    """

    def __init__(self, *, year: int, **settings: Any) -> None:
        if isinstance(year, bool) or year not in IMAGE_FOLDERS:
            raise ValueError(f"year={year!r} must be one of {', '.join(map(str, IMAGE_FOLDERS))}")
        self.year = int(year)
        self.dataset_name = f"iNaturalist {year}"
        self.layout = f"{{train{year}.json,val{year}.json,{IMAGE_FOLDERS[year]}/}}"
        self.source = SOURCE.format(year=year)
        self.eval_split = "val"  # the test labels are not public
        self._label_of: dict[Any, int] = {}
        self._train: tuple[list[str], list[int]] | None = None
        super().__init__(**settings)

    @property
    def train_file(self) -> Path:
        return self.root / f"train{self.year}.json"

    @property
    def val_file(self) -> Path:
        return self.root / f"val{self.year}.json"

    def required_paths(self) -> list[Path]:
        return [self.train_file, self.val_file, self.root / IMAGE_FOLDERS[self.year]]

    def read_classes(self) -> list[str]:
        document = read_json(self.train_file)
        categories = records(document, "categories", self.train_file)
        try:
            names = {category["id"]: str(category["name"]) for category in categories}
            ids = sorted(names)
        except (KeyError, TypeError) as error:  # a category without id or name; ids that do not compare
            raise corrupt(
                self.train_file, f"every category needs an 'id' and a 'name', ids of one type ({error!r})"
            ) from error
        if not ids:
            raise corrupt(self.train_file, "no categories listed")
        self._label_of = {category_id: label for label, category_id in enumerate(ids)}
        # The training list comes from the same document: keep it rather than parse the file again in setup().
        self._train = self.labelled_files(document, self.train_file)
        return [names[category_id] for category_id in ids]

    def labelled_files(self, document: Any, path: Path) -> tuple[list[str], list[int]]:
        """Image paths and labels of a COCO-style document; every image needs an annotation of a known category."""
        images = records(document, "images", path)
        annotations = records(document, "annotations", path)
        try:
            category_of = {annotation["image_id"]: annotation["category_id"] for annotation in annotations}
            paths, labels = [], []
            for image in images:
                category = category_of.get(image["id"])
                if category is None:
                    raise corrupt(path, f"image id {image['id']} has no annotation")
                if category not in self._label_of:
                    raise corrupt(
                        path,
                        f"image id {image['id']} has category_id {category}, which "
                        f"{self.train_file.name} does not list",
                    )
                paths.append(str(self.root / image["file_name"]))
                labels.append(self._label_of[category])
        except (KeyError, TypeError) as error:  # a record without its field, a file_name that is not a string
            raise corrupt(path, f"malformed image or annotation record ({error!r})") from error
        return paths, labels

    def read_splits(self, loader: ImageLoader) -> tuple[ListedImages, ListedImages]:
        if self._train is None:
            self.read_classes()
        assert self._train is not None
        train = ListedImages(*self._train, loader)
        self._train = None  # the dataset holds the lists now
        return train, ListedImages(*self.labelled_files(read_json(self.val_file), self.val_file), loader)
