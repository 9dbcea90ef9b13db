"""Send what Lightning does not log by itself to every configured experiment logger, each the way it can: the run's
resolved config (W&B run config, CSV and TensorBoard ``hparams.yaml``, TensorBoard text) and image files (W&B media,
TensorBoard images; the CSV logger has no images, the PNG in the run directory serves instead)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from PIL import Image

CONFIG_TEXT_TAG = "config"
"""TensorBoard text tag of the resolved config (its TEXT tab)."""


def log_image_file(loggers: list[Logger], key: str, path: str | Path, step: int) -> None:
    """Log the image file ``path`` under ``key`` at ``step`` to every logger that takes images (W&B, TensorBoard)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            logger.experiment.add_image(key, pixels, global_step=step, dataformats="HWC")


class LogResolvedConfig(L.Callback):
    """Log the whole composed config, interpolations resolved, as every logger's hyperparameters.

    Lightning itself logs only the module's ``save_hyperparameters``; this adds data, model, schedule, trainer,
    callbacks, paths and the rest, so a W&B run (or a TensorBoard/CSV ``hparams.yaml``) can be filtered and compared by
    any config value (``model.mask_ratio``, ``schedule.blr``, ...). The config is resolved at construction, so a
    broken interpolation fails before training.

    Args:
        cfg: the composed config of the job.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
        self.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        self.logged = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # setup runs just before Lightning logs the module's hyperparameters and saves the loggers, so both sets end
        # up in each hparams.yaml (TensorBoard writes that file only at its first save). It runs for every stage
        # (eval.py only validates); once per run is enough.
        if self.logged or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_hyperparams(self.config)
            if isinstance(logger, TensorBoardLogger):
                # TensorBoard shows hyperparameters only next to metrics (its HParams tab); the text shows them all.
                logger.experiment.add_text(CONFIG_TEXT_TAG, _markdown_code_block(self.config_yaml), global_step=0)
        self.logged = True


def _markdown_code_block(text: str) -> str:
    """``text`` as a Markdown code block (TensorBoard renders text summaries as Markdown)."""
    return "\n".join("    " + line for line in text.splitlines())
