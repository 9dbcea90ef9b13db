"""Write reconstruction grids of a few validation images during and after pre-training."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torchvision.utils import save_image

from mae.callbacks.tracking import log_image_file
from mae.evaluation.reconstruction_grid import DEFAULT_MIN_CELL_SIZE, make_grid_image, reconstruct, upscale_factor
from mae.models.masking import seeded_noise
from mae.runs.atomic_files import replaced_atomically
from mae.runs.run_directory import RESULTS_FILE, merge_json, read_json_object
from mae.runs.torch_state import preserved_rng


def check_every_n_epochs(every_n_epochs: int | None) -> int | None:
    """``None`` (only at the end of training) or a positive epoch interval."""
    if every_n_epochs is not None and every_n_epochs < 1:
        raise ValueError(f"every_n_epochs={every_n_epochs} must be at least 1, or null for the end of training only")
    return every_n_epochs


def epoch_is_due(every_n_epochs: int | None, epoch: int) -> bool:
    """Whether the 0-based ``epoch`` that just finished is one of every ``every_n_epochs``."""
    return every_n_epochs is not None and (epoch + 1) % every_n_epochs == 0


class ReconstructionGridCallback(L.Callback):
    """Save a grid of original / masked / reconstruction / pasted views (see :mod:`mae.evaluation.reconstruction_grid`).

    Always at the end of training as ``<default_root_dir>/<filename>.png``, and every ``every_n_epochs``
    epochs as ``<filename>_epoch{E:03d}.png`` (``E`` 0-based, like the checkpoints); the run's ``results.json``
    lists them under ``reconstruction_grids``. The masking noise is drawn
    once from ``seed``, so every grid of a run hides the same patches and grids compare across epochs. Every
    process reconstructs (see :meth:`write_grid`), global rank 0 alone writes; a grid is also logged, under
    ``reconstruction`` at the current step, to every logger that takes images (W&B, TensorBoard; see
    :func:`mae.callbacks.tracking.log_image_file`).

    The trainer's datamodule must provide ``mean``, ``std`` and ``sample_images(n)``.

    Args:
        num_images: images (grid rows).
        every_n_epochs: interval of the per-epoch grids; ``None`` for the final grid only.
        seed: seed of the masking noise.
        filename: file stem of the grids.
        min_cell_size: images whose shorter side is smaller are enlarged by a whole factor, nearest-neighbour, to at
            least this many pixels (0: their own size).
        labels: a header row naming the columns.
    """

    def __init__(
        self,
        num_images: int = 8,
        every_n_epochs: int | None = None,
        seed: int = 0,
        filename: str = "reconstruction",
        min_cell_size: int = DEFAULT_MIN_CELL_SIZE,
        labels: bool = True,
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images={num_images} must be at least 1")
        upscale_factor(1, 1, min_cell_size)  # a negative size fails here, not after the first epoch
        if not filename or Path(filename).name != filename:
            raise ValueError(f"filename={filename!r} must be a plain file stem (the grid goes to the run directory)")
        self.num_images = num_images
        self.every_n_epochs = check_every_n_epochs(every_n_epochs)
        self.seed = seed
        self.filename = filename
        self.min_cell_size = min_cell_size
        self.labels = labels
        self.last_path: Path | None = None
        self._logged_step: int | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if epoch_is_due(self.every_n_epochs, trainer.current_epoch):
            self.write_grid(trainer, pl_module, f"{self.filename}_epoch{trainer.current_epoch:03d}.png")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write_grid(trainer, pl_module, f"{self.filename}.png")

    def write_grid(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> Path | None:
        """Write one grid named ``name`` into the run directory and log it; returns its path on global rank 0 and
        None elsewhere. Every process runs the reconstruction (a sharded model's forward needs all of them, and
        the others' is cheap); only rank 0 writes and logs."""
        datamodule = trainer.datamodule
        model = pl_module.model
        with preserved_rng(pl_module.device):
            splits = getattr(datamodule, "splits", None)  # a small held-out folder may have fewer images
            count = self.num_images if splits is None else min(self.num_images, len(splits.val))
            imgs = datamodule.sample_images(count)
            noise = seeded_noise(imgs.shape[0], model.num_patches, self.seed)
            views = reconstruct(model, imgs, noise=noise)
        if not trainer.is_global_zero:
            return None
        path = Path(trainer.default_root_dir) / name
        with replaced_atomically(path) as tmp:
            grid = make_grid_image(
                views, datamodule.mean, datamodule.std, min_cell_size=self.min_cell_size, labels=self.labels
            )
            save_image(grid, tmp, format="png")
        if trainer.global_step != self._logged_step:  # the last epoch's grid and the final one show the same weights
            log_image_file(trainer.loggers, "reconstruction", path, trainer.global_step)
            self._logged_step = trainer.global_step
        results = Path(trainer.default_root_dir) / RESULTS_FILE
        grids = [grid for grid in read_json_object(results).get("reconstruction_grids", []) if grid != name]
        merge_json(results, {"reconstruction_grids": grids + [name]})
        self.last_path = path
        return path
