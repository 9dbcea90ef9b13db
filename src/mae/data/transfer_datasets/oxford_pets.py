"""Oxford-IIIT Pets in torchvision's layout: ``<root>/oxford-iiit-pet/{images/<Breed>_<n>.jpg,
annotations/trainval.txt, annotations/test.txt}``.

A list line is ``Abyssinian_100 1 1 1``: image id (the file ``images/Abyssinian_100.jpg``), class (1-37), species
(1 cat, 2 dog) and breed within the species. Labels are the class, 0-based. Training uses trainval (3680 images),
evaluation test (3669): the official split and the usual transfer protocol. Class names are torchvision's: the
image id's breed part, title-cased (``american_bulldog_12`` -> "American Bulldog").
"""

from __future__ import annotations

from pathlib import Path

from torchvision import datasets

from mae.data.decoding import ImageLoader
from mae.data.transfer_datasets.base import ListedImages, TransferDataModule
from mae.data.transfer_datasets.files import check_labels, labelled_rows, names_by_label

FOLDER = "oxford-iiit-pet"
LIST_FIELDS = 4  # image id, class, species, breed id


def breed_name(image_id: str) -> str:
    """torchvision's class name for an image id: "American Bulldog" for ``american_bulldog_12``."""
    return " ".join(part.title() for part in image_id.rsplit("_", 1)[0].split("_"))


class OxfordPetsDataModule(TransferDataModule):
    """Oxford-IIIT Pets (37 breeds of cats and dogs); see :mod:`mae.data.transfer_datasets.oxford_pets`.

    Args: those of :class:`~mae.data.transfer_datasets.base.TransferDataModule`; ``root`` holds ``oxford-iiit-pet/``
    (torchvision's download target).
    """

    dataset_name = "Oxford-IIIT Pets"
    release_classes = 37
    eval_split = "test"
    layout = f"{FOLDER}/{{images/*.jpg,annotations/trainval.txt,annotations/test.txt}}"

    @property
    def base(self) -> Path:
        return self.root / FOLDER

    def list_file(self, split: str) -> Path:
        return self.base / "annotations" / f"{split}.txt"

    def required_paths(self) -> list[Path]:
        return [self.base / "images", self.list_file("trainval"), self.list_file("test")]

    def read_classes(self) -> list[str]:
        path = self.list_file("trainval")
        rows = labelled_rows(path, LIST_FIELDS, label_offset=1)
        return names_by_label(
            path, [(number, breed_name(image_id), label) for number, image_id, label in rows], label_offset=1
        )

    def read_split(self, split: str, loader: ImageLoader) -> ListedImages:
        path = self.list_file(split)
        rows = labelled_rows(path, LIST_FIELDS, label_offset=1)
        check_labels(path, rows, self.num_classes, label_offset=1)
        return ListedImages(
            [f"{self.base}/images/{image_id}.jpg" for _, image_id, _ in rows], [label for _, _, label in rows], loader
        )

    def read_splits(self, loader: ImageLoader) -> tuple[ListedImages, ListedImages]:
        return self.read_split("trainval", loader), self.read_split("test", loader)

    def fetch(self) -> None:
        datasets.OxfordIIITPet(str(self.root), download=True)
