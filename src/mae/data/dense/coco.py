"""One split of an instance-detection dataset in COCO's instances layout, e.g. COCO 2017 as downloaded::

    <image_dir>/<file_name>          train2017/000000000009.jpg, ...: each image the JSON lists
    <annotation_file>                annotations/instances_train2017.json: one JSON object with
        "images":      [{"id", "file_name", "width", "height", ...}]
        "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h], "area", "iscrowd",
                         "segmentation": polygons [[x1, y1, x2, y2, ...], ...] or RLE {"counts", "size": [h, w]}}]
        "categories":  [{"id", "name", ...}]

Any dataset in this format reads with its own two paths (the Fashion-MNIST scenes write it too, see
:mod:`mae.data.dense.scenes`). A sample is ``(image, target)`` in torchvision's detection convention: boxes XYXY in
pixels, labels 1..K in the order of the categories sorted by id (0 is the detectors' background), one mask per
instance. Crowd regions (``iscrowd`` 1) are served, flagged: training drops them, the COCO protocol ignores them.
Images are decoded by libjpeg/libpng through torchvision (:mod:`mae.data.decoding`) and the annotations are read as
JSON: nothing a file holds is ever run. Masks are decoded with pycocotools (the ``detect`` extra).

Checks on construction, each one line naming the file and the bad value: a missing file or folder; a file that is not
a JSON object with the three lists, lists no image or no category, repeats an id, or has an entry with a missing or
ill-typed field; an annotation of an unknown image or category, whose box lies more than 1 pixel outside its image or
whose RLE does not cover its image; an image the folder does not hold. Boxes up to 1 pixel outside are clipped (COCO's
own boxes reach fractions of a pixel beyond their images). Annotations that cannot train a detector are skipped,
counted in :attr:`CocoInstances.skipped` and logged once, as torchvision's reference and Detectron2 do: a box under
1 pixel of width, height or area after clipping (COCO's files hold a few), and polygons with none of at least 3 points.
On every load: an image whose decoded size is not the one the JSON states (:class:`CorruptDataError`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mae.data.decoding import ImageLoader
from mae.data.dense.checks import load_evenly_spaced
from mae.data.errors import CorruptDataError, one_line
from mae.runs.optional import require

REQUIRED_KEYS = ("images", "annotations", "categories")
MAX_OUTSIDE = 1.0
"""How far (pixels) a box may reach beyond its image and still be clipped instead of refused."""
MIN_POLYGON = 6  # coordinates: 3 points; pycocotools cannot rasterize fewer

log = logging.getLogger(__name__)


def mask_api() -> Any:
    """``pycocotools.mask``, or one line naming the ``detect`` extra."""
    return require("pycocotools.mask", "detect", "COCO masks (data=coco, task=detect)")


# -- reading and checking the JSON ----------------------------------------------------------------------------
def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_annotation_file(path: Path, how_to_get: str) -> dict[str, list]:
    """The JSON object at ``path`` with its three lists; one line naming the file when it is not one."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} not found; {how_to_get}")
    try:
        content = json.loads(path.read_bytes())
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is not JSON ({one_line(error)}); a COCO instances file is one JSON object") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a JSON {type(content).__name__}; a COCO instances file is one JSON object")
    for key in REQUIRED_KEYS:
        if not isinstance(content.get(key), list):
            found = "no" if key not in content else f"a {type(content[key]).__name__} as"
            raise ValueError(
                f"{path} has {found} {key!r}; a COCO instances file has the lists {', '.join(REQUIRED_KEYS)}"
            )
    for key, kind in (("images", "image"), ("categories", "category")):
        if not content[key]:
            raise ValueError(f"{path} lists no {kind}: its {key!r} is empty (a split needs at least one)")
    return content


def field(entry: Any, key: str, valid: Callable[[Any], bool], expected: str, name: str, path: Path) -> Any:
    """``entry[key]``, or one line naming the file, the entry and what the value must be."""
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: {name} is a JSON {type(entry).__name__}, not an object")
    if key not in entry:
        raise ValueError(f"{path}: {name} has no {key!r}")
    value = entry[key]
    if not valid(value):
        raise ValueError(f"{path}: {name} has {key}={value!r:.80}, which must be {expected}")
    return value


def entry_ids(entries: list, kind: str, path: Path) -> list[int]:
    """The ``id`` of each entry of a list; one line naming the first entry without an integer id or repeating one."""
    ids = [
        field(entry, "id", is_int, "an integer", f"{kind}s[{position}]", path) for position, entry in enumerate(entries)
    ]
    repeated = [id_ for id_, count in Counter(ids).items() if count > 1]
    if repeated:
        raise ValueError(f"{path}: {kind} id {repeated[0]} appears more than once ({len(repeated)} repeated id(s))")
    return ids


def read_categories(entries: list, path: Path) -> list[tuple[int, str]]:
    """``(id, name)`` of each category, sorted by id."""
    ids = entry_ids(entries, "category", path)
    names = [
        field(entry, "name", lambda v: isinstance(v, str), "a string", f"category id {id_}", path)
        for id_, entry in zip(ids, entries)
    ]
    return sorted(zip(ids, names))


def read_images(entries: list, path: Path, image_dir: Path) -> list[dict[str, Any]]:
    """``{"id", "file_name", "width", "height"}`` of each image, sorted by id; one line naming the first image the
    folder does not hold (listed once: a stat per image is slow on network file systems)."""
    ids = entry_ids(entries, "image", path)
    present = {entry.name for entry in os.scandir(image_dir) if entry.is_file()}
    images = []
    for id_, entry in zip(ids, entries):
        name = f"image id {id_}"
        file_name = field(entry, "file_name", lambda v: isinstance(v, str), "a string", name, path)
        width, height = (
            field(entry, key, lambda v: is_int(v) and v > 0, "a positive integer", name, path)
            for key in ("width", "height")
        )
        if file_name not in present:
            raise ValueError(f"{path}: {name} has file_name={file_name!r}, which is not in {image_dir}")
        images.append({"id": id_, "file_name": file_name, "width": width, "height": height})
    return sorted(images, key=lambda image: image["id"])


def clipped_box(box: list[float], width: int, height: int, name: str, path: Path) -> list[float]:
    """COCO's ``[x, y, w, h]`` as ``[x0, y0, x1, y1]`` clipped to the image; one line naming a box with a negative
    side or reaching more than :data:`MAX_OUTSIDE` pixels beyond its ``width`` x ``height`` image."""
    x, y, w, h = box
    if w < 0 or h < 0:
        raise ValueError(f"{path}: {name} has bbox={box}, whose width and height must not be negative")
    if min(x, y) < -MAX_OUTSIDE or x + w > width + MAX_OUTSIDE or y + h > height + MAX_OUTSIDE:
        raise ValueError(
            f"{path}: {name} has bbox={box} ([x, y, w, h]), more than {MAX_OUTSIDE:g} pixel outside its "
            f"{width}x{height} image"
        )
    return [max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)]


def is_box(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(is_number(v) for v in value)


def usable_polygons(polygons: list, name: str, path: Path) -> list[list[float]]:
    """The polygons of at least 3 points; one line naming the annotation when one is not a list of coordinates."""
    for polygon in polygons:
        if not isinstance(polygon, list) or len(polygon) % 2 or not all(is_number(v) for v in polygon):
            raise ValueError(f"{path}: {name} has the polygon {polygon!r:.80}; a polygon is a list of x, y coordinates")
    return [polygon for polygon in polygons if len(polygon) >= MIN_POLYGON]


def check_rle(rle: dict, width: int, height: int, name: str, path: Path) -> None:
    """One line naming the annotation when its RLE is not ``{"counts", "size"}`` covering the whole image."""
    counts, size = rle.get("counts"), rle.get("size")
    if size != [height, width] or not isinstance(counts, (str, list)):
        raise ValueError(
            f"{path}: {name} has an RLE of size {size!r:.40} with {type(counts).__name__} counts; it must be "
            f"{{'counts': a string or integers, 'size': [{height}, {width}]}} (its image's [height, width])"
        )
    if isinstance(counts, list):
        if not all(is_int(count) and count >= 0 for count in counts):
            raise ValueError(f"{path}: {name} has RLE counts {counts!r:.80}; they must be non-negative integers")
        if sum(counts) != width * height:
            raise ValueError(
                f"{path}: {name} has RLE counts summing to {sum(counts)}; they must cover its {width}x{height} "
                f"image's {width * height} pixels"
            )


def read_annotation(entry: dict, image: dict[str, Any], label_of: dict[int, int], path: Path) -> dict[str, Any] | str:
    """The annotation as it is served (``box`` XYXY, ``label``, ``iscrowd``, ``area``, ``segmentation``), or why it
    is skipped (a key of :attr:`CocoInstances.skipped`)."""
    name = f"annotation id {entry['id']}"
    category = field(entry, "category_id", is_int, "an integer", name, path)
    if category not in label_of:
        raise ValueError(
            f"{path}: {name} has category_id={category}, not one of the {len(label_of)} category ids "
            f"({min(label_of)}-{max(label_of)})"
        )
    bbox = field(entry, "bbox", is_box, "4 finite numbers [x, y, w, h]", name, path)
    area = field(entry, "area", is_number, "a number", name, path)
    iscrowd = field(entry, "iscrowd", lambda v: is_int(v) and v in (0, 1), "0 or 1", name, path)
    segmentation = field(
        entry,
        "segmentation",
        lambda v: isinstance(v, (list, dict)),
        "polygons (a list) or an RLE (an object)",
        name,
        path,
    )
    width, height = image["width"], image["height"]
    box = clipped_box(bbox, width, height, name, path)
    if isinstance(segmentation, dict):
        check_rle(segmentation, width, height, name, path)
    else:
        segmentation = usable_polygons(segmentation, name, path)
        if not segmentation:
            return "no polygon of 3 points"
    box_width, box_height = box[2] - box[0], box[3] - box[1]
    if box_width <= 0 or box_height <= 0 or box_width * box_height < 1:
        return "box under 1 pixel"
    return {
        "box": box,
        "label": label_of[category],
        "iscrowd": int(iscrowd),
        "area": area,
        "segmentation": segmentation,
    }


def group_annotations(
    entries: list, images: list[dict[str, Any]], label_of: dict[int, int], path: Path
) -> tuple[list[list[dict[str, Any]]], Counter]:
    """Each image's served annotations (in the file's order) and the count of skipped ones by reason."""
    position_of = {image["id"]: position for position, image in enumerate(images)}
    ids = entry_ids(entries, "annotation", path)
    grouped: list[list[dict[str, Any]]] = [[] for _ in images]
    skipped: Counter = Counter()
    for id_, entry in zip(ids, entries):
        image_id = field(entry, "image_id", is_int, "an integer", f"annotation id {id_}", path)
        if image_id not in position_of:
            raise ValueError(f"{path}: annotation id {id_} has image_id={image_id}, which 'images' does not list")
        position = position_of[image_id]
        annotation = read_annotation(entry, images[position], label_of, path)
        if isinstance(annotation, str):
            skipped[annotation] += 1
        else:
            grouped[position].append(annotation)
    return grouped, skipped


# -- records kept per image -----------------------------------------------------------------------------------
def pack(records: Iterable[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The records as one byte buffer of JSON texts and their end offsets.

    Why not a list of dicts: DataLoader workers forked from the main process touch every Python object they read,
    which copies its memory page (reference counts), so that each worker slowly duplicates a dataset of a million
    small objects (COCO's training annotations). Two arrays are never copied."""
    texts = [json.dumps(record, separators=(",", ":")).encode() for record in records]
    offsets = np.cumsum([len(text) for text in texts], dtype=np.int64)
    return np.frombuffer(b"".join(texts), dtype=np.uint8), offsets


def unpack(buffer: np.ndarray, offsets: np.ndarray, index: int) -> dict[str, Any]:
    start = int(offsets[index - 1]) if index else 0
    return json.loads(buffer[start : int(offsets[index])].tobytes())


def decode_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """An annotation's polygons or RLE as a ``(height, width)`` uint8 mask."""
    coco_mask = mask_api()
    if isinstance(segmentation, list):  # polygons, each rasterized, their union
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:  # compressed RLE: pycocotools decodes its string counts directly
        rle = segmentation
    return coco_mask.decode(rle)


class CocoInstances(Dataset):
    """One split in COCO's instances layout: ``(image, target)`` pairs sorted by image id.

    ``image`` is ``(C, H, W)`` uint8. ``target`` follows torchvision's detection models: ``boxes`` ``(N, 4)``
    float32 XYXY in pixels, ``labels`` ``(N,)`` int64 in 1..K (:attr:`categories` sorted by id, 0 being the
    background), ``masks`` ``(N, H, W)`` uint8, ``iscrowd`` ``(N,)`` int64, ``area`` ``(N,)`` float32 (the file's
    ``area``: the COCO protocol's size ranges), ``image_id`` the file's image id.

    Args:
        image_dir: the folder of the images (``train2017/``).
        annotation_file: the JSON file (``annotations/instances_train2017.json``).
        in_chans: 1 (grey, an RGB file converted as PIL's "L") or 3 (RGB, a grey file repeated).
        how_to_get: how to get the data, the end of the error for a missing file or folder.
    """

    def __init__(self, image_dir: str | Path, annotation_file: str | Path, in_chans: int, how_to_get: str) -> None:
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans={in_chans!r} must be 1 (grey) or 3 (RGB)")
        mask_api()  # a missing extra stops here, before any training
        self.image_dir, self.annotation_file = Path(image_dir), Path(annotation_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.image_dir} not found; {how_to_get}")
        content = read_annotation_file(self.annotation_file, how_to_get)
        self.categories = read_categories(content["categories"], self.annotation_file)
        self.class_names = [name for _, name in self.categories]
        self.num_classes = len(self.categories)
        label_of = {id_: label for label, (id_, _) in enumerate(self.categories, start=1)}
        images = read_images(content["images"], self.annotation_file, self.image_dir)
        grouped, skipped = group_annotations(content["annotations"], images, label_of, self.annotation_file)
        self.image_ids = [image["id"] for image in images]
        # Training drops images without a non-crowd instance (Detectron2's filter_empty_annotations).
        self.has_instances = np.array([any(not a["iscrowd"] for a in group) for group in grouped], dtype=bool)
        self.skipped = dict(skipped)
        if skipped:
            log.info("%s: skipped %s", self.annotation_file, ", ".join(f"{n} ({why})" for why, n in skipped.items()))
        self._buffer, self._offsets = pack({**image, "annotations": group} for image, group in zip(images, grouped))
        self.loader = ImageLoader.for_channels(in_chans, "torchvision", "error", 0.0)

    def __len__(self) -> int:
        return len(self._offsets)

    def indices_with_instances(self) -> list[int]:
        """The indices of the images with at least one non-crowd annotation (the ones training uses)."""
        return np.flatnonzero(self.has_instances).tolist()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = unpack(self._buffer, self._offsets, index)
        width, height, annotations = record["width"], record["height"], record["annotations"]
        path = self.image_dir / record["file_name"]
        image = self.loader(str(path))
        if tuple(image.shape[-2:]) != (height, width):
            raise CorruptDataError(
                f"image {path} is {image.shape[-1]}x{image.shape[-2]} pixels but {self.annotation_file} says "
                f"{width}x{height}"
            )
        masks = [torch.from_numpy(decode_mask(a["segmentation"], height, width)) for a in annotations]
        target = {
            "boxes": torch.tensor([a["box"] for a in annotations], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([a["label"] for a in annotations], dtype=torch.int64),
            "masks": torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.uint8),
            "iscrowd": torch.tensor([a["iscrowd"] for a in annotations], dtype=torch.int64),
            "area": torch.tensor([a["area"] for a in annotations], dtype=torch.float32),
            "image_id": record["id"],
        }
        return image, target

    def check(self, samples: int) -> None:
        """Load ``samples`` images evenly spaced over the split (:func:`~mae.data.dense.checks.load_evenly_spaced`)."""
        load_evenly_spaced(self, samples)
