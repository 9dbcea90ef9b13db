"""The detection job (``task=detect``): an MAE encoder in ViTDet's Mask R-CNN, trained on a COCO-format data
group, scored (COCO box and mask AP) on the validation split and once on the test split, with a picture of true and
predicted instances."""

from __future__ import annotations

import logging

import lightning as L
import torch
from omegaconf import DictConfig

from mae.evaluation.detection import DetectionScores
from mae.evaluation.detection_grid import write_detection_grid
from mae.jobs.dense_run import dense_job
from mae.runs.torch_state import eval_mode

log = logging.getLogger(__name__)

PICTURE_FILE = "detection.png"
PICTURE_IMAGES = 8
PICTURE_SCORE_THRESHOLD = 0.5


def scores_record(scores: DetectionScores, prefix: str = "") -> dict:
    """``results.json`` keys of one split's scores (``prefix`` ``val_`` for the validation split)."""
    return scores.to_dict(prefix)


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def test_summary(results: dict) -> str:
    return f"box AP {number(results['box_ap'])}, mask AP {number(results['mask_ap'])} on the test split"


def summary(results: dict) -> str:
    return f"{test_summary(results)} (validation box AP {number(results['val_box_ap'])})"


def write_picture(module: L.LightningModule, datamodule: L.LightningDataModule, path) -> None:
    """True and predicted instances of the first validation images."""
    images, predictions, targets = [], [], []
    with eval_mode(module), torch.no_grad():
        for batch_images, batch_targets in datamodule.val_dataloader():
            outputs = module([image.to(module.device) for image in batch_images])
            for image, output, target in zip(batch_images, outputs, batch_targets):
                images.append(image)
                predictions.append({key: value.cpu() for key, value in output.items()})
                targets.append(target)
            if len(images) >= PICTURE_IMAGES:
                break
    n = PICTURE_IMAGES
    class_names = ["background", *datamodule.class_names]
    write_detection_grid(path, images[:n], predictions[:n], targets[:n], class_names, PICTURE_SCORE_THRESHOLD)


def detect(cfg: DictConfig) -> dict:
    """Train and score as configured; returns what the run wrote to ``results.json``."""
    origin = f"from {cfg.pretrained}" if cfg.pretrained else "from scratch"
    return dense_job(
        cfg,
        scores_record,
        {},
        "val_annotations",
        write_picture,
        PICTURE_FILE,
        lambda results: f"detect ({origin}): {summary(results)}",
    )
