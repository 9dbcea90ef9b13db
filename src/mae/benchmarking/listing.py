"""Files/s of what ``data=unlabeled`` does before a run starts: listing every image file below a folder
(:func:`~mae.data.file_listing.list_image_files`) and splitting off the held-out ones
(:func:`~mae.data.file_listing.split_held_out`).

The benchmark writes ``files`` empty files with image names (``.jpg``, ``.png``, ``.JPEG`` in turn), 1,000 per
folder and 100 folders per parent (``000/017/0017042.jpg``), plus one ``notes.txt`` per folder that must not be
listed, into a temporary directory; times each operation (median of ``repeats``), checks what it found, and removes
the folder. The folder has just been written, so its directory entries are in the kernel's cache: the first listing
of a folder on a cold or network file system takes longer.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from mae.data.file_listing import list_image_files, split_held_out

EXTENSIONS = (".jpg", ".png", ".JPEG")
FILES_PER_FOLDER = 1000
FOLDERS_PER_PARENT = 100
NOT_AN_IMAGE = "notes.txt"


def image_name(index: int) -> str:
    """The relative path of generated file ``index`` (zero-padded: sorted names are in index order)."""
    folder = index // FILES_PER_FOLDER
    return (
        f"{folder // FOLDERS_PER_PARENT:03d}/{folder % FOLDERS_PER_PARENT:03d}/"
        f"{index:07d}{EXTENSIONS[index % len(EXTENSIONS)]}"
    )


def write_tree(root: Path, files: int) -> int:
    """``files`` empty image files below ``root`` (see :func:`image_name`) and a text file per folder; returns
    the number of folders holding files."""
    flags, folders, directory = os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0, ""
    for index in range(files):
        name = image_name(index)
        if index % FILES_PER_FOLDER == 0:
            directory = os.path.join(root, name.rsplit("/", 1)[0])
            os.makedirs(directory)
            os.close(os.open(os.path.join(directory, NOT_AN_IMAGE), flags, 0o644))
            folders += 1
        os.close(os.open(os.path.join(directory, name.rsplit("/", 1)[1]), flags, 0o644))
    return folders


def filesystem_of(path: Path, mounts: Path = Path("/proc/mounts")) -> str | None:
    """The file system type of the mount holding ``path`` (None where ``/proc/mounts`` cannot tell)."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    resolved, best, kind = str(path.resolve()), "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, fields[2]
    return kind


def measure_listing(files: int, repeats: int = 3, val_fraction: float = 0.05, seed: int = 0) -> list[dict[str, Any]]:
    """Median seconds and files/s of listing and of splitting a generated folder of ``files`` image files, over
    ``repeats`` passes. Returns ``{operation, files, seconds, files_per_s, ...}`` dicts; a listing that misses or
    adds a file is a ``RuntimeError`` (its rate would mean nothing)."""
    if files < 1 or repeats < 1:
        raise ValueError(f"files={files} and repeats={repeats} must be at least 1")
    with tempfile.TemporaryDirectory(prefix="mae-bench-listing-") as folder:
        root = Path(folder) / "images"
        start = time.perf_counter()
        folders = write_tree(root, files)
        s_write = time.perf_counter() - start
        listing, splitting = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            listed = list_image_files(root)
            listing.append(time.perf_counter() - start)
            start = time.perf_counter()
            train, held = split_held_out(listed, val_fraction, seed)
            splitting.append(time.perf_counter() - start)
            if len(listed) != files or listed[0] != image_name(0) or listed[-1] != image_name(files - 1):
                raise RuntimeError(f"list_image_files found {len(listed)} of the {files} files written")
        filesystem = filesystem_of(root)
        start = time.perf_counter()
    s_remove = time.perf_counter() - start
    common = {"files": files, "repeats": repeats, "filesystem": filesystem}
    seconds = statistics.median(listing)
    split_seconds = statistics.median(splitting)
    return [
        {
            "operation": "list_image_files",
            "seconds": seconds,
            "files_per_s": files / seconds,
            **common,
            "folders": folders,
            "files_per_folder": FILES_PER_FOLDER,
            "s_write": s_write,
            "s_remove": s_remove,
        },
        {
            "operation": "split_held_out",
            "seconds": split_seconds,
            "files_per_s": files / split_seconds,
            **common,
            "val_fraction": val_fraction,
            "held_out": len(held),
            "training": len(train),
        },
    ]
