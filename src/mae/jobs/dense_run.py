"""What the dense tasks' jobs (segmentation, detection) share: build the run around the encoder, train, score the
validation split after training and the test split once at the end (or take the validation scores where the
validation split is the test split), write ``results.json`` and the task's picture."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
from omegaconf import DictConfig

from mae.callbacks.run_config import RunConfigInCheckpoint
from mae.jobs.downstream import initial_encoder
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


def train_and_score(cfg: DictConfig, run: TrainingRun) -> tuple[float, Any, Any]:
    """``(training seconds, validation scores, test scores)`` of a run whose module keeps each pass's scores in
    ``module.scores["val"]`` and ``["test"]`` (:class:`~mae.training.split_scores.ScoresPerSplit`). The validation
    split is scored after training unless training's last validation pass already scored the final weights."""
    write_config(cfg, run.trainer, run.datamodule)
    train_seconds = fit(cfg, run.trainer, run.module, run.datamodule)
    if run.module.scored_at_step.get("val") != run.trainer.global_step:  # else fit's last pass scored these weights
        run.trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    val = run.module.scores["val"]
    if run.datamodule.val_is_test:
        return train_seconds, val, val  # COCO's and ADE20K's protocol: their validation split is the test split
    run.trainer.test(run.module, datamodule=run.datamodule, verbose=False)  # once, at the end
    return train_seconds, val, run.module.scores["test"]


def dense_job(
    cfg: DictConfig,
    scores_record: Callable[[Any, str], dict],
    task_record: dict[str, Any],
    val_split_key: str,
    write_picture: Callable[[L.LightningModule, L.LightningDataModule, Any], None],
    picture_file: str,
    summary: Callable[[dict], str],
) -> dict:
    """Train and score a dense task as configured; returns what the run wrote to ``results.json``.

    Args:
        cfg: the composed config (``task=segment`` or ``task=detect``).
        scores_record: one split's scores as ``results.json`` keys, with a key prefix (``val_``).
        task_record: the task's own ``results.json`` entries.
        val_split_key: the data group's key naming the validation split (a folder or an annotation file).
        write_picture: draws predictions of validation images into a path.
        picture_file: the picture's file name in the run directory.
        summary: the line printed at the end, from the results.
    """
    L.seed_everything(cfg.seed, workers=True)
    run = build_training_run(
        cfg,
        lambda: initial_encoder(cfg),
        lambda datamodule: {"num_classes": datamodule.num_classes},
        [RunConfigInCheckpoint(cfg)],
    )
    train_seconds, val, test = train_and_score(cfg, run)
    results = merge_results(
        cfg,
        run.trainer,
        {
            "task": cfg.task_name,
            **pretrained_record(cfg),
            **task_record,
            **scores_record(test, ""),
            **scores_record(val, "val_"),
            "validation_split": "test" if run.datamodule.val_is_test else str(cfg.data[val_split_key]),
            "class_names": list(run.datamodule.class_names),
            **training_record(run, train_seconds),
        },
    )
    if run.trainer.is_global_zero:
        write_picture(run.module, run.datamodule, output_dir(cfg) / picture_file)
        print(summary(results))
    point_latest_at(cfg, run.trainer)
    return results
