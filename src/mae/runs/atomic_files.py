"""Files appear whole or not at all: each is written under a temporary name in its own directory, then renamed
(``os.replace`` is atomic within a file system), so a run killed mid-write leaves the previous file intact."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mae.runs.failures import RunFailure

STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
"""Write errors that retrying cannot fix: no space left, a quota exceeded, a read-only file system."""


class StorageFullError(RunFailure):
    """A file could not be written because its file system is full, over quota or read-only; ``str()`` is one line
    naming the file (``path``; a folder when the failed write did not say which file), its folder and the
    reason."""

    def __init__(self, path: str | Path, error: OSError) -> None:
        path = Path(path)
        reason = os.strerror(error.errno) if error.errno is not None else str(error)
        where = f"in {path}" if path.is_dir() else f"{path.name} in {path.parent}"
        super().__init__(
            f"cannot write {where}: {reason.lower()} (free space there, or set hydra.run.dir=<folder> "
            "on another disk, and resume from the last checkpoint)"
        )
        self.path = path
        self.reason = reason


def is_storage_full(error: BaseException) -> bool:
    """Whether ``error`` is an ``OSError`` meaning the file system cannot take the write (see
    :data:`STORAGE_FULL_ERRNOS`)."""
    return isinstance(error, OSError) and error.errno in STORAGE_FULL_ERRNOS


@contextmanager
def replaced_atomically(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that infer the format from it still can);
    when the block ends without an exception it is renamed onto ``path``, otherwise removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a power loss right after it keeps the new name); a no-op where
    folders cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (network mounts) refuse fsync on a folder; the rename itself is done
    finally:
        os.close(fd)


def write_text_atomically(path: str | Path, text: str) -> Path:
    with replaced_atomically(path) as tmp:
        tmp.write_text(text)
    return Path(path)
