"""COCO AP of boxes and instance masks by the official protocol (``pycocotools``' ``COCOeval``), computed through
torchmetrics' ``MeanAveragePrecision`` with its pycocotools backend: the well-kept implementation, which gathers
every image's detections and targets (over devices too: torchmetrics' own sync) and hands them to ``COCOeval``
once per split. Crowd regions (``iscrowd``) are neither true nor false positives, and the small/medium/large split
reads the targets' ``area`` (COCO's polygon area), as in the COCO tables.

pycocotools is the ``detect`` extra: :class:`DetectionMetric` checks for it when it is built, so importing this
module does not need it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

from mae.runs.optional import require

FEATURE = "COCO AP (task=detect)"
MASK_THRESHOLD = 0.5
"""Predicted mask probabilities above this are the instance (torchvision's COCO evaluation; Detectron2's too)."""
IOU_TYPES = {"box": "bbox", "mask": "segm"}
"""Score prefix -> torchmetrics' (and COCO's) name of the IoU type."""
COCO_STATS = {
    "ap": "map",
    "ap50": "map_50",
    "ap75": "map_75",
    "aps": "map_small",
    "apm": "map_medium",
    "apl": "map_large",
}
"""Score suffix -> torchmetrics' key (``COCOeval.stats[0:6]``)."""


@dataclass(frozen=True)
class DetectionScores:
    """A split's COCO AP in percent, as the COCO tables print it; ``None`` where COCO has nothing to score (-1 in
    ``COCOeval.stats``: no target of that size, or none at all).

    Attributes:
        box_ap: box AP averaged over IoU 0.50:0.05:0.95 (COCO's headline AP).
        box_ap50: box AP at IoU 0.5.
        box_ap75: box AP at IoU 0.75.
        box_aps: box AP of small objects (area under 32²).
        box_apm: box AP of medium objects (area 32² to 96²).
        box_apl: box AP of large objects (area over 96²).
        mask_ap: mask AP averaged over IoU 0.50:0.05:0.95.
        mask_ap50: mask AP at IoU 0.5.
        mask_ap75: mask AP at IoU 0.75.
        mask_aps: mask AP of small objects.
        mask_apm: mask AP of medium objects.
        mask_apl: mask AP of large objects.
    """

    box_ap: float | None
    box_ap50: float | None
    box_ap75: float | None
    box_aps: float | None
    box_apm: float | None
    box_apl: float | None
    mask_ap: float | None
    mask_ap50: float | None
    mask_ap75: float | None
    mask_aps: float | None
    mask_apm: float | None
    mask_apl: float | None

    def to_dict(self, prefix: str = "") -> dict[str, float | None]:
        """Flat ``{prefix + field: value}`` (``box_ap``, ``box_ap50``, ..., ``mask_apl``) for results.json."""
        return {f"{prefix}{name}": value for name, value in asdict(self).items()}


def percent(value: torch.Tensor | float) -> float | None:
    """A COCO statistic in percent, or ``None`` for COCO's -1 (nothing to score)."""
    value = float(value)
    return None if value < 0 else 100 * value


def scores_from_coco(result: Mapping[str, torch.Tensor]) -> DetectionScores:
    """The scores in ``MeanAveragePrecision(iou_type=("bbox", "segm")).compute()``'s dict (keys ``bbox_map``,
    ``segm_map_small``, ...)."""
    return DetectionScores(
        **{
            f"{kind}_{name}": percent(result[f"{iou_type}_{key}"])
            for kind, iou_type in IOU_TYPES.items()
            for name, key in COCO_STATS.items()
        }
    )


def binary_masks(masks: torch.Tensor) -> torch.Tensor:
    """Bool ``(M, H, W)`` instance masks of Mask R-CNN's ``(M, 1, H, W)`` probabilities (already bool or
    ``(M, H, W)`` passes), cut at :data:`MASK_THRESHOLD`."""
    masks = masks.detach()
    if masks.ndim == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"predicted masks of shape {tuple(masks.shape)}: expected (M, 1, H, W) or (M, H, W)")
        masks = masks[:, 0]
    return masks if masks.dtype == torch.bool else masks > MASK_THRESHOLD


def detection_input(prediction: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One image's Mask R-CNN output as ``MeanAveragePrecision`` reads it (XYXY boxes, bool masks)."""
    return {
        "boxes": prediction["boxes"].detach().float(),
        "labels": prediction["labels"].detach().long(),
        "scores": prediction["scores"].detach().float(),
        "masks": binary_masks(prediction["masks"]),
    }


def target_input(target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One image's ground truth as ``MeanAveragePrecision`` reads it, with ``iscrowd`` and ``area`` where given
    (without them torchmetrics counts no crowd and takes each mask's pixel count as its area)."""
    given = {
        "boxes": target["boxes"].float(),
        "labels": target["labels"].long(),
        "masks": target["masks"].bool(),
    }
    if "iscrowd" in target:
        given["iscrowd"] = target["iscrowd"].long()
    if "area" in target:
        given["area"] = target["area"].float()
    return given


class DetectionMetric(nn.Module):
    """COCO box and mask AP of a split: :meth:`update` per batch, :meth:`compute` once, :meth:`reset` between
    splits.

    A module holding a torchmetrics ``Metric`` (so ``.to(device)`` and Lightning move it, and its states sync over
    devices when :meth:`compute` runs), not a ``Metric`` itself: torchmetrics' ``compute`` wrapper rebuilds returned
    dataclasses field by field, which a frozen :class:`DetectionScores` refuses.
    """

    def __init__(self) -> None:
        super().__init__()
        require("pycocotools", "detect", FEATURE)
        # COCO's own thresholds (IoU 0.50:0.05:0.95, 101 recall points, 1/10/100 detections per image):
        # torchmetrics' defaults are float32 linspaces (0.550000011...), which move results at the boundaries.
        params = require("pycocotools.cocoeval", "detect", FEATURE).Params(iouType="segm")
        self.coco = MeanAveragePrecision(
            box_format="xyxy",
            iou_type=("bbox", "segm"),
            iou_thresholds=params.iouThrs.tolist(),
            rec_thresholds=params.recThrs.tolist(),
            max_detection_thresholds=[int(n) for n in params.maxDets],
            backend="pycocotools",
        )

    def update(
        self, predictions: Sequence[Mapping[str, torch.Tensor]], targets: Sequence[Mapping[str, torch.Tensor]]
    ) -> None:
        """Add a batch.

        Args:
            predictions: per image, torchvision's ``MaskRCNN`` output in eval mode: ``boxes`` ``(M, 4)`` XYXY pixels,
                ``labels`` ``(M,)``, ``scores`` ``(M,)``, ``masks`` ``(M, 1, H, W)`` probabilities.
            targets: per image, ``boxes`` ``(N, 4)`` XYXY pixels, ``labels`` ``(N,)`` in 1..K, ``masks``
                ``(N, H, W)``, and optionally ``iscrowd`` ``(N,)`` and ``area`` ``(N,)`` (COCO's).
        """
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
        self.coco.update([detection_input(p) for p in predictions], [target_input(t) for t in targets])

    def compute(self) -> DetectionScores:
        """The scores of every image added since the last :meth:`reset` (on every device)."""
        return scores_from_coco(self.coco.compute())

    def reset(self) -> None:
        self.coco.reset()
