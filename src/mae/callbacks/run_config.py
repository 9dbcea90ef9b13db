"""Store what rebuilds a run's model in its checkpoints, so that eval.py, the reconstruction tools and the demo
need only the file: the resolved ``model`` and ``module`` nodes, the task, and the data's input format and
normalisation."""

from __future__ import annotations

from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from mae.model_files.stored_config import RUN_CONFIG_KEY

DATA_KEYS = ("img_size", "in_chans", "mean", "std")


class RunConfigInCheckpoint(L.Callback):
    """Adds the run's resolved ``model`` (architecture), ``module`` and data format nodes to every checkpoint.

    Read when a checkpoint is written, so that numbers measured after the config was composed (``mean: auto``,
    resolved into the config before training) are the ones stored.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def run_config(self) -> dict[str, Any]:
        data = self.cfg.get("data") or {}
        return {
            "task_name": self.cfg.task_name,
            "model": OmegaConf.to_container(self.cfg.model, resolve=True),
            "module": OmegaConf.to_container(self.cfg.module, resolve=True),
            "data": {
                key: OmegaConf.to_container(data[key], resolve=True) if OmegaConf.is_config(data[key]) else data[key]
                for key in DATA_KEYS
                if key in data
            },
        }

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[RUN_CONFIG_KEY] = self.run_config()
