"""The segmentation job (``task=segment``): an MAE encoder under a UperNet, trained on a segmentation data group,
scored (mIoU, pixel accuracy, per-class IoU) on the validation split and once on the test split, with a picture of
predicted and true label maps."""

from __future__ import annotations

import logging

import lightning as L
import torch
from omegaconf import DictConfig

from mae.evaluation.segmentation import SegmentationScores
from mae.evaluation.segmentation_grid import write_segmentation_grid
from mae.jobs.dense_run import dense_job
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
    frozen = bool(cfg.module.freeze_backbone)
    origin = f"from {cfg.pretrained}" if cfg.pretrained else "from scratch"
    return dense_job(
        cfg,
        scores_record,
        {"freeze_backbone": frozen},
        "val_split",
        write_picture,
        PICTURE_FILE,
        lambda results: f"segment ({origin}{', encoder frozen' if frozen else ''}): {summary(results)}",
    )
