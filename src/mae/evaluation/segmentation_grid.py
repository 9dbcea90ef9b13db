"""Segmentation pictures: each row an image, its true label map and the predicted one, coloured per class.

Images of any size share one grid: every panel is scaled (nearest-neighbour, so labels stay crisp) to a fixed
cell height, keeping its aspect ratio. Ignored pixels (255) are drawn white.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mae.evaluation.segmentation import IGNORE_INDEX
from mae.runs.atomic_files import replaced_atomically

IGNORED_COLOUR = (255, 255, 255)
BACKGROUND = (128, 128, 128)  # between panels, and where a row is shorter than the widest
GAP = 4  # pixels between panels and rows


def class_palette(num_classes: int) -> np.ndarray:
    """``(K, 3)`` uint8 colours, class 0 black and the others spread over the hue circle by the golden ratio (so
    neighbouring class ids differ), the same for every run."""
    colours = [(0, 0, 0)]
    for k in range(1, num_classes):
        hue = (k * 0.618033988749895) % 1.0
        value = 0.95 if k % 2 else 0.7
        colours.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, value)))
    return np.array(colours[:num_classes], dtype=np.uint8)


def colourize(labels: torch.Tensor, palette: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 picture of a label map ``(H, W)``; ignored pixels white."""
    values = labels.cpu().numpy().astype(np.int64)
    out = np.empty((*values.shape, 3), dtype=np.uint8)
    ignored = values == IGNORE_INDEX
    out[~ignored] = palette[values[~ignored]]
    out[ignored] = IGNORED_COLOUR
    return out


def image_panel(image: torch.Tensor) -> np.ndarray:
    """``(H, W, 3)`` uint8 of a ``(C, H, W)`` image with values in [0, 1] (grey repeated to RGB)."""
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().cpu()
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    return array[:3].permute(1, 2, 0).numpy()


def paste_rows(rows: Sequence[Sequence[Image.Image]]) -> Image.Image:
    """One RGB picture of ``rows`` of panels, each row as tall as its tallest panel, ``GAP`` pixels between panels
    and rows, on grey."""
    heights = [max(panel.height for panel in row) for row in rows]
    width = max(sum(panel.width for panel in row) + GAP * (len(row) - 1) for row in rows)
    grid = Image.new("RGB", (width, sum(heights) + GAP * (len(rows) - 1)), BACKGROUND)
    y = 0
    for row, height in zip(rows, heights):
        x = 0
        for panel in row:
            grid.paste(panel, (x, y))
            x += panel.width + GAP
        y += height + GAP
    return grid


def save_png(picture: Image.Image, path: str | Path) -> Path:
    """Write ``picture`` to ``path`` as a PNG, atomically (a killed run leaves the previous picture), and return the
    path."""
    path = Path(path)
    with replaced_atomically(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


def _scaled(panel: np.ndarray, height: int) -> Image.Image:
    picture = Image.fromarray(panel)
    width = max(1, round(panel.shape[1] * height / panel.shape[0]))
    return picture.resize((width, height), Image.Resampling.NEAREST)


def write_segmentation_grid(
    images: Sequence[torch.Tensor],
    truths: Sequence[torch.Tensor],
    predictions: Sequence[torch.Tensor],
    num_classes: int,
    path: str | Path,
    cell_height: int = 192,
) -> Path:
    """Write the grid PNG (atomically) and return its path.

    Args:
        images: ``(C, H, W)`` images in [0, 1] (de-normalised).
        truths: ``(H, W)`` true labels, 255 ignored.
        predictions: ``(H, W)`` predicted labels.
        num_classes: size of the palette.
        path: the PNG to write.
        cell_height: height every panel is scaled to.
    """
    if not (len(images) == len(truths) == len(predictions) >= 1):
        raise ValueError(f"{len(images)} images, {len(truths)} label maps and {len(predictions)} predictions")
    palette = class_palette(num_classes)
    rows = [
        [
            _scaled(image_panel(image), cell_height),
            *(_scaled(colourize(m, palette), cell_height) for m in (truth, pred)),
        ]
        for image, truth, pred in zip(images, truths, predictions)
    ]
    return save_png(paste_rows(rows), path)
