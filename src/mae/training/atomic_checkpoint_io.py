"""Lightning checkpoints written atomically on local disks.

Lightning's own writer stages the file in the system's temporary directory and moves it over: when that is
another file system (a tmpfs ``/tmp``, a job's scratch disk) the move is a copy into the target, which a killed
job can leave truncated. Staging beside the target makes the final step a rename."""

from __future__ import annotations

from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mae.runs.atomic_files import replaced_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local files appear whole or not at all (remote URLs are left to fsspec)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with replaced_atomically(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
