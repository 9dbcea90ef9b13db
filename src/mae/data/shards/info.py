"""``mae_shards.json``: what a shard directory holds, written by the converter and checked before training."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mae.atomic_files import write_text_atomically

INFO_FILE = "mae_shards.json"
SPLITS = ("train", "val")
FORMAT_VERSION = 1
REMOTE_PREFIXES = ("s3://", "gs://", "azure://", "hf://", "local:")


@dataclass(frozen=True)
class ShardInfo:
    """What the converter wrote: the class names (label ``i`` is ``classes[i]``), the channels every image decodes
    to, the side of every image when the source has one size (None: the files' own sizes, resized when served),
    the items per split, and the images it left out as unreadable."""

    classes: list[str]
    channels: int
    image_size: int | None
    num_samples: dict[str, int]
    source: str
    unreadable: list[str] = field(default_factory=list)
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
    return parse_shard_info(path, str(path), make)


def parse_shard_info(path: Path, shown_as: str, make: str) -> ShardInfo:
    """The info file at ``path`` (``shown_as`` in errors: where it came from); one line when it is not one, or is
    of another format version, ending with ``make`` (how to write the shards)."""
    try:
        info = ShardInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{shown_as} is not a shard info file ({error}); {make}") from error
    if info.format_version != FORMAT_VERSION:
        raise ValueError(f"{shown_as} has format_version={info.format_version}, this version reads "
                         f"{FORMAT_VERSION}; {make}")
    return info
