"""COCO AP by the official protocol (torchmetrics' MeanAveragePrecision on pycocotools), checked on hand-computable
cases, and the detection pictures."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from extras import needs_extra
from PIL import Image

from mae.evaluation.detection import DetectionMetric, DetectionScores
from mae.evaluation.detection_grid import write_detection_grid
from mae.evaluation.segmentation_grid import GAP
from mae.runs.optional import MissingExtraError

SIZE = (64, 64)  # (H, W) of the metric's images
CLASS_NAMES = ["background", "circle", "square"]


def box_mask(box: list[int], size: tuple[int, int] = SIZE) -> torch.Tensor:
    """uint8 ``(H, W)`` mask filling the XYXY ``box``, so that box and mask areas agree."""
    mask = torch.zeros(size, dtype=torch.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 1
    return mask


def target(
    boxes: list[list[int]], labels: list[int], iscrowd: list[int] | None = None, area: list[float] | None = None
) -> dict:
    masks = torch.stack([box_mask(box) for box in boxes])
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor(labels),
        "masks": masks,
        "iscrowd": torch.tensor(iscrowd or [0] * len(boxes)),
        "area": masks.sum((1, 2)).float() if area is None else torch.tensor(area, dtype=torch.float32),
        "image_id": 0,
    }


def prediction(boxes: list[list[int]], labels: list[int], scores: list[float], size: tuple[int, int] = SIZE) -> dict:
    # Probabilities as Mask R-CNN pastes them: 0.9 inside the instance, 0.1 outside (the metric cuts at 0.5).
    masks = torch.stack([box_mask(box, size) for box in boxes]) if boxes else torch.zeros(0, *size)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "masks": (0.1 + 0.8 * masks.float())[:, None],
    }


@pytest.fixture
def metric() -> DetectionMetric:
    needs_extra("pycocotools", "detect")
    return DetectionMetric()


def scores_of(metric: DetectionMetric, predictions: list[dict], targets: list[dict]) -> DetectionScores:
    """The scores of these images alone (the metric reset first)."""
    metric.reset()
    metric.update(predictions, targets)
    return metric.compute()


A, B = [4, 4, 20, 20], [30, 30, 46, 50]  # two objects of 16 x 16 and 16 x 20 pixels (small: area under 32²)


def test_predictions_equal_to_the_truth_score_100(metric):
    truth = [target([A, B], [1, 2]), target([[0, 0, 60, 50]], [1])]
    guess = [prediction([A, B], [1, 2], [1.0, 1.0]), prediction([[0, 0, 60, 50]], [1], [1.0])]
    scores = scores_of(metric, guess, truth)
    for kind in ("box", "mask"):
        for name in ("ap", "ap50", "ap75"):
            assert getattr(scores, f"{kind}_{name}") == 100


def test_one_of_two_objects_found_gives_coco_101_point_ap(metric):
    scores = scores_of(metric, [prediction([A], [1], [0.9])], [target([A, B], [1, 1])])
    # One true positive out of two objects: recall reaches 0.5 at precision 1 and never goes higher. COCO averages
    # the interpolated precision (the best precision at recall >= r) over the 101 recall points r = 0, 0.01, ..., 1:
    # 1 at the 51 points r <= 0.5, 0 at the 50 above (no recall that high). The match is exact, so every IoU
    # threshold gives the same, and AP = AP50 = AP75.
    expected = 100 * sum(1.0 if r / 100 <= 0.5 else 0.0 for r in range(101)) / 101
    for kind in ("box", "mask"):
        for name in ("ap", "ap50", "ap75", "aps"):
            assert getattr(scores, f"{kind}_{name}") == pytest.approx(expected, abs=1e-4)


def test_an_image_without_detections_scores_0(metric):
    scores = scores_of(metric, [prediction([], [], [])], [target([A], [1])])
    assert scores.box_ap == 0 and scores.mask_ap == 0


def test_a_detection_of_a_crowd_region_is_neither_a_true_nor_a_false_positive(metric):
    crowd = [36, 4, 60, 28]
    truth = [target([A, crowd], [1, 1], iscrowd=[0, 1])]
    found = prediction([A], [1], [0.9])
    # The crowd region is not missed either: recall is 1 with A alone.
    assert scores_of(metric, [found], truth).box_ap == 100
    # A higher-scoring detection on the crowd region changes nothing ...
    on_crowd = prediction([crowd, A], [1, 1], [1.0, 0.9])
    scores = scores_of(metric, [on_crowd], truth)
    assert scores.box_ap == 100 and scores.mask_ap == 100
    # ... where the same detection on background is a false positive ranked first: precision 1/2 at recall 1.
    on_background = prediction([[36, 36, 60, 60], A], [1, 1], [1.0, 0.9])
    assert scores_of(metric, [on_background], truth).box_ap == pytest.approx(50, abs=1e-4)


def test_sizes_are_split_by_the_targets_area_and_absent_sizes_are_none(metric):
    big = [8, 8, 48, 48]  # 40 x 40 = 1600 pixels (medium), but the target says its area is 100 (small)
    scores = scores_of(
        metric, [prediction([A, big], [1, 2], [1.0, 1.0])], [target([A, big], [1, 2], area=[256.0, 100.0])]
    )
    for kind in ("box", "mask"):
        assert getattr(scores, f"{kind}_aps") == 100
        assert getattr(scores, f"{kind}_apm") is None and getattr(scores, f"{kind}_apl") is None


def test_reset_forgets_the_images_added(metric):
    metric.update([prediction([], [], [])], [target([A], [1])])
    metric.reset()
    metric.update([prediction([A], [1], [1.0])], [target([A], [1])])
    assert metric.compute().mask_ap == 100


def test_to_dict_has_flat_keys_for_results_json():
    scores = DetectionScores(*range(6), *([None] * 6))
    names = ["ap", "ap50", "ap75", "aps", "apm", "apl"]
    assert list(scores.to_dict()) == [f"{kind}_{name}" for kind in ("box", "mask") for name in names]
    assert scores.to_dict("val/")["val/box_ap50"] == 1 and scores.to_dict("val/")["val/mask_apl"] is None


def test_the_metric_without_pycocotools_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(MissingExtraError) as caught:
        DetectionMetric()
    assert str(caught.value) == (
        "COCO AP (task=detect) needs pycocotools: pip install 'mae-lightning[detect]' "
        "(from a checkout: pip install -e '.[detect]')"
    )


def test_the_grid_pads_images_of_two_sizes_grey_and_rgb(tmp_path):
    grey = torch.rand(1, 20, 30)  # float in [0, 1]
    rgb = torch.randint(0, 256, (3, 40, 24), dtype=torch.uint8)
    targets = [
        {
            "boxes": torch.tensor([[2.0, 2.0, 12.0, 10.0]]),
            "labels": torch.tensor([1]),
            "masks": box_mask([2, 2, 12, 10], (20, 30))[None],
        },
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.long),
            "masks": torch.zeros(0, 40, 24, dtype=torch.uint8),
        },
    ]
    predictions = [
        prediction([[2, 2, 12, 10], [0, 0, 5, 5]], [1, 2], [0.8, 0.1], size=(20, 30)),
        prediction([[1, 1, 20, 30]], [2], [0.9], size=(40, 24)),
    ]
    path = tmp_path / "pictures" / "detection.png"
    assert write_detection_grid(path, [grey, rgb], predictions, targets, CLASS_NAMES, 0.5, columns=2) == path
    # One row of 4 cells as large as the largest image (40 x 30), GAP pixels apart; nothing else left behind.
    with Image.open(path) as picture:
        assert picture.size == (4 * 30 + 3 * GAP, 40)
    assert [p.name for p in path.parent.iterdir()] == ["detection.png"]
    write_detection_grid(path, [grey, rgb], predictions, targets, CLASS_NAMES, 0.5, columns=1)
    with Image.open(path) as picture:
        assert picture.size == (2 * 30 + GAP, 2 * 40 + GAP) and picture.mode == "RGB"
        # The second image's truth has no instance: its tile is the image itself.
        tile = torch.from_numpy(np.array(picture))[40 + GAP :, :24].permute(2, 0, 1)
        assert torch.equal(tile, rgb)
