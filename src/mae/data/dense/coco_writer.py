"""Writing instance masks in COCO's instances layout (what :class:`~mae.data.dense.coco.CocoInstances` reads): the
Fashion-MNIST scenes (:mod:`mae.data.dense.scenes`) write ``annotations/instances_<split>.json`` with it.

Each instance is stored as COCO stores crowd regions, an uncompressed RLE::

    {"counts": [zeros, ones, zeros, ...], "size": [height, width]}

the lengths of the alternating runs of the mask read column by column (Fortran order), starting with a run of zeros
(of length 0 when the first pixel is set); its ``bbox`` is the pixels' extent ``[x, y, w, h]`` (``x`` the first
column, ``w`` = last - first + 1) and its ``area`` their count. The encoder is written here, not pycocotools', so
that writing needs nothing beyond the core install (reading the masks back needs the ``detect`` extra).

Writing is split so that a writer streaming its images keeps only their annotations: :func:`image_record` encodes
one image's masks as it is written, :func:`instances_file` assembles the records of a split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


def encode_rle(mask: torch.Tensor) -> dict[str, Any]:
    """COCO's uncompressed RLE of ``mask`` ``(H, W)`` (bool or 0/1): ``{"counts": [...], "size": [H, W]}``."""
    height, width = mask.shape
    flat = mask.bool().t().reshape(-1)  # column by column
    changes = torch.nonzero(flat[1:] != flat[:-1]).flatten() + 1
    ends = torch.cat([changes, torch.tensor([flat.numel()])])
    counts = torch.diff(ends, prepend=torch.tensor([0])).tolist()
    if flat.numel() and bool(flat[0]):
        counts.insert(0, 0)  # the counts start with zeros
    return {"counts": counts, "size": [height, width]}


def mask_bbox(mask: torch.Tensor) -> list[int]:
    """The pixel extent ``[x, y, w, h]`` of a non-empty ``mask`` ``(H, W)``."""
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    if not len(rows):
        raise ValueError("an empty mask has no bounding box")
    x, y = int(cols[0]), int(rows[0])
    return [x, y, int(cols[-1]) - x + 1, int(rows[-1]) - y + 1]


def mask_area(mask: torch.Tensor) -> int:
    """The number of pixels set in ``mask``."""
    return int(mask.bool().sum())


@dataclass(frozen=True)
class ImageRecord:
    """One image's part of an instances file, without ids (assigned when a split is assembled)."""

    file_name: str
    height: int
    width: int
    annotations: tuple[dict[str, Any], ...]
    """``category_id``, ``segmentation`` (RLE), ``area``, ``bbox`` and ``iscrowd`` (0) of each visible instance."""
    hidden: int
    """Instances with an empty mask (covered entirely by others): not annotated, COCO has no empty instances."""


def image_record(file_name: str, height: int, width: int, instances: Iterable[tuple[int, torch.Tensor]]) -> ImageRecord:
    """The record of an image of ``height`` x ``width`` pixels; ``instances`` are ``(category id, mask (H, W))``."""
    annotations, hidden = [], 0
    for category, mask in instances:
        if not mask.any():
            hidden += 1
            continue
        annotations.append(
            {
                "category_id": int(category),
                "segmentation": encode_rle(mask),
                "area": mask_area(mask),
                "bbox": mask_bbox(mask),
                "iscrowd": 0,
            }
        )
    return ImageRecord(file_name, height, width, tuple(annotations), hidden)


def categories(names: Sequence[str], supercategory: str) -> list[dict[str, Any]]:
    """COCO categories with ids 1..len(names) (0 is left to the detectors' background)."""
    return [{"id": id_, "name": name, "supercategory": supercategory} for id_, name in enumerate(names, start=1)]


def instances_file(
    records: Sequence[ImageRecord], category_list: list[dict[str, Any]], info: dict[str, Any]
) -> dict[str, Any]:
    """A split's COCO instances file: image ``k`` (0-based) has id ``k + 1``, annotations are numbered from 1 in
    order."""
    images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": record.file_name, "width": record.width, "height": record.height})
        for annotation in record.annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
    return {"info": info, "images": images, "annotations": annotations, "categories": category_list}
