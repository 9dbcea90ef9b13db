"""Joint image + instance transforms of Detectron2's ViTDet COCO recipe, on ``tv_tensors`` with torchvision's v2 ops.

Samples are ``(image, target)``: image ``(C, H, W)`` uint8; target a dict of ``"boxes"`` float32 ``(N, 4)`` XYXY in
pixels, ``"labels"`` int64 ``(N,)`` in 1..K, ``"masks"`` uint8 ``(N, H, W)``, ``"iscrowd"`` int64 ``(N,)``,
``"area"`` float32 ``(N,)`` and ``"image_id"`` (what :class:`~mae.data.dense.coco.CocoInstances` serves).

Training, large-scale jitter (ViTDet's ``RandomFlip``, ``ResizeScale(0.1, 2.0)``, ``FixedSizeCrop``): crowd
instances dropped (Detectron2 never trains on them), a horizontal flip, a resize by a random ``scale`` times the
factor that fits the output size, a crop of the output size at a random place where the image is larger (one
uniform for both sides, as Detectron2 draws it), bottom/right padding to exactly the output size, then the instances
whose box or mask became empty dropped (Detectron2's ``filter_empty_instances``). Boxes move with their corners
(scaled, shifted, clipped to the image), masks with nearest-neighbour at pixel centres; ``recompute_boxes`` replaces
the boxes by their masks' extents instead (ViTDet's LSJ loader sets Detectron2's ``recompute_boxes``). The image
leaves as float32 in [0, 1], not normalised: torchvision's Mask R-CNN normalises its inputs itself, and padding with
the normalisation mean makes that padding 0, as Detectron2 pads the normalised batch. Evaluation: the image to
float32 in [0, 1]; the target unchanged (crowd regions included: COCO's protocol ignores detections on them), since
the model resizes evaluation images itself and maps its predictions back to the original size.

Small callables over the functional ops rather than ``v2.Compose`` pipelines, as :mod:`mae.data.dense.transforms`:
every random number comes from the ``generator`` the loaders seed per sample and epoch, the global torch RNG only
without one. Images are resized bilinearly with antialiasing (Detectron2 resizes with PIL's bilinear filter, which
antialiases when shrinking).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from mae.data.dense.checks import check_probability, int_pair

INSTANCE_KEYS = ("boxes", "labels", "masks", "iscrowd", "area")
"""Target entries with one row per instance; any other entry (``image_id``) describes the whole image."""
MIN_BOX_SIDE = 1e-5  # Detectron2's filter_empty_instances box threshold, in pixels

Target = dict[str, Any]
Sample = tuple[torch.Tensor, Target]


def check_scale_range(scale_range: Sequence[float]) -> tuple[float, float]:
    """The jitter's scale range as a tuple; it must satisfy ``0 < low <= high``."""
    values = tuple(float(v) for v in scale_range)
    if len(values) != 2 or not 0.0 < values[0] <= values[1]:
        raise ValueError(f"scale_range={list(scale_range)} must be two numbers with 0 < low <= high")
    return values[0], values[1]


def check_pad_value(pad_value: Sequence[float]) -> tuple[float, ...]:
    """Per-channel padding of [0, 1] pixels as a tuple: at least one value, each in [0, 1]."""
    values = tuple(float(v) for v in pad_value)
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"pad_value={list(pad_value)} must be one number in [0, 1] per channel")
    return values


def resize_scale_size(height: int, width: int, output_size: Sequence[int], scale: float) -> tuple[int, int]:
    """Detectron2's ``ResizeScale`` size: ``(height, width)`` times the largest factor with which the image fits
    ``scale`` times ``output_size`` ``(out_h, out_w)``, rounded (half to even, as NumPy's round); at least 1 pixel
    (an extreme aspect ratio at a small scale would round a side to 0, which no resize accepts)."""
    factor = min(output_size[0] * scale / height, output_size[1] * scale / width)
    return max(round(height * factor), 1), max(round(width * factor), 1)


def crop_offsets(height: int, width: int, output_size: Sequence[int], uniform: float) -> tuple[int, int]:
    """Detectron2's ``FixedSizeCrop`` origin ``(top, left)``: the room along each side where the image is larger than
    ``output_size`` (0 elsewhere) times one ``uniform`` in [0, 1) shared by both sides, rounded."""
    top = round(max(height - output_size[0], 0) * uniform)
    left = round(max(width - output_size[1], 0) * uniform)
    return top, left


def select(target: Target, keep: torch.Tensor) -> Target:
    """The target with only the instances where the boolean ``keep`` is true (whole-image entries kept)."""
    return {key: value[keep] if key in INSTANCE_KEYS else value for key, value in target.items()}


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` masks to ``(N, 4)`` float32 XYXY boxes around their pixels, the far sides one past the last pixel
    (Detectron2's ``BitMasks.get_bounding_boxes``); all zeros for an empty mask."""
    masks, boxes = masks.bool(), torch.zeros(len(masks), 4)
    for axis, (low, high) in ((1, (0, 2)), (2, (1, 3))):  # columns give x, rows give y
        present = masks.any(axis)  # (N, W) after collapsing the rows, (N, H) after the columns
        positions = torch.arange(present.shape[1]).expand_as(present)
        boxes[:, low] = torch.where(present, positions, present.shape[1]).amin(1).float()
        boxes[:, high] = torch.where(present, positions + 1, 0).amax(1).float()
    return boxes * masks.flatten(1).any(1, keepdim=True)


def nonempty(boxes: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Detectron2's ``filter_empty_instances``: a box wider and taller than :data:`MIN_BOX_SIDE` and a mask with at
    least one pixel."""
    sides = boxes[:, 2:] - boxes[:, :2]
    return (sides > MIN_BOX_SIDE).all(1) & masks.flatten(1).bool().any(1)


class LargeScaleJitter:
    """The training augmentation (see the module's docstring), ``(image (C, H, W) uint8, target)`` to
    ``(image (C, out_h, out_w) float32 in [0, 1], target)`` with the same keys, crowds and emptied instances dropped,
    ``area`` the masks' pixel counts and ``iscrowd`` all 0.

    Args:
        output_size: ``(out_h, out_w)`` of every output, or one int for a square.
        scale_range: range of the uniform ``scale`` on the factor that fits the image to ``output_size``.
        hflip: probability of a horizontal flip.
        pad_value: per-channel value of the padding, in [0, 1] (the normalisation mean: 0 once normalised).
        recompute_boxes: boxes from the transformed masks' extents instead of the transformed box corners.
    """

    def __init__(
        self,
        output_size: int | Sequence[int],
        scale_range: Sequence[float],
        hflip: float,
        pad_value: Sequence[float],
        recompute_boxes: bool,
    ) -> None:
        self.output_size = int_pair("output_size", output_size)
        self.scale_range = check_scale_range(scale_range)
        self.hflip = check_probability("hflip", hflip)
        self.pad_value = check_pad_value(pad_value)
        if not isinstance(recompute_boxes, bool):
            raise ValueError(f"recompute_boxes={recompute_boxes!r} must be true or false")
        self.recompute_boxes = recompute_boxes

    def geometry(self, image: torch.Tensor, target: Target, generator: torch.Generator | None = None) -> Sample:
        """Flip, random resize and crop: ``(image uint8, target)`` of at most ``output_size``, boxes and masks moved
        along (boxes clipped to the crop), no instance dropped yet."""
        u_flip, u_scale, u_crop = torch.rand(3, generator=generator).tolist()
        height, width = image.shape[-2:]
        items = [
            tv_tensors.Image(image),
            tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(height, width)),
            tv_tensors.Mask(target["masks"]),
        ]
        if u_flip < self.hflip:
            items = [F.horizontal_flip(item) for item in items]
        scale = self.scale_range[0] + (self.scale_range[1] - self.scale_range[0]) * u_scale
        size = list(resize_scale_size(height, width, self.output_size, scale))
        image, boxes, masks = items
        image = F.resize(image, size, InterpolationMode.BILINEAR, antialias=True)
        boxes = F.resize(boxes, size)
        # Nearest neighbour at pixel centres (PIL's rule) keeps masks aligned with the bilinear image: torchvision's
        # NEAREST samples at pixel corners, up to half a pixel off.
        masks = F.resize(masks, size, InterpolationMode.NEAREST_EXACT)
        top, left = crop_offsets(*size, self.output_size, u_crop)
        crop = [top, left, min(self.output_size[0], size[0] - top), min(self.output_size[1], size[1] - left)]
        image, boxes, masks = (F.crop(item, *crop) for item in (image, boxes, masks))
        # Clipped here as Detectron2 clips to the image: torchvision's crop clamps too, but how depends on the boxes'
        # clamping mode (a setting since torchvision 0.23).
        limits = torch.tensor([crop[3], crop[2], crop[3], crop[2]], dtype=boxes.dtype)
        boxes = torch.minimum(boxes.as_subclass(torch.Tensor).clamp(min=0), limits)
        return image.as_subclass(torch.Tensor), {**target, "boxes": boxes, "masks": masks.as_subclass(torch.Tensor)}

    def __call__(self, image: torch.Tensor, target: Target, generator: torch.Generator | None = None) -> Sample:
        if len(self.pad_value) != image.shape[0]:
            raise ValueError(
                f"pad_value={list(self.pad_value)} needs one value per channel; the image has {image.shape[0]}"
            )
        image, target = self.geometry(image, select(target, target["iscrowd"] == 0), generator)
        bottom, right = self.output_size[0] - image.shape[-2], self.output_size[1] - image.shape[-1]
        image = F.to_dtype(image, torch.float32, scale=True)
        masks = target["masks"]
        if bottom or right:
            image = F.pad(image, [0, 0, right, bottom], fill=list(self.pad_value))
            masks = F.pad(tv_tensors.Mask(masks), [0, 0, right, bottom], fill=0).as_subclass(torch.Tensor)
        boxes = mask_boxes(masks) if self.recompute_boxes else target["boxes"]
        target = {
            **target,
            "boxes": boxes,
            "masks": masks,
            "area": masks.flatten(1).sum(1).float(),
            "iscrowd": torch.zeros(len(masks), dtype=torch.int64),
        }
        return image, select(target, nonempty(boxes, masks))


class DetectionEvalTransform:
    """Evaluation: the image to float32 in [0, 1], the target unchanged (the model resizes the image itself and
    maps its predictions back to the original size)."""

    def __call__(self, image: torch.Tensor, target: Target, generator: torch.Generator | None = None) -> Sample:
        del generator  # deterministic: accepted so that every transform is called the same way
        return F.to_dtype(image, torch.float32, scale=True), target
