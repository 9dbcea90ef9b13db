"""The pre-training job: build everything from a composed config (failing early on bad input), then fit."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
from omegaconf import DictConfig

from mae.checkpoint import check_resume_checkpoint
from mae.config import validate_schedule
from mae.runs import (
    SETUP_ERRORS,
    SetupError,
    build_trainer,
    fit,
    instantiate_node,
    merge_results,
    one_line_setup_error,
    point_latest_at,
    write_config,
)
from mae.training import MAEPretrainModule

__all__ = ["PretrainRun", "SetupError", "build", "pretrain"]


@dataclass
class PretrainRun:
    datamodule: L.LightningDataModule
    module: MAEPretrainModule
    trainer: L.Trainer


def build(cfg: DictConfig) -> PretrainRun:
    """Instantiate data, model, module, callbacks, loggers and trainer; nothing is trained or written yet."""
    try:
        validate_schedule(cfg.schedule)
        datamodule = instantiate_node(cfg.data)
        model = instantiate_node(cfg.model)
        schedule = cfg.schedule
        module = MAEPretrainModule(
            model, blr=schedule.blr, lr=schedule.lr, min_lr=schedule.min_lr, weight_decay=schedule.weight_decay,
            betas=tuple(schedule.betas), warmup_epochs=schedule.warmup_epochs, epochs=schedule.epochs,
            seed=cfg.seed, compile=cfg.compile, fused=cfg.fused_optimizer,
        )
        if cfg.ckpt_path is not None:
            check_resume_checkpoint(cfg.ckpt_path, module)
        trainer = build_trainer(cfg)
    except SETUP_ERRORS as error:
        raise one_line_setup_error(error) from error
    return PretrainRun(datamodule, module, trainer)


def pretrain(cfg: DictConfig) -> dict:
    """Run MAE pre-training as configured; returns what the run wrote to ``results.json``."""
    L.seed_everything(cfg.seed, workers=True)
    run = build(cfg)
    write_config(cfg, run.trainer)
    train_seconds = fit(cfg, run.trainer, run.module, run.datamodule)
    results = merge_results(cfg, run.trainer, {**_training_summary(run), "train_seconds": round(train_seconds, 1)})
    point_latest_at(cfg, run.trainer)
    return results


def _training_summary(run: PretrainRun) -> dict:
    metrics = {key: float(value) for key, value in run.trainer.callback_metrics.items() if value.numel() == 1}
    return {
        "train_loss_last_epoch": metrics.get("train/loss_epoch"),
        "val_loss": metrics.get("val/loss"),
        "epochs": run.trainer.current_epoch,
        "optimizer_steps": run.trainer.global_step,
        "effective_batch_size": run.module.effective_batch_size,
        "peak_lr": run.module.peak_lr,
    }
