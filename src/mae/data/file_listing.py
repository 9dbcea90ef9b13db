"""Finding the image files below a folder, splitting off held-out ones, and keeping a run's list.

Listing is one ``os.scandir`` pass per directory (file types come from the directory entries, so a file costs no
``stat`` call): a folder of a million files is listed in seconds (``make bench``). Symbolic links are followed;
each directory is entered once, by its device and inode, so a link back up the tree cannot loop. Names starting
with ``.`` (hidden files and folders) and files without an image extension are not listed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mae.runs.atomic_files import write_text_atomically

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
"""What is listed: torchvision decodes JPEG, PNG, WebP and GIF; the others go through PIL (see decoding.py)."""

LIST_FORMAT = 1


def list_image_files(root: str | Path, exclude: Iterable[str | Path] = ()) -> list[str]:
    """Sorted paths, relative to ``root`` and with ``/`` separators, of every image file below ``root``.

    Folders in ``exclude`` (e.g. a validation folder inside ``root``) are not entered.
    """
    root = Path(root)
    excluded = {_identity(Path(folder)) for folder in exclude if Path(folder).is_dir()}
    visited: set[tuple[int, int]] = set()
    found: list[str] = []
    pending = [(str(root), "")]
    while pending:
        directory, prefix = pending.pop()
        identity = _identity(Path(directory))
        if identity in visited or identity in excluded:
            continue  # a link to a folder already listed (or to one of its ancestors)
        visited.add(identity)
        try:
            entries = list(os.scandir(directory))
        except OSError:  # unreadable folder: nothing below it can be read either
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():  # follows links
                    pending.append((entry.path, f"{prefix}{entry.name}/"))
                elif entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
                    found.append(prefix + entry.name)
            except OSError:  # a link that points nowhere
                continue
    found.sort()
    return found


def _identity(directory: Path) -> tuple[int, int]:
    status = directory.stat()
    return status.st_dev, status.st_ino


def held_out(path: str, fraction: float, seed: int) -> bool:
    """Whether ``path`` belongs to the held-out ``fraction``: a seeded hash of the path alone decides, so adding or
    removing other files never moves a file from one side to the other."""
    digest = hashlib.blake2b(f"{seed}\0{path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def split_held_out(paths: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """``(training, held-out)`` paths, each in the order given."""
    train, held = [], []
    for path in paths:
        (held if held_out(path, fraction, seed) else train).append(path)
    return train, held


@dataclass(frozen=True)
class FileList:
    """The files a run trains and validates on: roots and paths relative to them."""

    train_root: str
    train: list[str]
    val_root: str
    val: list[str]

    def write(self, path: Path) -> None:
        """JSON (data only), written whole or not at all."""
        write_text_atomically(path, json.dumps({"format": LIST_FORMAT, **self.__dict__}))

    @classmethod
    def read(cls, path: Path) -> FileList:
        """A list :meth:`write` wrote; a one-line ``ValueError`` for anything else."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read the file list {path}: {error}") from error
        fields = ("train_root", "train", "val_root", "val")
        if not isinstance(data, dict) or data.get("format") != LIST_FORMAT or any(key not in data for key in fields):
            raise ValueError(
                f"{path} is not a file list of this project (format {LIST_FORMAT} with {', '.join(fields)})"
            )
        if not all(isinstance(item, str) for key in ("train", "val") for item in data[key]):
            raise ValueError(f"{path} holds entries that are not paths")
        return cls(str(data["train_root"]), list(data["train"]), str(data["val_root"]), list(data["val"]))

    def vanished(self) -> list[str]:
        """The listed files that no longer exist, as full paths."""
        return [
            path
            for root, names in ((self.train_root, self.train), (self.val_root, self.val))
            for path in (os.path.join(root, name) for name in names)
            if not os.path.exists(path)
        ]
