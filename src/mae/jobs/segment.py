"""The segmentation job (``task=segment``): an MAE encoder under a UperNet, trained on a segmentation data group,
scored (mIoU, pixel accuracy, per-class IoU) on the validation split and once on the test split, with a picture of
predicted and true label maps."""

from __future__ import annotations

import logging

import lightning as L
import torch
from omegaconf import DictConfig

from mae.callbacks.run_config import RunConfigInCheckpoint
from mae.evaluation.segmentation import SegmentationScores
from mae.evaluation.segmentation_grid import write_segmentation_grid
from mae.jobs.downstream import initial_encoder
from mae.jobs.harness import (
    build_training_run,
    fit,
    merge_results,
    output_dir,
    point_latest_at,
    training_record,
    write_config,
)
from mae.runs.torch_state import eval_mode

log = logging.getLogger(__name__)

PICTURE_FILE = "segmentation.png"
PICTURE_IMAGES = 8


def scores_record(scores: SegmentationScores, prefix: str = "") -> dict:
    """``results.json`` keys of one split's scores (``prefix`` ``val_`` for the validation split)."""
    return {f"{prefix}{key}": value for key, value in scores.as_dict().items()}


def test_summary(results: dict) -> str:
    return f"mIoU {results['miou']:.2f}%, pixel accuracy {results['pixel_accuracy']:.2f}% on the test split"


def summary(results: dict) -> str:
    return f"{test_summary(results)} (validation mIoU {results['val_miou']:.2f}%)"


def write_picture(module: L.LightningModule, datamodule: L.LightningDataModule, path) -> None:
    """Predicted and true label maps of the first validation images."""
    images, truths, predictions = [], [], []
    mean = torch.tensor(datamodule.mean).view(-1, 1, 1)
    std = torch.tensor(datamodule.std).view(-1, 1, 1)
    with eval_mode(module), torch.no_grad():
        for batch_images, batch_labels in datamodule.val_dataloader():
            logits = module(batch_images.to(module.device))
            logits = torch.nn.functional.interpolate(
                logits, size=batch_labels.shape[-2:], mode="bilinear", align_corners=False
            )
            for image, label, prediction in zip(batch_images, batch_labels, logits.argmax(1).cpu()):
                images.append(image.cpu() * std + mean)
                truths.append(label)
                predictions.append(prediction)
            if len(images) >= PICTURE_IMAGES:
                break
    write_segmentation_grid(
        images[:PICTURE_IMAGES], truths[:PICTURE_IMAGES], predictions[:PICTURE_IMAGES], module.hparams.num_classes, path
    )


def segment(cfg: DictConfig) -> dict:
    """Train and score as configured; returns what the run wrote to ``results.json``."""
    L.seed_everything(cfg.seed, workers=True)
    run = build_training_run(
        cfg,
        lambda: initial_encoder(cfg),
        lambda datamodule: {"num_classes": datamodule.num_classes},
        [RunConfigInCheckpoint(cfg)],
    )
    write_config(cfg, run.trainer, run.datamodule)
    train_seconds = fit(cfg, run.trainer, run.module, run.datamodule)
    run.trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    val = run.module.scores["val"]
    if run.datamodule.val_is_test:
        test = val  # ADE20K's protocol: its validation split is the benchmark's test split
    else:
        run.trainer.test(run.module, datamodule=run.datamodule, verbose=False)  # once, at the end
        test = run.module.scores["test"]
    results = merge_results(
        cfg,
        run.trainer,
        {
            "task": cfg.task_name,
            "pretrained": None if cfg.pretrained is None else str(cfg.pretrained),
            "freeze_backbone": bool(cfg.module.freeze_backbone),
            **scores_record(test),
            **scores_record(val, "val_"),
            "validation_split": "test" if run.datamodule.val_is_test else str(cfg.data.val_split),
            "class_names": list(run.datamodule.class_names),
            **training_record(run, train_seconds),
        },
    )
    if run.trainer.is_global_zero:
        write_picture(run.module, run.datamodule, output_dir(cfg) / PICTURE_FILE)
        origin = f"from {cfg.pretrained}" if cfg.pretrained else "from scratch"
        print(f"segment ({origin}{', encoder frozen' if cfg.module.freeze_backbone else ''}): {summary(results)}")
    point_latest_at(cfg, run.trainer)
    return results
