"""The downstream jobs, fine-tuning and linear probing: a pretrained encoder in a classification module, fitted,
then evaluated on the data module's evaluation split (top-1/top-5 into ``results.json``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from mae.callbacks.run_config import RunConfigInCheckpoint
from mae.checkpoint import CheckpointError, check_resume_checkpoint, export_timm_state_dict, load_pretrained
from mae.config import validate_schedule
from mae.evaluation.classifier import evaluate_classifier, summary_line
from mae.runs import (
    SETUP_ERRORS,
    build_trainer,
    fit,
    instantiate_node,
    merge_results,
    one_line_setup_error,
    output_dir,
    point_latest_at,
    write_config,
)
from mae.training import FinetuneModule

log = logging.getLogger(__name__)

TIMM_EXPORT = "timm_classifier.pth"
"""Fine-tuning runs also write the classifier as a timm state_dict (head included) under this name."""


@dataclass
class DownstreamRun:
    datamodule: L.LightningDataModule
    module: L.LightningModule
    trainer: L.Trainer


def initial_encoder(cfg: DictConfig):
    """The model group's MAE with the weights of ``cfg.pretrained`` (random initialisation when null)."""
    encoder = instantiate_node(cfg.model)
    if cfg.pretrained is None:
        log.info("pretrained=null: starting from a randomly initialised encoder")
        return encoder
    if not Path(cfg.pretrained).is_file():
        raise CheckpointError(f"pretrained checkpoint {cfg.pretrained} does not exist; run `make pretrain` first, set "
                              "pretrained=<file> (this project's .ckpt, a reference MAE .pth or a timm ViT state_dict), "
                              "or pretrained=null to start from random weights")
    load_pretrained(encoder, cfg.pretrained)
    return encoder


def build(cfg: DictConfig) -> DownstreamRun:
    """Instantiate data, encoder (with its pretrained weights), module and trainer; nothing is trained yet."""
    try:
        validate_schedule(cfg.schedule)
        datamodule = instantiate_node(cfg.data)
        module = instantiate_node(cfg.module, initial_encoder(cfg), num_classes=datamodule.num_classes)
        if cfg.ckpt_path is not None:
            check_resume_checkpoint(cfg.ckpt_path, module)
        trainer = build_trainer(cfg, [RunConfigInCheckpoint(cfg)])
    except SETUP_ERRORS as error:
        raise one_line_setup_error(error) from error
    return DownstreamRun(datamodule, module, trainer)


def downstream(cfg: DictConfig) -> dict:
    """Fine-tune or linear-probe as configured; returns what the run wrote to ``results.json``."""
    L.seed_everything(cfg.seed, workers=True)
    run = build(cfg)
    write_config(cfg, run.trainer)
    train_seconds = fit(cfg, run.trainer, run.module, run.datamodule)
    evaluation = evaluate_classifier(run.trainer, run.module, run.datamodule)
    results = merge_results(cfg, run.trainer, {
        "task": cfg.task_name,
        "pretrained": None if cfg.pretrained is None else str(cfg.pretrained),
        **evaluation,
        "epochs": run.trainer.current_epoch,
        "optimizer_steps": run.trainer.global_step,
        "effective_batch_size": run.module.effective_batch_size,
        "peak_lr": run.module.peak_lr,
        "train_seconds": round(train_seconds, 1),
    })
    if run.trainer.is_global_zero:
        if isinstance(run.module, FinetuneModule):
            export_timm_state_dict(run.module.model, output_dir(cfg) / TIMM_EXPORT)
        print(f"{cfg.task_name} ({'from ' + str(cfg.pretrained) if cfg.pretrained else 'random init'}): "
              f"{summary_line(results)}")
    point_latest_at(cfg, run.trainer)
    return results
