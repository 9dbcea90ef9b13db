"""Write a data module's two splits as litdata shards (encoded image bytes + label), checking every image."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from functools import partial
from pathlib import Path

import torch
from torchvision.io import encode_png

from mae.data.decoding import ImageLoader
from mae.data.errors import CorruptDataError, one_line
from mae.data.shards.info import INFO_FILE, SPLITS, ShardInfo
from mae.data.shards.sources import SourceItem, raw_splits, split_items, stored_format
from mae.runs.optional import require

log = logging.getLogger(__name__)

_CHECKER = ImageLoader("RGB")  # decodes every file once at conversion, so a bad one is named now, not mid-training


def encode_item(item: SourceItem, report_file: str):
    """litdata's item function: the item's encoded bytes (a file's own bytes, PNG for an in-memory image); an
    unreadable file is appended to ``report_file`` and yields nothing."""
    index, image, label = item
    if isinstance(image, torch.Tensor):
        data = encode_png(image).numpy().tobytes()  # lossless; a uint8 image of the source, as stored there
    else:
        try:
            data = Path(image).read_bytes()
            _CHECKER.decode_bytes(data, image)
        except (OSError, CorruptDataError) as error:
            with open(report_file, "a") as report:  # one short line per append: whole, across workers
                report.write(f"{one_line(error)}\n")  # the reason names the file
            return
    yield {"index": index, "image": data, "label": int(label)}


def holds_shards(out_dir: Path) -> bool:
    return (out_dir / INFO_FILE).is_file() or any((out_dir / split / "index.json").is_file() for split in SPLITS)


def prepare_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out_dir``; with ``overwrite``, remove it when it holds shards (and only then)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file; choose a new directory for the shards")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"{out_dir} is not empty; choose a new directory, or overwrite=true to replace the shards it holds"
        )
    if not holds_shards(out_dir):
        raise FileExistsError(
            f"{out_dir} is not empty and holds no shards ({INFO_FILE} or <split>/index.json); "
            "overwrite=true only replaces shards: choose a new directory"
        )
    shutil.rmtree(out_dir)


def count_items(split_dir: Path) -> int:
    return sum(chunk["chunk_size"] for chunk in json.loads((split_dir / "index.json").read_text())["chunks"])


def module_normalization(module, channels: int) -> tuple[list[float] | None, list[float] | None]:
    """The module's per-channel mean and std (measured by ``setup()`` for ``mean: auto``), for ``mae_shards.json``;
    None when they do not have one value per stored channel."""
    mean, std = getattr(module, "mean", None), getattr(module, "std", None)
    if mean is None or std is None or len(mean) != channels:
        return None, None
    return [float(value) for value in mean], [float(value) for value in std]


def write_shards(
    module, out_dir: str | Path, *, chunk_bytes: str, num_workers: int, overwrite: bool, source: str
) -> ShardInfo:
    """Write ``module``'s training and evaluation splits under ``out_dir``/train and /val (items in the split's
    order, ``chunk_bytes`` per chunk, ``num_workers`` processes) and ``mae_shards.json``; return what it says.
    A module without labels (``has_labels`` False) gets no classes and label -1 on every item."""
    optimize = require("litdata", "streaming", "writing shards (python -m mae.data.shards)").optimize

    out = Path(out_dir)
    prepare_output_dir(out, overwrite)
    splits = raw_splits(module)
    items = {split: split_items(dataset) for split, dataset in splits.items()}
    channels, image_size = stored_format(splits["train"], module.in_chans)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "unreadable.txt"
        report.touch()
        for split in SPLITS:
            log.info("writing %d %s images to %s", len(items[split]), split, out / split)
            optimize(
                fn=partial(encode_item, report_file=str(report)),
                inputs=items[split],
                output_dir=str(out / split),
                chunk_bytes=chunk_bytes,
                num_workers=num_workers,
                keep_data_ordered=True,
                mode=None,
            )
        unreadable = sorted(line for line in report.read_text().splitlines() if line)
    labelled = bool(getattr(module, "has_labels", True))
    mean, std = module_normalization(module, channels)
    info = ShardInfo(
        classes=[str(name) for name in module.classes] if labelled else [],
        channels=channels,
        image_size=image_size,
        num_samples={split: count_items(out / split) for split in SPLITS},
        source=source,
        unreadable=unreadable,
        labelled=labelled,
        mean=mean,
        std=std,
    )
    info.write(out)
    return info
