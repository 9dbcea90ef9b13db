"""Fashion-MNIST from its original IDX files, held in memory as uint8 tensors.

Looked for, in order: the configured ``root`` (files directly in it, or torchvision's ``root/FashionMNIST/raw``
layout), then Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``). Each file
may be gzipped (``.gz``) or raw. Only with ``download=True`` and nothing found does torchvision fetch it.
"""

from __future__ import annotations

import gzip
import logging
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mae.data.base import ImageDataModule, InMemoryImages
from mae.data.errors import CorruptDataError, one_line

log = logging.getLogger(__name__)

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, H, W)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",
    "val_labels": "t10k-labels-idx1-ubyte",
}
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
APT_PACKAGE = "dataset-fashion-mnist"
NUM_CLASSES = 10
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


# -- IDX files -------------------------------------------------------------------------------------------------
def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:  # bad gzip header, truncated stream, bad CRC, I/O
        raise CorruptDataError(f"cannot read {path}: {one_line(error)}") from error


def read_idx(path: str | Path, magic: int) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (raw or gzipped) into a uint8 tensor shaped by its header.

    Strict: the magic number must be ``magic`` and the payload exactly as long as the header says; anything
    else raises :class:`CorruptDataError` naming the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise CorruptDataError(f"corrupt IDX file {path}: {len(data)} bytes, too short for a header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise CorruptDataError(f"corrupt IDX file {path}: magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptDataError(f"corrupt IDX file {path}: truncated header ({len(data)} of {header} bytes)")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    payload = math.prod(dims)
    if len(data) != header + payload:
        what = "truncated" if len(data) < header + payload else "trailing bytes"
        raise CorruptDataError(
            f"corrupt IDX file {path}: {what}: {len(data) - header} data bytes, header {dims} says {payload}"
        )
    # One copy into a writable buffer (torch warns on read-only ones); the whole training set is 47 MB.
    return torch.frombuffer(bytearray(memoryview(data)[header:]), dtype=torch.uint8).reshape(dims)


def load_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, H, W)`` uint8 and labels ``(N,)`` int64 of one split, checked against each other."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC).long()
    if len(images) != len(labels):
        raise CorruptDataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    largest = int(labels.max()) if len(labels) else 0
    if largest >= NUM_CLASSES:
        raise CorruptDataError(f"corrupt label file {labels_path}: label {largest} outside 0-{NUM_CLASSES - 1}")
    return images.unsqueeze(1), labels


# -- finding the files -----------------------------------------------------------------------------------------
def candidate_dirs(root: str | Path | None) -> list[Path]:
    """Directories searched, in order."""
    dirs = [Path(root), Path(root) / "FashionMNIST" / "raw"] if root is not None else []
    return dirs + list(SYSTEM_DIRS)


def files_in(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` (raw preferred over ``.gz``: no decompression), or None if any lacks."""
    found = {}
    for key, name in FILES.items():
        options = [directory / name, directory / f"{name}.gz"]
        path = next((p for p in options if p.is_file()), None)
        if path is None:
            return None
        found[key] = path
    return found


def locate(root: str | Path | None) -> tuple[dict[str, Path] | None, list[Path]]:
    """The files of the first complete candidate directory (None if none) and every directory searched."""
    searched = candidate_dirs(root)
    for directory in searched:
        files = files_in(directory)
        if files is not None:
            return files, searched
    return None, searched


def not_found_message(searched: Sequence[Path]) -> str:
    return (
        f"Fashion-MNIST not found: looked in {', '.join(map(str, searched))} for {', '.join(FILES.values())} "
        f"(raw or .gz); install Debian's {APT_PACKAGE} (apt-get install {APT_PACKAGE}), set data.root=..., "
        "or set data.download=true"
    )


# -- the data module -------------------------------------------------------------------------------------------
class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST (60000 train / 10000 test images, 10 classes) for MAE pre-training and kNN evaluation.

    Args:
        root: directory holding the IDX files (flat, or torchvision's ``FashionMNIST/raw``); searched before
            Debian's package directory, and the download target. None: Debian's package only.
        download: fetch with torchvision into ``root`` when the files are found nowhere.
        img_size: side of the served images; other than 28, images are resized (bicubic).
        in_chans: 1 (grayscale) or 3 (the gray channel repeated, for RGB models).
        batch_size, num_workers, pin_memory, persistent_workers: DataLoader settings (persistent workers
            only apply with ``num_workers > 0``).
        seed: seeds the per-epoch shuffling and the fixed subsets.
        crop_scale: RandomResizedCrop area range of the pre-training augmentation.
        hflip: random horizontal flips in the pre-training augmentation.
        mean, std: per-channel normalisation of the [0, 1] pixels.
        train_samples: pre-train on a fixed seeded subset of this many training images (None: all).
        knn_train_samples, knn_val_samples: caps of the kNN evaluation's train and val sets (None: all).
        rand_augment, random_erasing: fine-tuning augmentation (timm RandAugment policy, erasing probability);
            None and 0 give the paper's crop + flip.
    """

    num_classes = NUM_CLASSES
    classes = CLASSES
    eval_split = "test"  # the 10000 t10k images: Fashion-MNIST has no separate validation split

    def __init__(self, *, root: str | None, download: bool, **settings: Any) -> None:
        super().__init__(**settings)
        self.root = None if root is None else str(root)
        self.download = bool(download)
        # Fail before any work: a missing dataset is reported now, not after the model is built.
        self._files, searched = locate(self.root)
        if self._files is None:
            if not self.download:
                raise FileNotFoundError(not_found_message(searched))
            if self.root is None:
                raise ValueError("data.download=true needs data.root, the directory to download Fashion-MNIST into")

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node: the only place that may download.
        if self._files is None and self.download:
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(self.root, train=train, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        if self._files is None:
            self._files, searched = locate(self.root)
            if self._files is None:
                raise FileNotFoundError(not_found_message(searched))
        log.info("Fashion-MNIST: reading %s", self._files["train_images"].parent)
        train = InMemoryImages(*load_split(self._files["train_images"], self._files["train_labels"]), self.in_chans)
        val = InMemoryImages(*load_split(self._files["val_images"], self._files["val_labels"]), self.in_chans)
        # Resize ratio 1: at img_size=28 the eval transform only normalises; otherwise a plain bicubic resize.
        self.set_splits(train, val, *self.transforms(eval_resize_ratio=1.0))
