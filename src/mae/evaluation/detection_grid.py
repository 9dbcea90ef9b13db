"""Detection pictures: for each image two tiles side by side, its true instances and the predicted ones, each
instance's mask and box drawn in its class's colour with the class name (and the score, for predictions).

``columns`` images (pairs of tiles) go across each row. Images of different sizes share one grid: every tile keeps
its pixels and sits in the top-left corner of a cell as large as the largest image, grey around it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from mae.evaluation.detection import binary_masks
from mae.evaluation.segmentation_grid import BACKGROUND, class_palette, image_panel, paste_rows, save_png

MASK_ALPHA = 0.5  # the image stays visible under the masks
BOX_WIDTH = 2
CAPTION_COLOURS = ("white", "black")  # text and its background: readable on any image and any class colour


def rgb_image(image: torch.Tensor) -> torch.Tensor:
    """uint8 ``(3, H, W)`` of a ``(C, H, W)`` image, uint8 or float in [0, 1] (grey repeated to RGB)."""
    if image.dtype == torch.uint8:
        image = image.float() / 255  # exact: image_panel rounds it back to the same bytes
    return torch.from_numpy(image_panel(image)).permute(2, 0, 1)


def captions(
    labels: torch.Tensor, class_names: Sequence[str], scores: torch.Tensor | None, crowd: torch.Tensor | None
) -> list[str]:
    """Each instance's class name, with its score (predictions) or ``crowd`` (crowd regions of the truth)."""
    names = []
    for i, label in enumerate(labels.tolist()):
        if not 0 <= label < len(class_names):
            raise ValueError(f"label {label} is outside the {len(class_names)} class names (0 the background)")
        name = class_names[label]
        if scores is not None:
            name = f"{name} {scores[i].item():.2f}"
        elif crowd is not None and crowd[i]:
            name = f"{name} (crowd)"
        names.append(name)
    return names


def instance_tile(
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    names: list[str],
    palette: np.ndarray,
) -> Image.Image:
    """``image`` (uint8 ``(3, H, W)``) with the instances' bool masks ``(N, H, W)`` and XYXY boxes ``(N, 4)`` drawn
    in their classes' colours, each box captioned with its name in its top-left corner."""
    if len(labels):  # torchvision warns on an empty set of masks or boxes
        colours = [tuple(int(c) for c in palette[label]) for label in labels.tolist()]
        image = draw_segmentation_masks(image, masks.cpu(), alpha=MASK_ALPHA, colors=colours)
        text, background = CAPTION_COLOURS
        image = draw_bounding_boxes(
            image,
            boxes.cpu(),
            labels=names,
            colors=colours,
            width=BOX_WIDTH,
            label_colors=text,
            label_background_colors=background,
            fill_labels=True,
        )
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def truth_tile(
    image: torch.Tensor, target: Mapping[str, torch.Tensor], class_names: Sequence[str], palette: np.ndarray
) -> Image.Image:
    """The image with every true instance (crowd regions named so)."""
    labels = target["labels"].cpu()
    names = captions(labels, class_names, None, target.get("iscrowd"))
    return instance_tile(image, target["boxes"], labels, target["masks"].bool(), names, palette)


def prediction_tile(
    image: torch.Tensor,
    prediction: Mapping[str, torch.Tensor],
    class_names: Sequence[str],
    palette: np.ndarray,
    score_threshold: float,
) -> Image.Image:
    """The image with the predicted instances scoring above ``score_threshold``, their masks cut at 0.5."""
    keep = (prediction["scores"] > score_threshold).cpu()
    labels, scores = prediction["labels"].cpu()[keep], prediction["scores"].detach().cpu()[keep]
    masks = binary_masks(prediction["masks"].cpu())[keep]
    names = captions(labels, class_names, scores, None)
    return instance_tile(image, prediction["boxes"].detach().cpu()[keep], labels, masks, names, palette)


def padded(tile: Image.Image, height: int, width: int) -> Image.Image:
    """``tile`` in the top-left corner of a grey ``height x width`` cell."""
    cell = Image.new("RGB", (width, height), BACKGROUND)
    cell.paste(tile, (0, 0))
    return cell


def write_detection_grid(
    path: str | Path,
    images: Sequence[torch.Tensor],
    predictions: Sequence[Mapping[str, torch.Tensor]],
    targets: Sequence[Mapping[str, torch.Tensor]],
    class_names: Sequence[str],
    score_threshold: float = 0.5,
    columns: int = 2,
) -> Path:
    """Write the grid PNG (atomically) and return its path.

    The picture is ``2c`` cells wide and ``ceil(n / c)`` high, ``c = min(columns, n)`` for ``n`` images, each cell
    as large as the largest image, ``GAP`` pixels between cells.

    Args:
        path: the PNG to write.
        images: ``(C, H, W)`` images, uint8 or float in [0, 1] (de-normalised), grey or RGB, any sizes.
        predictions: per image, Mask R-CNN's output in eval mode (``boxes``, ``labels``, ``scores``, ``masks``
            ``(M, 1, H, W)`` probabilities).
        targets: per image, the ground truth (``boxes``, ``labels``, ``masks`` ``(N, H, W)``, optionally
            ``iscrowd``).
        class_names: the name of each label, index 0 the background (torchvision's category lists).
        score_threshold: predictions scoring at most this are left out.
        columns: images (pairs of tiles) per row.
    """
    if not (len(images) == len(predictions) == len(targets) >= 1):
        raise ValueError(f"{len(images)} images, {len(predictions)} predictions and {len(targets)} targets")
    if columns < 1:
        raise ValueError(f"columns={columns}: expected at least 1 image per row")
    palette = class_palette(len(class_names))
    pairs = []
    for image, prediction, target in zip(images, predictions, targets):
        rgb = rgb_image(image)
        pairs.append(
            (
                truth_tile(rgb, target, class_names, palette),
                prediction_tile(rgb, prediction, class_names, palette, score_threshold),
            )
        )
    height = max(truth.height for truth, _ in pairs)
    width = max(truth.width for truth, _ in pairs)
    rows = [
        [padded(tile, height, width) for pair in pairs[start : start + columns] for tile in pair]
        for start in range(0, len(pairs), columns)
    ]
    return save_png(paste_rows(rows), path)
