"""Lightning checkpoints written once, atomically, on local disks.

Lightning's own writer serialises the whole checkpoint in memory, then has fsspec stage it in the system's
temporary folder and move it over: ``/tmp`` must hold a copy of every checkpoint (several GB for ViT-H with
optimizer state), and when it is another file system the move is a copy a killed job can leave truncated. Here
``torch.save`` writes straight into an open file beside the target, which is ``fsync``ed and renamed: one write,
no staging, and the previous checkpoint stays whole until the new one is complete.

A full disk, an exceeded quota or a read-only file system is a
:class:`~mae.runs.atomic_files.StorageFullError` naming the file and its folder; the partial file is removed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mae.runs.atomic_files import StorageFullError, fsync_directory, is_storage_full, replaced_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local files are written once and appear whole or not at all (remote URLs
    are left to fsspec)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if "://" in str(path) or storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)  # Lightning's handling of both
        path = Path(path)
        try:
            with replaced_atomically(path) as tmp, open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            fsync_directory(path.parent)
        except OSError as error:
            if is_storage_full(error):
                raise StorageFullError(path, error) from error
            raise
