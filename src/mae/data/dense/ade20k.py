"""One split of a semantic-segmentation dataset in ADE20K's SceneParsing layout (ADEChallengeData2016), as
downloaded::

    <root>/images/<split>/<stem>.jpg        (or .png: the Fashion-MNIST scenes' lossless images)
    <root>/annotations/<split>/<stem>.png   uint8 label map: 0 "other" (ignored), 1..K the classes

Labels are served with ADE20K's "reduce zero label" convention (MMSegmentation's): 0 becomes the ignore index 255
and k becomes k - 1, so that the classes are 0..K-1. Files are decoded by libjpeg/libpng through torchvision
(:mod:`mae.data.decoding`), which reads pixels and never runs anything a file holds.

Checks, each one line naming the path: a missing split folder and an image without annotation or the reverse when
the split is listed (eagerly); a label map that is not single-channel 8-bit, whose size differs from its image's, or
with a value above K on every load (lazily), and on an evenly spaced sample of pairs when :meth:`check` is called
(the data module does, before training).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file

from mae.data.decoding import ImageLoader
from mae.data.dense.checks import load_evenly_spaced
from mae.data.errors import CorruptDataError, one_line

IGNORE_INDEX = 255
"""Label of pixels that count for nothing (ADE20K's "other", padding)."""
IMAGE_SUFFIXES = (".jpg", ".png")
ANNOTATION_SUFFIX = ".png"


def split_folders(root: str | Path, split: str, how_to_get: str) -> tuple[Path, Path]:
    """``(root/images/<split>, root/annotations/<split>)``; ``FileNotFoundError`` ending with ``how_to_get`` (how
    to get the data) when either is missing."""
    folders = Path(root) / "images" / split, Path(root) / "annotations" / split
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"split folder {folder} not found; {how_to_get}")
    return folders


def pair_files(images_dir: Path, annotations_dir: Path) -> list[tuple[Path, Path]]:
    """``(image, annotation)`` pairs of one split, sorted by name; one line naming a file without its partner."""
    images: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in images:
                raise ValueError(
                    f"{images_dir} holds two images named {path.stem}: {images[path.stem].name} and {path.name}"
                )
            images[path.stem] = path
    annotations = {path.stem: path for path in sorted(annotations_dir.glob(f"*{ANNOTATION_SUFFIX}"))}
    for missing, found, where in (
        (images.keys() - annotations.keys(), images, annotations_dir),
        (annotations.keys() - images.keys(), annotations, images_dir),
    ):
        if missing:
            first = found[min(missing)]
            partner = "annotation" if where == annotations_dir else "image"
            raise ValueError(
                f"{first} has no {partner} in {where} ({len(missing)} file(s) without one); every image needs "
                f"<stem>{ANNOTATION_SUFFIX} in annotations/ and every annotation an image <stem>.jpg or .png"
            )
    if not images:
        raise ValueError(f"{images_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [(images[stem], annotations[stem]) for stem in sorted(images)]


def read_label(path: Path, num_classes: int) -> torch.Tensor:
    """The label map at ``path`` with zero reduced: ``(H, W)`` int64, classes 0..num_classes-1 and 255 (ignored).

    Raises :class:`CorruptDataError` naming the file when it is not a single-channel 8-bit PNG or holds a value
    above ``num_classes``."""
    try:
        raw = decode_image(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
    except (RuntimeError, ValueError) as error:
        raise CorruptDataError(f"cannot decode label map {path}: {one_line(error)}") from error
    if raw.dtype != torch.uint8 or raw.shape[0] != 1:
        raise CorruptDataError(
            f"label map {path} has {raw.shape[0]} channel(s) of {raw.dtype}; it must be a single-channel 8-bit PNG"
        )
    raw = raw[0]
    largest = int(raw.max())
    if largest > num_classes:
        raise CorruptDataError(
            f"label map {path} holds value {largest}, outside 0-{num_classes} (0: ignored, 1-{num_classes}: the classes)"
        )
    label = raw.long() - 1
    label[raw == 0] = IGNORE_INDEX
    return label


class SegmentationFolder(Dataset):
    """One split in ADE20K's layout: ``(image (C, H, W) uint8, label (H, W) int64)`` pairs sorted by name.

    Args:
        root: the dataset's folder (``images/`` and ``annotations/`` in it).
        split: the split folder's name (``training``, ``validation``, ...).
        num_classes: K; annotation values 1..K are the classes, 0 is ignored.
        in_chans: 1 (grey, an RGB file converted as PIL's "L") or 3 (RGB, a grey file repeated).
        how_to_get: how to get the data, the end of the error for a missing split folder.
    """

    def __init__(self, root: str | Path, split: str, num_classes: int, in_chans: int, how_to_get: str) -> None:
        self.split, self.num_classes = split, num_classes
        self.pairs = pair_files(*split_folders(root, split, how_to_get))
        self.loader = ImageLoader.for_channels(in_chans, "torchvision", "error", 0.0)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.pairs[index]
        image = self.loader(str(image_path))
        label = read_label(label_path, self.num_classes)
        if tuple(image.shape[-2:]) != tuple(label.shape):
            raise CorruptDataError(
                f"label map {label_path} is {label.shape[1]}x{label.shape[0]} pixels but its image {image_path} is "
                f"{image.shape[-1]}x{image.shape[-2]}"
            )
        return image, label

    def check(self, samples: int) -> None:
        """Load ``samples`` pairs evenly spaced over the split (:func:`~mae.data.dense.checks.load_evenly_spaced`)."""
        load_evenly_spaced(self, samples)
