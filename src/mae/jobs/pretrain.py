"""The pre-training job: build everything from a composed config (failing early on bad input), then fit."""

from __future__ import annotations

import lightning as L
from omegaconf import DictConfig

from mae.config import instantiate_node
from mae.jobs.harness import (
    TrainingRun,
    build_training_run,
    fit,
    merge_results,
    point_latest_at,
    training_record,
    write_config,
)

__all__ = ["build", "pretrain"]


def build(cfg: DictConfig) -> TrainingRun:
    """Instantiate data, model, the task's module node, callbacks, loggers and trainer; nothing is trained yet."""
    return build_training_run(cfg, lambda: instantiate_node(cfg.model))


def pretrain(cfg: DictConfig) -> dict:
    """Run MAE pre-training as configured; returns what the run wrote to ``results.json``."""
    L.seed_everything(cfg.seed, workers=True)
    run = build(cfg)
    write_config(cfg, run.trainer)
    train_seconds = fit(cfg, run.trainer, run.module, run.datamodule)
    metrics = {key: float(value) for key, value in run.trainer.callback_metrics.items() if value.numel() == 1}
    results = merge_results(cfg, run.trainer, {
        "train_loss_last_epoch": metrics.get("train/loss_epoch"),
        "val_loss": metrics.get("val/loss"),
        **training_record(run, train_seconds),
    })
    point_latest_at(cfg, run.trainer)
    return results
