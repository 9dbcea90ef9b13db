"""Store what rebuilds a downstream module in its checkpoints, so that eval.py needs only the file."""

from __future__ import annotations

from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

RUN_CONFIG_KEY = "mae_run_config"
"""Checkpoint entry holding the resolved ``model`` and ``module`` nodes and the task name."""


class RunConfigInCheckpoint(L.Callback):
    """Adds the run's resolved ``model`` (encoder architecture) and ``module`` config nodes to every checkpoint."""

    def __init__(self, cfg: DictConfig) -> None:
        self.run_config = {
            "task_name": cfg.task_name,
            "model": OmegaConf.to_container(cfg.model, resolve=True),
            "module": OmegaConf.to_container(cfg.module, resolve=True),
        }

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[RUN_CONFIG_KEY] = self.run_config
