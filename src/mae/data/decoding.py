"""Image files to pixels: torchvision's libjpeg-turbo/libpng decoders into uint8 tensors, or PIL images.

Both give the same RGB pixels for JPEG (RGB, greyscale and CMYK) and PNG files; the tensor decoder takes
about two thirds of PIL's time on an ImageNet-sized JPEG, and the uint8 tensor it returns then goes through
torchvision's SIMD resampling instead of PIL's (together twice PIL + torchvision per data-loading worker,
``make bench``). ``decoder="pil"`` keeps the reference implementation's exact path (PIL decode and PIL bicubic
resampling; the two resamplers differ by at most a couple of grey levels).
"""

from __future__ import annotations

import re

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file

from mae.data.errors import CorruptDataError, one_line

DECODERS = ("torchvision", "pil")
MODES = ("RGB", "L")
# PIL's integer luma transform (ITU-R 601-2, 16-bit fixed point), so that "L" is the same in both decoders.
_LUMA_WEIGHTS = torch.tensor((19595, 38470, 7471), dtype=torch.int32).view(3, 1, 1)
# torchvision's C++ errors start with "<function>, <source file>:<line>, "; the user needs what follows.
_CPP_LOCATION = re.compile(r"^\w+, \S+:\d+, ")


def check_decoder(decoder: str) -> str:
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r} must be one of {', '.join(DECODERS)}")
    return decoder


def pil_luma(rgb: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` uint8 RGB to ``(1, H, W)`` uint8 grey exactly as PIL's ``convert("L")``."""
    luma = (rgb.to(torch.int32) * _LUMA_WEIGHTS).sum(dim=0, keepdim=True)
    return ((luma + 32768) >> 16).to(torch.uint8)


class ImageLoader:
    """Open an image file as ``mode`` ("RGB" or "L") with ``decoder``; an undecodable file raises
    :class:`CorruptDataError` naming it.

    Returns a ``(C, H, W)`` uint8 tensor ("torchvision") or a PIL image ("pil"); the project's transforms take
    either. A class rather than a closure so that it pickles into DataLoader worker processes.
    """

    def __init__(self, mode: str, decoder: str = "torchvision") -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} must be one of {', '.join(MODES)}")
        self.mode = mode
        self.decoder = check_decoder(decoder)

    @classmethod
    def for_channels(cls, in_chans: int, decoder: str) -> ImageLoader:
        """The loader of a data module serving ``in_chans`` channels: RGB for 3, greyscale for 1."""
        return cls("RGB" if in_chans == 3 else "L", decoder)

    def __call__(self, path: str) -> torch.Tensor | Image.Image:
        if self.decoder == "pil":
            return self._decode_pil(path)
        try:
            rgb = decode_image(read_file(path), mode=ImageReadMode.RGB)
        except RuntimeError as error:  # what torchvision raises for empty, unknown, corrupt or truncated files
            reason = _CPP_LOCATION.sub("", one_line(error))
            raise CorruptDataError(f"cannot decode image {path}: {reason}") from error
        return rgb if self.mode == "RGB" else pil_luma(rgb)

    def _decode_pil(self, path: str) -> Image.Image:
        try:
            with Image.open(path) as img:
                return img.convert(self.mode)  # convert() decodes the whole file, so truncation shows here
        except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for unreadable/corrupt files
            raise CorruptDataError(f"cannot decode image {path}: {one_line(error)}") from error
