"""How long one update of the reconstruction demo takes on the server: a photo-sized upload decoded and fitted to
the model, masked, encoded and decoded, and its four pictures encoded as the PNG files the page fetches."""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mae.benchmarking.step import build_model
from mae.demo.reconstruction import DemoModel
from mae.demo.session import UPLOAD, DemoLimits, DemoSession

UPLOAD_SIZE = (640, 480)
"""A phone-photo-sized upload: its decoding and resizing are part of an update."""


def photo(path: Path, size: tuple[int, int] = UPLOAD_SIZE) -> Path:
    """A smooth RGB picture (gradients and noise) saved as PNG, the size of a typical upload."""
    width, height = size
    rng = np.random.default_rng(0)
    ramps = np.stack(np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height)), axis=-1)
    pixels = np.concatenate([ramps, ramps[..., :1] * ramps[..., 1:]], axis=-1) * 200
    pixels += rng.integers(0, 55, (height, width, 3))
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def measure_demo_update(preset: str, repeats: int, warmup: int = 2, **model_kwargs: Any) -> dict[str, Any]:
    """Median seconds of one update (a new mask seed each time, as a user moving the seed would ask for)."""
    torch.manual_seed(0)
    model = build_model(preset, **model_kwargs).eval()
    demo = DemoModel(model, preset, "the preset", (0.5,) * model.in_chans, (0.25,) * model.in_chans)
    session = DemoSession(demo, [], DemoLimits(display_size=224, max_bytes=2**26, max_pixels=10**8))
    timings = []
    with tempfile.TemporaryDirectory() as folder:
        source = (UPLOAD, str(photo(Path(folder) / "upload.png")))
        for seed in range(warmup + repeats):
            start = time.perf_counter()
            update = session.update(source, 0.75, seed)
            for picture in update.views.pictures():
                picture.save(io.BytesIO(), format="PNG")
            timings.append(time.perf_counter() - start)
    return {
        "preset": preset,
        "s_per_update": statistics.median(timings[warmup:]),
        "upload": "x".join(map(str, UPLOAD_SIZE)),
        "img_size": model.img_size,
        "in_chans": model.in_chans,
        "threads": torch.get_num_threads(),
    }
