"""mIoU as the benchmarks compute it: one confusion matrix over the whole split, ignore index 255."""

import math

import pytest
import torch

from mae.evaluation.segmentation import (
    IGNORE_INDEX,
    SegmentationMetric,
    confusion_matrix,
    scores_from_confusion,
)

# Three classes; class 2 never occurs in the labels and is predicted once.
LABELS = torch.tensor([[0, 0, 1, 1], [0, 1, 1, IGNORE_INDEX]])
PREDICTIONS = torch.tensor([[0, 1, 1, 1], [0, 2, 1, 0]])


def test_confusion_matrix_counts_rows_as_truth_and_leaves_out_ignored_pixels():
    expected = torch.tensor(
        [
            [2, 1, 0],  # true 0: two right, one taken for 1
            [0, 3, 1],  # true 1: three right, one taken for 2
            [0, 0, 0],
        ]
    )
    assert torch.equal(confusion_matrix(PREDICTIONS, LABELS, 3), expected)


def test_scores_match_a_hand_computation():
    scores = scores_from_confusion(confusion_matrix(PREDICTIONS, LABELS, 3))
    # IoU: class 0 = 2 / (2 + 1 + 0) ; class 1 = 3 / (4 + 4 - 3) ; class 2 = 0 / (1 + 0 - 0), present (predicted).
    iou = [2 / 3, 3 / 5, 0.0]
    assert scores.per_class_iou == pytest.approx([100 * v for v in iou])
    assert scores.miou == pytest.approx(100 * sum(iou) / 3)
    assert scores.pixel_accuracy == pytest.approx(100 * 5 / 7)
    # Class 2 has no labelled pixel, so its accuracy is 0/0 and left out of the mean.
    assert scores.mean_accuracy == pytest.approx(100 * (2 / 3 + 3 / 4) / 2)
    assert scores.num_pixels == 7


def test_a_class_in_neither_labels_nor_predictions_is_left_out_of_the_mean():
    scores = scores_from_confusion(confusion_matrix(PREDICTIONS, LABELS, 4))
    assert scores.per_class_iou[3] is None
    assert scores.miou == pytest.approx(100 * (2 / 3 + 3 / 5 + 0) / 3)


def test_the_split_is_scored_as_one_matrix_not_as_an_average_of_images():
    metric = SegmentationMetric(num_classes=2)
    # Image A: class 1 right on one pixel of one; image B: class 1 wrong on all of 99.
    metric.update(torch.tensor([1, 0]), torch.tensor([1, 0]))
    metric.update(torch.zeros(99, dtype=torch.long), torch.ones(99, dtype=torch.long))
    scores = metric.compute()
    confusion = torch.tensor([[1, 0], [99, 1]])
    assert torch.equal(metric.confusion, confusion)
    assert scores.per_class_iou[1] == pytest.approx(100 * 1 / 100)
    per_image_mean = (100 * 1.0 + 0.0) / 2  # what averaging image scores would give for class 1
    assert not math.isclose(scores.per_class_iou[1], per_image_mean)


def test_a_label_outside_the_classes_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"label value 7 is outside the classes 0\.\.2") as error:
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.tensor([0, 7, IGNORE_INDEX]), 3)
    assert "\n" not in str(error.value)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), 2)
