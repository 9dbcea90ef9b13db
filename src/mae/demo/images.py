"""What the demo does to a user's image before the model sees it, and to the model's views before the page shows
them. Pure functions of PIL images and tensors: nothing here knows about Gradio."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.functional import normalize, pil_to_tensor

from mae.evaluation.reconstruction_grid import denormalize_images

MODES_BY_CHANNELS = {1: "L", 3: "RGB"}
"""The PIL mode a model of 1 or 3 input channels is fed."""


class ImageInputError(ValueError):
    """A file the demo cannot use as an image; its ``str()`` is the one line the page shows."""


def read_image(path: str | Path, max_bytes: int, max_pixels: int) -> Image.Image:
    """The image in ``path``, decoded, or an :class:`ImageInputError` naming the file and what is allowed.

    The byte size and the pixel count (from the header, before decoding) are checked first, so an oversized or
    hostile file costs nothing.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ImageInputError(
            f"{path.name} is {size / 2**20:.1f} MiB; images up to {max_bytes / 2**20:.0f} MiB are accepted"
        )
    try:
        with Image.open(path) as image:
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise too_many_pixels(path, f"{image.width}x{image.height}", max_pixels)
            image.load()
            return ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow's own pixel limit fires in Image.open, before the check above: the same message, not "unreadable".
        size = header_size(path)
        found = re.search(r"\((\d+) pixels\)", str(error))
        shown = (
            f"{size[0]}x{size[1]}"
            if size is not None
            else f"{int(found.group(1)) / 1e6:.0f} megapixels"
            if found
            else "larger than Pillow opens"
        )
        raise too_many_pixels(path, shown, max_pixels) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageInputError):
            raise
        raise ImageInputError(
            f"{path.name} is not an image this demo can read (PNG, JPEG, WebP, BMP, GIF, TIFF, ...)"
        ) from None


def header_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the header of an image that ``Image.open`` refuses as a decompression bomb: the
    format plugins read only the header, and it is ``Image.open`` that checks the size (None when no plugin
    reads it)."""
    Image.init()
    with open(path, "rb") as f:
        prefix = f.read(16)
        for format_id in Image.ID:
            factory, accept = Image.OPEN[format_id]
            if accept is not None and not accept(prefix):
                continue
            f.seek(0)
            try:
                return factory(f, path.name).size
            except Exception:
                continue
    return None


def too_many_pixels(path: Path, size: str, max_pixels: int) -> ImageInputError:
    """The one message for an image over the pixel limit, whether the demo's check or Pillow's found it."""
    pixels = f"{size} pixels" if size[:1].isdigit() else size
    return ImageInputError(f"{path.name} is {pixels}; images up to {max_pixels / 1e6:.0f} megapixels are accepted")


def fit_image(image: Image.Image, img_size: int, in_chans: int) -> tuple[Image.Image, list[str]]:
    """``image`` in the model's channels and size: converted to grayscale or RGB, the shorter side resized to
    ``img_size`` (bicubic) and the centre cropped square; and a sentence per step taken, for the page."""
    if in_chans not in MODES_BY_CHANNELS:
        raise ValueError(f"in_chans={in_chans}: the demo shows 1- or 3-channel models")
    notes = []
    mode = MODES_BY_CHANNELS[in_chans]
    if image.mode != mode:
        # Transparent pixels are shown on white, as a browser shows them.
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image.convert("RGBA"))
        was = image.mode
        image = image.convert(mode)
        notes.append(f"converted {describe_mode(was)} to {describe_mode(mode)}")
    width, height = image.size
    if (width, height) != (img_size, img_size):
        scale = img_size / min(width, height)
        resized = (max(img_size, round(width * scale)), max(img_size, round(height * scale)))
        if resized != (width, height):
            image = image.resize(resized, Image.Resampling.BICUBIC)
            notes.append(f"resized {width}x{height} to {resized[0]}x{resized[1]}")
        if resized != (img_size, img_size):
            left, top = (resized[0] - img_size) // 2, (resized[1] - img_size) // 2
            image = image.crop((left, top, left + img_size, top + img_size))
            notes.append(f"cropped the centre {img_size}x{img_size}")
    return image, notes


def describe_mode(mode: str) -> str:
    return {"L": "grayscale", "RGB": "RGB", "RGBA": "RGB with transparency"}.get(mode, f"PIL mode {mode}")


def to_model_input(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A fitted image as the model's ``(1, C, H, W)`` input, normalised as the data group normalises."""
    pixels = pil_to_tensor(image).float().div(255)
    return normalize(pixels, list(mean), list(std)).unsqueeze(0)


def to_display(view: torch.Tensor, mean: Sequence[float], std: Sequence[float], display_size: int) -> Image.Image:
    """One ``(C, H, W)`` normalised view as an RGB picture, enlarged with square pixels to at least
    ``display_size`` so that a 28 px image can be seen."""
    pixels = denormalize_images(view.unsqueeze(0), mean, std)[0]
    array = pixels.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)  # uint8: mode L or RGB
    factor = max(1, -(-display_size // max(image.size)))
    return image.convert("RGB").resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
