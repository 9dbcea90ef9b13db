"""Image files to pixels: torchvision's libjpeg-turbo/libpng decoders into uint8 tensors, or PIL images.

Both give the same pixels for JPEG (RGB, greyscale and CMYK), PNG (greyscale, RGB, RGBA, palette, 16-bit), WebP
and GIF files; formats torchvision does not read (BMP, TIFF, PPM/PGM) go through PIL in both. Alpha is dropped, and
16-bit images are scaled to 8 bits (``round(v / 257)``) where PIL's own conversion would clip them at 255. The
tensor decoder takes
about two thirds of PIL's time on an ImageNet-sized JPEG, and the uint8 tensor it returns then goes through
torchvision's SIMD resampling instead of PIL's (together twice PIL + torchvision per data-loading worker,
``make bench``). ``decoder="pil"`` keeps the reference implementation's exact path (PIL decode and PIL bicubic
resampling; the two resamplers differ by at most a couple of grey levels).
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as F

from mae.data.errors import CorruptDataError, one_line

log = logging.getLogger(__name__)

DECODERS = ("torchvision", "pil")
BAD_IMAGE_POLICIES = ("error", "skip")
MODES = ("RGB", "L")
# PIL's integer luma transform (ITU-R 601-2, 16-bit fixed point), so that "L" is the same in both decoders.
_LUMA_WEIGHTS = torch.tensor((19595, 38470, 7471), dtype=torch.int32).view(3, 1, 1)
# torchvision's C++ errors start with "<function>, <source file>:<line>, "; the user needs what follows.
_CPP_LOCATION = re.compile(r"^\w+, \S+:\d+, ")


def check_decoder(decoder: str) -> str:
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r} must be one of {', '.join(DECODERS)}")
    return decoder


def sixteen_to_eight_bits(values: torch.Tensor) -> torch.Tensor:
    """16-bit pixels (0-65535, any integer dtype) to uint8 as ``round(v / 257)``: 65535 -> 255, 0 -> 0."""
    return ((values.to(torch.int32).clamp(0, 65535) + 128) // 257).to(torch.uint8)


def pil_to_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img.convert(mode)``, except that 16- and 32-bit integer images (``I;16*``, ``I``: scans, microscopy) are
    scaled to 8 bits first, which PIL's conversion would clip at 255."""
    if img.mode.startswith("I;16") or img.mode == "I":
        values = torch.from_numpy(np.asarray(img, dtype=np.int64).copy())
        img = Image.fromarray(sixteen_to_eight_bits(values).numpy(), "L")
    return img.convert(mode)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_PALETTE = 3  # the IHDR colour type of an indexed-colour PNG


def _is_palette_png(encoded: torch.Tensor) -> bool:
    """Whether the bytes are an indexed-colour PNG (whose unchanged decoding would be palette indices)."""
    return encoded.numel() > 25 and bytes(encoded[:8].tolist()) == _PNG_SIGNATURE and int(encoded[25]) == _PNG_PALETTE


def pil_luma(rgb: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` uint8 RGB to ``(1, H, W)`` uint8 grey exactly as PIL's ``convert("L")``."""
    luma = (rgb.to(torch.int32) * _LUMA_WEIGHTS).sum(dim=0, keepdim=True)
    return ((luma + 32768) >> 16).to(torch.uint8)


class ImageLoader:
    """Open an image file as ``mode`` ("RGB" or "L") with ``decoder``.

    Returns a ``(C, H, W)`` uint8 tensor ("torchvision") or a PIL image ("pil"); the project's transforms take
    either. An undecodable file raises :class:`CorruptDataError` naming it (``on_bad_image="error"``), or, with
    ``"skip"``, is logged once, appended to ``report_file`` when set, and returned as ``None`` (the dataset view
    serves the next image instead, see :class:`~mae.data.transforms.Transformed`); skipping stops with an error
    once more than ``max_bad_fraction`` of the reads (counted per process, from ``1 / max_bad_fraction`` reads
    on) failed. A class rather than a closure so that it pickles into DataLoader worker processes.
    """

    def __init__(
        self, mode: str, decoder: str = "torchvision", on_bad_image: str = "error", max_bad_fraction: float = 0.0
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} must be one of {', '.join(MODES)}")
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image={on_bad_image!r} must be one of {', '.join(BAD_IMAGE_POLICIES)}")
        if not 0.0 <= max_bad_fraction < 1.0:
            raise ValueError(f"max_bad_fraction={max_bad_fraction} must be in [0, 1)")
        self.mode = mode
        self.decoder = check_decoder(decoder)
        self.on_bad_image, self.max_bad_fraction = on_bad_image, float(max_bad_fraction)
        self.report_file: Path | None = None
        self.reads, self.bad = 0, set()

    @classmethod
    def for_channels(cls, in_chans: int, decoder: str, on_bad_image: str, max_bad_fraction: float) -> ImageLoader:
        """The loader of a data module serving ``in_chans`` channels: RGB for 3, greyscale for 1."""
        return cls("RGB" if in_chans == 3 else "L", decoder, on_bad_image, max_bad_fraction)

    def __call__(self, path: str) -> torch.Tensor | Image.Image | None:
        return self._load(path, path)

    def decode_bytes(self, data: bytes | memoryview, name: str) -> torch.Tensor | Image.Image | None:
        """The image encoded in ``data`` (a file's bytes, e.g. from a shard; ``name`` says where it came from in
        errors), exactly as reading that file would give it."""
        return self._load(bytes(data), name)

    def _load(self, source: str | bytes, name: str) -> torch.Tensor | Image.Image | None:
        self.reads += 1
        try:
            return self._decode(source, name)
        except CorruptDataError as error:
            if self.on_bad_image == "error":
                raise
            return self._skip(name, error)

    def _skip(self, path: str, error: CorruptDataError) -> None:
        if path not in self.bad:
            self.bad.add(path)
            log.warning("skipping %s (data.on_bad_image=skip)", error)
            if self.report_file is not None:
                with open(self.report_file, "a") as report:  # one short line per append: whole, across workers
                    report.write(f"{path}\n")
        enough_reads = self.reads * self.max_bad_fraction >= 1
        if len(self.bad) > self.max_bad_fraction * self.reads and (enough_reads or self.max_bad_fraction == 0):
            raise CorruptDataError(
                f"{len(self.bad)} of the {self.reads} images read so far could not be decoded, "
                f"more than data.max_bad_fraction={self.max_bad_fraction}; the last: {error}"
            )
        return None

    def _decode(self, source: str | bytes, name: str) -> torch.Tensor | Image.Image:
        """``source`` is a file's path or its bytes."""
        if self.decoder == "pil":
            return self._decode_pil(source if isinstance(source, str) else io.BytesIO(source), name)
        try:
            if isinstance(source, str):
                encoded = read_file(source)
            else:
                encoded = torch.frombuffer(bytearray(source), dtype=torch.uint8)
            image = decode_image(encoded, mode=ImageReadMode.UNCHANGED)
            if image.shape[0] not in (1, 3) or _is_palette_png(encoded):
                # Grey + alpha, RGBA, CMYK or palette indices: the decoders' own conversion to RGB. Grey and RGB files are taken
                # as they are (a grey file is neither expanded to RGB nor converted back).
                image = decode_image(encoded, mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError) as error:  # torchvision on empty, unknown, corrupt or truncated data
            reason = _CPP_LOCATION.sub("", one_line(error))
            if "Unsupported image file" not in reason:
                raise CorruptDataError(f"cannot decode image {name}: {reason}") from error
            # A format torchvision has no decoder for (BMP, TIFF, PPM): PIL's pixels, as a tensor.
            return F.pil_to_tensor(self._decode_pil(source if isinstance(source, str) else io.BytesIO(source), name))
        if image.dtype != torch.uint8:  # a 16-bit PNG
            image = sixteen_to_eight_bits(image)
        if self.mode == "RGB":
            return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image
        return image if image.shape[0] == 1 else pil_luma(image)

    def _decode_pil(self, source: str | io.BytesIO, name: str) -> Image.Image:
        try:
            with Image.open(source) as img:
                return pil_to_mode(img, self.mode)  # converting decodes the whole file, so truncation shows here
        except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for unreadable/corrupt files
            raise CorruptDataError(f"cannot decode image {name}: {one_line(error)}") from error
