"""The pre-training job: build everything from a composed config (failing early on bad input), then fit."""

from __future__ import annotations

import logging

import lightning as L
from omegaconf import DictConfig

from mae.callbacks.run_config import RunConfigInCheckpoint
from mae.jobs.harness import (
    TrainingRun,
    build_training_run,
    fit,
    last_checkpoint_digest,
    merge_results,
    point_latest_at,
    pretrained_record,
    training_record,
    write_config,
)
from mae.model_files.loading import load_mae_weights
from mae.models import MaskedAutoencoderViT
from mae.runs.config import instantiate_node

__all__ = ["build", "initial_model", "pretrain"]

log = logging.getLogger(__name__)


def initial_model(cfg: DictConfig) -> MaskedAutoencoderViT:
    """The model group's MAE: the paper's random initialisation, or (continued pre-training) encoder and decoder
    from ``cfg.pretrained``'s weights."""
    pretrained = cfg.get("pretrained")
    if pretrained is not None and cfg.get("ckpt_path") is not None:
        raise ValueError(
            f"pretrained={pretrained} and ckpt_path={cfg.ckpt_path} are both set: resuming (ckpt_path) "
            "restores a run's weights, optimizer and schedule, continued pre-training (pretrained) starts "
            "a new schedule from weights; give one of them"
        )
    model = instantiate_node(cfg.model)
    if pretrained is not None:
        loaded = load_mae_weights(model, pretrained, model_name=f"model={cfg.model._target_.rsplit('.', 1)[-1]}")
        log.info(
            "Continued pre-training from %s (%s)",
            pretrained,
            "encoder and decoder" if loaded.decoder else "encoder; the decoder starts from random weights",
        )
    return model


def build(cfg: DictConfig) -> TrainingRun:
    """Instantiate data, model, the task's module node, callbacks, loggers and trainer; nothing is trained yet."""
    return build_training_run(cfg, lambda: initial_model(cfg), extra_callbacks=[RunConfigInCheckpoint(cfg)])


def pretrain(cfg: DictConfig) -> dict:
    """Run MAE pre-training as configured; returns what the run wrote to ``results.json``."""
    L.seed_everything(cfg.seed, workers=True)
    run = build(cfg)
    write_config(cfg, run.trainer, run.datamodule)
    train_seconds = fit(cfg, run.trainer, run.module, run.datamodule)
    metrics = {key: float(value) for key, value in run.trainer.callback_metrics.items() if value.numel() == 1}
    results = merge_results(
        cfg,
        run.trainer,
        {
            **pretrained_record(cfg),
            "train_loss_last_epoch": metrics.get("train/loss_epoch"),
            "val_loss": metrics.get("val/loss"),
            "checkpoint_sha256": last_checkpoint_digest(run.trainer),
            **training_record(run, train_seconds),
        },
    )
    point_latest_at(cfg, run.trainer)
    return results
