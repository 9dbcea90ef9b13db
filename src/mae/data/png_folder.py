"""``python -m mae.data.png_folder OUT [data=<group>] [--split train|val|test]``: a data group's images as PNG files in a
nested folder without labels (``OUT/000/000000.png``, a thousand per folder), the layout ``data=unlabeled`` reads.

It turns a labelled in-memory dataset (Fashion-MNIST by default, CIFAR) into "a folder of someone's images", so
that pre-training on a folder can be compared with pre-training on the same pixels held in memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset
from torchvision.io import encode_png

from mae.data.base import InMemoryImages
from mae.data.errors import one_line
from mae.runs.config import compose_in_repo, instantiate_node

FILES_PER_FOLDER = 1000


def image_path(out: Path, index: int, total: int) -> Path:
    """``out/<index // 1000>/<index>.png``, zero-padded so that names sort in index order."""
    digits = len(str(max(total - 1, 0)))
    folder_digits = len(str(max(total - 1, 0) // FILES_PER_FOLDER))
    return out / f"{index // FILES_PER_FOLDER:0{folder_digits}d}" / f"{index:0{digits}d}.png"


def write_png_folder(images: InMemoryImages, out: Path) -> int:
    """Write every image of ``images`` as a PNG below ``out`` (which must not hold anything yet); returns the count."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new one")
    total = len(images)
    for index in range(total):
        path = image_path(out, index, total)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(images.images[index]).numpy().tobytes())
    return total


def in_memory(dataset: Dataset) -> Dataset:
    """``dataset`` itself, or for a subset of in-memory images (training images without the held-out ones) the
    subset's images as in-memory images of their own."""
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, InMemoryImages):
        whole, indices = dataset.dataset, list(dataset.indices)
        return InMemoryImages(whole.images[indices], torch.tensor(whole.labels)[indices], whole.channels)
    return dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mae.data.png_folder", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="the folder to write (new or empty)")
    parser.add_argument(
        "data",
        nargs="?",
        default="data=fashion_mnist",
        help="an in-memory data group: data=fashion_mnist (default), data=cifar10 data.root=...",
    )
    parser.add_argument("overrides", nargs="*", help="more config overrides, e.g. data.root=...")
    parser.add_argument(
        "--split",
        choices=["train", "val", "test"],
        default="train",
        help="which split to write (train: without the images val_size holds out, val: those)",
    )
    args = parser.parse_args(argv)
    try:
        if not args.data.startswith("data="):
            raise ValueError(f"{args.data!r} is not data=<group>")
        module = instantiate_node(compose_in_repo("train", [args.data, *args.overrides]).data)
        module.setup()
        split = {"train": module.splits.train_eval, "val": module.splits.val, "test": module.splits.test}[args.split]
        images = in_memory(split.dataset)
        if not isinstance(images, InMemoryImages):
            raise ValueError(
                f"{args.data} is not held in memory ({type(images).__name__}); its files are already "
                "a folder data=unlabeled can read"
            )
        count = write_png_folder(images, args.out)
    except (FileNotFoundError, FileExistsError, ValueError, TypeError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    print(
        f"wrote {count} {args.split} images of {args.data} as PNG files below {args.out}; pre-train on them with "
        f"data=unlabeled data.root={args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
