"""What a data module's split holds, as items the shard writer encodes: an image file's path, or an in-memory uint8
image, with its label (-1 for a folder without labels) and its position in the split."""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset, Subset

from mae.data.base import InMemoryImages
from mae.data.transfer_datasets.base import ListedImages
from mae.data.unlabeled import NO_LABEL, UnlabeledImages

SourceItem = tuple[int, str | torch.Tensor, int]
"""``(index, image file path or (C, H, W) uint8 image, label)``."""


def raw_splits(module) -> dict[str, Dataset]:
    """The module's training and test splits as read from disk: unaugmented, undecoded where the dataset is files
    (for ``data=unlabeled``: the listed training files, and the held-out ones as ``val``). The training split
    leaves out the images ``val_size`` holds out, so a streamed run trains on what an in-memory one does."""
    module.setup()
    return {"train": module.splits.train_eval.dataset, "val": module.splits.test.dataset}


def split_items(dataset: Dataset) -> list[SourceItem]:
    """Every item of a split, in the split's order."""
    if isinstance(dataset, Subset):  # training images without the held-out ones
        items = split_items(dataset.dataset)
        return [(position, items[index][1], items[index][2]) for position, index in enumerate(dataset.indices)]
    if isinstance(dataset, InMemoryImages):
        return [(index, dataset.images[index], label) for index, label in enumerate(dataset.labels)]
    if isinstance(dataset, UnlabeledImages):
        return [(index, os.path.join(dataset.root, name), NO_LABEL) for index, name in enumerate(dataset.files)]
    if isinstance(dataset, ListedImages):
        return [(index, path, label) for index, (path, label) in enumerate(zip(dataset.paths, dataset.labels))]
    samples = getattr(dataset, "samples", None)  # torchvision's ImageFolder and its subclasses
    if samples is not None:
        return [(index, str(path), int(label)) for index, (path, label) in enumerate(samples)]
    raise TypeError(f"cannot write {type(dataset).__name__} as shards: expected image files or in-memory images")


def stored_format(dataset: Dataset, in_chans: int) -> tuple[int, int | None]:
    """(channels, side) of what the shards of ``dataset`` hold: in-memory images are stored as they are (one
    size); files keep their own sizes and decode to the data module's ``in_chans``."""
    if isinstance(dataset, InMemoryImages):
        return int(dataset.images.shape[1]), int(dataset.images.shape[-1])
    return in_chans, None
