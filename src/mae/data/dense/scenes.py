"""Fashion-MNIST scenes: a small, seeded semantic-segmentation dataset made of real Fashion-MNIST items.

``python -m mae.data.dense.scenes OUT [key=value ...]`` (``make scenes``; the keys are ``conf/scenes.yaml``'s) writes
it in ADE20K's SceneParsing layout, which :class:`~mae.data.dense.ade20k.SegmentationFolder` reads, and the same
images' instances in COCO's layout, which :class:`~mae.data.dense.coco.CocoInstances` reads::

    OUT/images/<split>/scene_00000001.png       the grey canvas, uint8
    OUT/annotations/<split>/scene_00000001.png  uint8 label map: class + 1 (0, ADE20K's ignored "other", unused)
    OUT/annotations/instances_<split>.json      COCO instances: each visible item, its class (category id 1-10) and
                                                its mask as an uncompressed RLE (:mod:`mae.data.dense.coco_writer`)
    OUT/scenes.json                             settings, counts, class names and where the items came from

with the splits ``training``, ``validation`` (ADE20K's two) and ``test``. A scene is a square grey canvas with a
smooth low-intensity background texture and a few Fashion-MNIST items pasted at random scales and positions, later
items over earlier ones. Class 0 is the background and Fashion-MNIST class c is class c + 1 (COCO's category c + 1;
an item that later ones hide entirely has no COCO annotation, ``scenes.json`` counts them as ``hidden_items``). The
items of training scenes are Fashion-MNIST training images, those of validation scenes the training images the
classification data group holds out (``data.val_size``, ``data.val_split_seed``: the images MAE pre-training never
sees), those of test scenes the t10k test images.

A :class:`Scene` keeps each item's class and visible pixels, so writers of other layouts (COCO instances) need
nothing but the scenes. Scene ``k`` of a split is a function of ``(seed, split, k)`` alone: the same seed writes
byte-identical files, and a scene can be made without the ones before it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.functional import interpolate
from torchvision.io import encode_png
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from mae.data import fashion_mnist
from mae.data.dense.coco_writer import ImageRecord, categories, image_record, instances_file
from mae.data.errors import COMMAND_LINE_ERRORS, check_int, one_line
from mae.data.loaders import mixed_seed
from mae.runs.config import compose_in_repo, instantiate_node

SPLITS = ("training", "validation", "test")
"""The split folders: ADE20K's two and a test split of the scenes' own."""
CLASSES = ("background", *fashion_mnist.CLASSES)
"""Class names by class index: 0 the background, c + 1 Fashion-MNIST class c."""
ITEM_SIDE = 28  # Fashion-MNIST's images are 28 x 28

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneSettings:
    """How scenes look; ``conf/scenes.yaml`` holds the values.

    Args:
        size: side of the square canvas in pixels.
        items: fewest and most items per scene (both included).
        item_scale: range of an item's scale relative to its 28 px (uniform).
        threshold: an item's pixels are those whose resized intensity is at least this (1-255).
        background: intensity range (0-255) of the background texture.
        background_cells: grid sizes of the texture's octaves of bilinearly upsampled uniform noise, coarse first;
            each octave weighs half the previous one.
        max_outside: fraction of an item's side that may lie outside the canvas on each edge.
    """

    size: int
    items: tuple[int, int]
    item_scale: tuple[float, float]
    threshold: int
    background: tuple[int, int]
    background_cells: tuple[int, ...]
    max_outside: float

    def __post_init__(self) -> None:
        check_int("size", self.size, 1)
        fewest, most = self.items
        if not 1 <= fewest <= most:
            raise ValueError(f"items={list(self.items)} must be two integers with 1 <= fewest <= most")
        low, high = self.item_scale
        if not 0 < low <= high or round(ITEM_SIDE * high) > self.size:
            raise ValueError(
                f"item_scale={list(self.item_scale)} must be two numbers with 0 < low <= high and "
                f"{ITEM_SIDE} x high <= size={self.size}"
            )
        if not 1 <= self.threshold <= 255:
            raise ValueError(f"threshold={self.threshold} must be in 1-255")
        if not 0 <= self.background[0] <= self.background[1] <= 255:
            raise ValueError(f"background={list(self.background)} must be two intensities with 0 <= low <= high <= 255")
        if not self.background_cells or min(self.background_cells) < 2:
            raise ValueError(
                f"background_cells={list(self.background_cells)} must be one or more grid sizes of at least 2"
            )
        if not 0.0 <= self.max_outside < 0.5:
            raise ValueError(f"max_outside={self.max_outside} must be in [0, 0.5)")

    @classmethod
    def from_config(cls, cfg: DictConfig) -> SceneSettings:
        """The settings of a composed ``conf/scenes.yaml``, each checked (one-line ``ValueError``)."""

        def pair(key: str, kind: type) -> tuple[Any, Any]:
            values = tuple(cfg[key])
            if len(values) != 2:
                raise ValueError(f"{key}={list(values)} must be two values")
            return kind(values[0]), kind(values[1])

        return cls(
            size=cfg.size,
            items=pair("items", int),
            item_scale=pair("item_scale", float),
            threshold=int(cfg.threshold),
            background=pair("background", int),
            background_cells=tuple(int(cells) for cells in cfg.background_cells),
            max_outside=float(cfg.max_outside),
        )


@dataclass(frozen=True)
class ItemSource:
    """The Fashion-MNIST images one split's items are drawn from."""

    name: str
    """Which Fashion-MNIST file: ``train`` or ``t10k``."""
    images: torch.Tensor
    """All of that file's images, ``(N, 1, 28, 28)`` uint8."""
    labels: torch.Tensor
    """Their classes, ``(N,)`` int64."""
    indices: torch.Tensor
    """The images of the file this split may use, ``(M,)`` int64 indices into ``images``."""


@dataclass(frozen=True)
class Instance:
    """One item of a scene."""

    category: int
    """Its class: Fashion-MNIST class + 1."""
    mask: torch.Tensor
    """Its visible pixels after later items covered it, ``(H, W)`` bool; empty when it is hidden entirely."""
    source: str
    """The Fashion-MNIST file it came from (``train`` or ``t10k``)."""
    source_index: int
    """Its index in that file."""


@dataclass(frozen=True)
class Scene:
    """One generated scene."""

    image: torch.Tensor
    """The canvas, ``(1, H, W)`` uint8."""
    label: torch.Tensor
    """The semantic label map, ``(H, W)`` uint8: 0 background, c + 1 Fashion-MNIST class c."""
    instances: tuple[Instance, ...]
    """Every pasted item, in pasting order."""


# -- generating -----------------------------------------------------------------------------------------------
def scene_generator(seed: int, split: str, index: int) -> torch.Generator:
    """The random source of scene ``index`` of ``split``: a function of the three alone."""
    return torch.Generator().manual_seed(mixed_seed(seed, SPLITS.index(split), index))


def background_texture(settings: SceneSettings, generator: torch.Generator) -> torch.Tensor:
    """A smooth texture spanning ``settings.background``, ``(size, size)`` uint8."""
    size = settings.size
    texture = torch.zeros(size, size)
    for octave, cells in enumerate(settings.background_cells):
        noise = torch.rand(1, 1, cells, cells, generator=generator)
        smooth = interpolate(noise, size=(size, size), mode="bilinear", align_corners=True)[0, 0]
        texture += 0.5**octave * smooth
    # Stretched to the whole range, so that every canvas has background as bright as the darkest item pixels.
    texture = (texture - texture.min()) / (texture.max() - texture.min()).clamp_min(1e-6)
    low, high = settings.background
    return (low + (high - low) * texture).round().to(torch.uint8)


def generate_scene(source: ItemSource, settings: SceneSettings, generator: torch.Generator) -> Scene:
    """One scene with items of ``source``, every random choice drawn from ``generator``."""
    size = settings.size
    image = background_texture(settings, generator)
    label = torch.zeros(size, size, dtype=torch.uint8)
    owner = torch.full((size, size), -1)  # which item each pixel shows
    count = int(torch.randint(settings.items[0], settings.items[1] + 1, (1,), generator=generator))
    picks = source.indices[torch.randint(len(source.indices), (count,), generator=generator)].tolist()
    low, high = settings.item_scale
    for number, index in enumerate(picks):
        u_scale, u_top, u_left = torch.rand(3, generator=generator).tolist()
        side = round(ITEM_SIDE * (low + (high - low) * u_scale))
        item = F.resize(source.images[index], [side, side], InterpolationMode.BILINEAR, antialias=True)[0]
        outside = int(settings.max_outside * side)
        positions = size - side + 2 * outside + 1
        top = min(int(u_top * positions), positions - 1) - outside
        left = min(int(u_left * positions), positions - 1) - outside
        rows, cols = slice(max(top, 0), min(top + side, size)), slice(max(left, 0), min(left + side, size))
        patch = item[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]
        shown = patch >= settings.threshold
        image[rows, cols][shown] = patch[shown]
        label[rows, cols][shown] = int(source.labels[index]) + 1
        owner[rows, cols][shown] = number
    instances = tuple(
        Instance(int(source.labels[index]) + 1, owner == number, source.name, index)
        for number, index in enumerate(picks)
    )
    return Scene(image.unsqueeze(0), label, instances)


def generate_split(source: ItemSource, settings: SceneSettings, seed: int, split: str, count: int) -> Iterator[Scene]:
    """Scenes ``0 .. count - 1`` of ``split``, made one at a time."""
    for index in range(count):
        yield generate_scene(source, settings, scene_generator(seed, split, index))


def item_sources(module: fashion_mnist.FashionMNISTDataModule) -> dict[str, ItemSource]:
    """Each split's items from the classification data module's own splits: training scenes from its training
    images, validation scenes from the images it holds out (never pre-trained on), test scenes from t10k."""
    if not isinstance(module, fashion_mnist.FashionMNISTDataModule):
        raise ValueError(f"scenes are made of Fashion-MNIST items: data=fashion_mnist, not {type(module).__name__}")
    module.prepare_data()
    module.setup()
    splits = module.splits
    if splits.val_is_test:
        raise ValueError(
            f"data.val_size={module.val_size} holds out no training images; validation scenes are made of them"
        )
    rest, kept_out = splits.train_eval.dataset, splits.val.dataset  # Subsets of the in-memory training images
    train, test = rest.dataset, splits.test.dataset

    def source(name: str, images: Any, indices: Sequence[int]) -> ItemSource:
        return ItemSource(name, images.images, torch.tensor(images.labels), torch.tensor(list(indices)))

    return {
        "training": source("train", train, rest.indices),
        "validation": source("train", train, kept_out.indices),
        "test": source("t10k", test, range(len(test))),
    }


# -- writing ADE20K's layout ----------------------------------------------------------------------------------
def scene_name(index: int) -> str:
    """File stem of scene ``index``, numbered from 1 as ADE20K's (``ADE_train_00000001``)."""
    return f"scene_{index + 1:08d}"


def check_new_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new one")


def write_scene(root: Path, split: str, index: int, scene: Scene) -> None:
    """Scene ``index`` as ``root/images/<split>/<name>.png`` and its ``root/annotations/<split>/<name>.png``."""
    name = f"{scene_name(index)}.png"
    (root / "images" / split / name).write_bytes(encode_png(scene.image).numpy().tobytes())
    # ADE20K's value 0 is "other" (ignored): class k is stored as k + 1.
    annotation = (scene.label + 1).unsqueeze(0)
    (root / "annotations" / split / name).write_bytes(encode_png(annotation).numpy().tobytes())


def coco_record(index: int, scene: Scene) -> ImageRecord:
    """Scene ``index``'s part of its split's COCO instances file: its items' masks RLE-encoded (kept instead of the
    masks until the split is written)."""
    height, width = scene.label.shape
    instances = ((instance.category, instance.mask) for instance in scene.instances)
    return image_record(f"{scene_name(index)}.png", height, width, instances)


def write_scenes(out: Path, splits: Mapping[str, Iterable[Scene]], info: dict[str, Any]) -> dict[str, int]:
    """Write each split's scenes, its COCO instances file and ``scenes.json`` (``info`` with the counts) into ``out``,
    which must be new or empty; returns the count per split. Written beside ``out`` first and renamed at the end, so
    that an interrupted run leaves no ``out`` that looks complete."""
    check_new_folder(out)
    partial = out.parent / f".{out.name}.{os.getpid()}.partial"
    partial.mkdir(parents=True)
    try:
        counts, hidden = {}, {}
        for split, scenes in splits.items():
            for folder in ("images", "annotations"):
                (partial / folder / split).mkdir(parents=True)
            records = []
            for index, scene in enumerate(scenes):
                write_scene(partial, split, index, scene)
                records.append(coco_record(index, scene))
            counts[split], hidden[split] = len(records), sum(record.hidden for record in records)
            coco_info = {"description": f"Fashion-MNIST scenes, {split} split (scenes.json holds the settings)"}
            coco = instances_file(records, categories(fashion_mnist.CLASSES, "fashion"), coco_info)
            (partial / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco, separators=(",", ":")))
            log.info("%s: %d scenes (%d items hidden entirely)", split, counts[split], hidden[split])
        summary = {**info, "counts": counts, "hidden_items": hidden}
        (partial / "scenes.json").write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(partial, out)  # also onto an empty folder
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return counts


def describe(cfg: DictConfig, settings: SceneSettings) -> dict[str, Any]:
    """What ``scenes.json`` says besides the counts."""
    held_out = f"data.val_size={cfg.data.val_size}, data.val_split_seed={cfg.data.val_split_seed}"
    return {
        "dataset": "Fashion-MNIST scenes",
        "layout": "ADE20K SceneParsing: images/<split>/<name>.png, annotations/<split>/<name>.png",
        "annotation_values": "class + 1 (0, ADE20K's ignored 'other', is unused)",
        "coco_layout": "COCO instances: annotations/instances_<split>.json over images/<split>/<name>.png",
        "coco_annotations": (
            "category id = class (1-10, no background); masks as uncompressed RLE; items covered entirely by later "
            "ones are left out, hidden_items counts them per split"
        ),
        "classes": list(CLASSES),
        "seed": cfg.seed,
        "settings": asdict(settings),
        "items": {
            "training": f"Fashion-MNIST train images not held out ({held_out})",
            "validation": f"Fashion-MNIST train images held out ({held_out}), never pre-trained on",
            "test": "Fashion-MNIST t10k images",
        },
    }


def scene_counts(cfg: DictConfig) -> dict[str, int]:
    counts = OmegaConf.to_container(cfg.counts)
    if not isinstance(counts, dict) or set(counts) != set(SPLITS):
        raise ValueError(f"counts={counts} must give a number of scenes for each of {', '.join(SPLITS)}")
    return {split: check_int(f"counts.{split}", counts[split], 0) for split in SPLITS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mae.data.dense.scenes",
        description=__doc__ + "\n\nSee conf/scenes.yaml for the keys.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", type=Path, help="the folder to write (new or empty)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. seed=1 counts.training=100 data.root=...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = compose_in_repo("scenes", args.overrides)
        settings = SceneSettings.from_config(cfg)
        seed, counts = check_int("seed", cfg.seed, 0), scene_counts(cfg)
        check_new_folder(args.out)  # before reading Fashion-MNIST
        sources = item_sources(instantiate_node(cfg.data))
        splits = {split: generate_split(sources[split], settings, seed, split, counts[split]) for split in SPLITS}
        write_scenes(args.out, splits, describe(cfg, settings))
    except COMMAND_LINE_ERRORS as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    print(f"wrote Fashion-MNIST scenes to {args.out}; conf/data/fashion_mnist_scenes.yaml reads them (its root)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
