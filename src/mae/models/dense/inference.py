"""Sliding-window inference over images larger than the training crop: MMSegmentation's ``slide_inference``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mae.models.dense.sizes import size_pair


def window_spans(size: int, window: int, stride: int) -> list[tuple[int, int]]:
    """mmseg's windows along one side of ``size`` pixels, as ``(start, end)`` pixel spans.

    ``max(size - window + stride - 1, 0) // stride + 1`` windows at ``i * stride``; one reaching past the end is
    moved back to end there, and one longer than the side is cut to the whole side.
    """
    spans = []
    for i in range(max(size - window + stride - 1, 0) // stride + 1):
        end = min(i * stride + window, size)
        spans.append((max(end - window, 0), end))
    return spans


@torch.no_grad()
def slide_inference(
    model_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    num_classes: int,
    window: int | Sequence[int],
    stride: int | Sequence[int],
    size_divisor: int,
) -> torch.Tensor:
    """Class logits of ``images`` from overlapping windows, averaged where they overlap (mmseg's ``slide`` mode).

    Windows of ``window`` pixels every ``stride`` pixels, the last one in each direction moved back to end at the
    image's edge (see :func:`window_spans`); where the image is smaller than the window, the window is the
    whole side, as in mmseg, so ``model_fn`` must take that size too. Each window's logits are summed into place
    and divided by the number of windows covering each pixel.

    Args:
        model_fn: ``(N, C, h, w)`` crop -> ``(N, num_classes, h, w)`` logits, e.g. ``lambda x: model(x).logits``.
        images: ``(N, C, H, W)``.
        num_classes: logits per pixel.
        window: crop side or ``(height, width)`` (mmseg's MAE ADE20K config: 512).
        stride: step side or ``(height, width)`` (mmseg 1.x's config: 256; 0.x's: 341).
        size_divisor: what every crop side must be a multiple of: the model's patch size.

    Returns:
        ``(N, num_classes, H, W)`` logits.
    """
    (window_h, window_w), (stride_h, stride_w) = size_pair(window, "window"), size_pair(stride, "stride")
    if size_divisor < 1:
        raise ValueError(f"size_divisor={size_divisor} must be at least 1")
    batch, _, height, width = images.shape
    for side in (window_h, window_w, min(height, window_h), min(width, window_w)):
        if side % size_divisor:
            raise ValueError(
                f"window {window_h}x{window_w} over images of {height}x{width} gives crops whose sides are not "
                f"all divisible by {size_divisor}"
            )
    logits = images.new_zeros((batch, num_classes, height, width))
    count = images.new_zeros((batch, 1, height, width))
    for top, bottom in window_spans(height, window_h, stride_h):
        for left, right in window_spans(width, window_w, stride_w):
            crop_logits = model_fn(images[:, :, top:bottom, left:right])
            expected = (batch, num_classes, bottom - top, right - left)
            if tuple(crop_logits.shape) != expected:
                raise ValueError(f"model_fn returned logits of shape {tuple(crop_logits.shape)}, expected {expected}")
            logits[:, :, top:bottom, left:right] += crop_logits
            count[:, :, top:bottom, left:right] += 1
    return logits / count
