"""Semantic segmentation scores as the benchmarks compute them (MMSegmentation's ``IoUMetric``, the ADE20K
protocol): one confusion matrix summed over every pixel of the split, then per-class IoU and accuracy, averaged
over the classes that occur (in the labels or the predictions) — not an average of per-image scores."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torchmetrics import Metric

from mae.data.dense import IGNORE_INDEX  # label value no score counts (ADE20K's "other", crop padding)


def confusion_matrix(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Pixel counts ``(K, K)``, rows the true class and columns the predicted one.

    Args:
        predictions: predicted classes, any shape, integer values in ``[0, K)``.
        labels: true classes, the same shape; ``ignore_index`` pixels are left out.
        num_classes: ``K``.
        ignore_index: label value to leave out.

    Returns:
        int64 counts ``(K, K)``.
    """
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions of shape {tuple(predictions.shape)} and labels of {tuple(labels.shape)} differ")
    keep = labels != ignore_index
    truth, guess = labels[keep].long(), predictions[keep].long()
    if truth.numel() and (truth.min() < 0 or truth.max() >= num_classes):
        bad = truth[(truth < 0) | (truth >= num_classes)][0].item()
        raise ValueError(f"label value {bad} is outside the classes 0..{num_classes - 1} (and ignore {ignore_index})")
    counts = torch.bincount(truth * num_classes + guess, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


@dataclass  # not frozen: torchmetrics' compute() rebuilds returned dataclasses field by field
class SegmentationScores:
    """Scores of one split, in percent as MMSegmentation prints them.

    Attributes:
        miou: mean IoU over the classes present in the labels or the predictions (``mIoU``).
        pixel_accuracy: correct pixels over labelled pixels (``aAcc``).
        mean_accuracy: mean over present classes of each class's pixel recall (``mAcc``).
        per_class_iou: each class's IoU, ``None`` where the class is in neither labels nor predictions.
        num_pixels: labelled pixels counted.
    """

    miou: float
    pixel_accuracy: float
    mean_accuracy: float
    per_class_iou: list[float | None]
    num_pixels: int

    def as_dict(self) -> dict:
        return asdict(self)


def scores_from_confusion(confusion: torch.Tensor) -> SegmentationScores:
    """The scores of a summed confusion matrix (see :func:`confusion_matrix`)."""
    confusion = confusion.double()
    hits = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - hits
    support = confusion.sum(1)
    total = confusion.sum()
    present = union > 0  # MMSegmentation's nanmean skips classes whose IoU is 0/0
    iou = hits / union.clamp(min=1)
    seen = support > 0  # accuracy is 0/0 for classes absent from the labels
    return SegmentationScores(
        miou=100 * iou[present].mean().item() if present.any() else 0.0,
        pixel_accuracy=100 * (hits.sum() / total).item() if total > 0 else 0.0,
        mean_accuracy=100 * (hits[seen] / support[seen]).mean().item() if seen.any() else 0.0,
        per_class_iou=[100 * value if keep else None for value, keep in zip(iou.tolist(), present.tolist())],
        num_pixels=int(total.item()),
    )


class SegmentationMetric(Metric):
    """The split's confusion matrix summed over batches (and over devices: a sum state), read out as
    :class:`SegmentationScores` by :meth:`compute`."""

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        self.confusion += confusion_matrix(predictions, labels, self.num_classes, self.ignore_index)

    def compute(self) -> SegmentationScores:
        return scores_from_confusion(self.confusion)
