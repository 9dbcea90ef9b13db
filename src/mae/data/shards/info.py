"""``mae_shards.json``: what a shard directory holds, written by the converter and checked before training."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mae.runs.atomic_files import write_text_atomically

INFO_FILE = "mae_shards.json"
SPLITS = ("train", "val")
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""1: labelled shards only, no statistics (``labelled``, ``mean`` and ``std`` came with 2, for unlabeled folders)."""
REMOTE_PREFIXES = ("s3://", "gs://", "azure://", "hf://", "local:")
ITEM_FORMATS = ("int", "bytes")
"""The litdata serializers of the converter's items; others (``pickle``, ``graph``, ...) can run code when read."""


@dataclass(frozen=True)
class ShardInfo:
    """What the converter wrote: the class names (label ``i`` is ``classes[i]``), the channels every image decodes
    to, the side of every image when the source has one size (None: the files' own sizes, resized when served),
    the items per split, and the images it left out as unreadable.

    ``labelled`` is False for a folder without labels (``data=unlabeled``): no classes, every item's label -1, the
    held-out files in ``val``. ``mean`` and ``std`` are the source's per-channel normalisation (measured there
    for ``mean: auto``), which ``mean: auto`` of a streaming group reads; None where the source's numbers do not
    fit the stored channels, and in format 1 files.
    """

    classes: list[str]
    channels: int
    image_size: int | None
    num_samples: dict[str, int]
    source: str
    unreadable: list[str] = field(default_factory=list)
    labelled: bool = True
    mean: list[float] | None = None
    std: list[float] | None = None
    format_version: int = FORMAT_VERSION

    def write(self, out_dir: Path) -> Path:
        return write_text_atomically(out_dir / INFO_FILE, json.dumps(asdict(self), indent=1) + "\n")


def is_remote(input_dir: str) -> bool:
    return input_dir.startswith(REMOTE_PREFIXES)


def read_shard_info(input_dir: str | Path) -> ShardInfo:
    """The ``mae_shards.json`` of a local shard directory; a missing directory, index or info file is one line that
    says how to make the shards."""
    root = Path(input_dir)
    make = f"write them with `python -m mae.data.shards <source> {root}`"
    if not root.is_dir():
        raise FileNotFoundError(f"shard directory {root} does not exist; {make}")
    missing = [str(root / split / "index.json") for split in SPLITS if not (root / split / "index.json").is_file()]
    if missing:
        raise FileNotFoundError(f"{root} holds no litdata index ({', '.join(missing)} missing); {make}")
    path = root / INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {root} was not written by this project's converter; {make}")
    for split in SPLITS:
        check_item_format(root / split / "index.json", str(root / split / "index.json"))
    return parse_shard_info(path, str(path), make)


def check_item_format(index_path: Path, shown_as: str) -> None:
    """Refuse a litdata index whose items are stored with a serializer other than :data:`ITEM_FORMATS`, before any
    item is read: litdata unpickles ``pickle`` items, so a shard directory one is handed could run code."""
    try:
        formats = json.loads(index_path.read_text())["config"]["data_format"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{shown_as} is not a litdata index ({type(error).__name__}: {error})") from error
    unsafe = sorted({str(name) for name in formats} - set(ITEM_FORMATS))
    if unsafe:
        raise ValueError(
            f"{shown_as} stores items as {', '.join(unsafe)}, which can run code when read; this "
            f"project reads only {' and '.join(ITEM_FORMATS)} items (what python -m mae.data.shards "
            "writes)"
        )


def parse_shard_info(path: Path, shown_as: str, make: str) -> ShardInfo:
    """The info file at ``path`` (``shown_as`` in errors: where it came from); one line when it is not one, or is
    of another format version, ending with ``make`` (how to write the shards)."""
    try:
        info = ShardInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{shown_as} is not a shard info file ({error}); {make}") from error
    if info.format_version not in READABLE_VERSIONS:
        raise ValueError(
            f"{shown_as} has format_version={info.format_version}, this version reads "
            f"{' and '.join(str(version) for version in READABLE_VERSIONS)}; {make}"
        )
    if not info.labelled and info.classes:
        raise ValueError(f"{shown_as} says labelled=false but lists {len(info.classes)} classes; {make}")
    return info
