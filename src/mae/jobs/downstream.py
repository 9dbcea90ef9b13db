"""The downstream jobs, fine-tuning and linear probing: a pretrained encoder in a classification module, fitted,
then evaluated on the data module's evaluation split (top-1/top-5 into ``results.json``)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from mae.callbacks.run_config import RunConfigInCheckpoint
from mae.evaluation.classifier import evaluate_classifier, summary_line
from mae.jobs.harness import (
    TrainingRun,
    build_training_run,
    fit,
    merge_results,
    output_dir,
    point_latest_at,
    pretrained_record,
    training_record,
    write_config,
)
from mae.model_files.checkpoint import CheckpointError, export_timm_state_dict
from mae.model_files.export import save_timm_classifier
from mae.model_files.loading import load_pretrained
from mae.runs.config import instantiate_node
from mae.runs.run_directory import TIMM_CLASSIFIER_FILE
from mae.training import FinetuneModule

log = logging.getLogger(__name__)


def initial_encoder(cfg: DictConfig):
    """The model group's MAE with the weights of ``cfg.pretrained`` (random initialisation when null)."""
    encoder = instantiate_node(cfg.model)
    if cfg.pretrained is None:
        log.info("pretrained=null: starting from a randomly initialised encoder")
        return encoder
    if not Path(cfg.pretrained).is_file():
        raise CheckpointError(
            f"pretrained checkpoint {cfg.pretrained} does not exist; run `make pretrain` first, set "
            "pretrained=<file> (this project's .ckpt, a reference MAE .pth or a timm ViT state_dict), "
            "or pretrained=null to start from random weights"
        )
    load_pretrained(encoder, cfg.pretrained)
    return encoder


def build(cfg: DictConfig) -> TrainingRun:
    """Instantiate data, encoder (with its pretrained weights), the task's module node and trainer; nothing is
    trained yet."""
    return build_training_run(
        cfg,
        lambda: initial_encoder(cfg),
        lambda datamodule: {"num_classes": classes(cfg, datamodule)},
        [RunConfigInCheckpoint(cfg)],
    )


def classes(cfg: DictConfig, datamodule: L.LightningDataModule) -> int:
    """The number of classes to train a head for; one line when the data has no labels."""
    if not getattr(datamodule, "has_labels", True):
        raise ValueError(
            f"task={cfg.task_name} trains a classifier and needs labels, but the data group "
            f"({type(datamodule).__name__}) has none; choose a labelled data group (data=image_folder "
            "data.root=<folder with one sub-folder per class>, ...)"
        )
    return datamodule.num_classes


def downstream(cfg: DictConfig) -> dict:
    """Fine-tune or linear-probe as configured; returns what the run wrote to ``results.json``."""
    L.seed_everything(cfg.seed, workers=True)
    run = build(cfg)
    write_config(cfg, run.trainer, run.datamodule)
    train_seconds = fit(cfg, run.trainer, run.module, run.datamodule)
    evaluation = evaluate_classifier(run.trainer, run.module, run.datamodule)
    results = merge_results(
        cfg,
        run.trainer,
        {
            "task": cfg.task_name,
            **pretrained_record(cfg),
            **evaluation,
            **training_record(run, train_seconds),
        },
    )
    if run.trainer.is_global_zero:
        if isinstance(run.module, FinetuneModule):
            export_timm_state_dict(run.module.model, output_dir(cfg) / TIMM_CLASSIFIER_FILE)
            save_timm_classifier(run.module.model, (output_dir(cfg) / TIMM_CLASSIFIER_FILE).with_suffix(".safetensors"))
        print(
            f"{cfg.task_name} ({'from ' + str(cfg.pretrained) if cfg.pretrained else 'random init'}): "
            f"{summary_line(results)}"
        )
    point_latest_at(cfg, run.trainer)
    return results
