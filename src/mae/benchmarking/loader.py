"""Images/s per data-loading worker of the pre-training pipeline on real JPEG files.

The benchmark writes ImageNet-sized JPEGs (500x375, smooth random colour fields with a fine-grained texture on
top, so that they compress to a realistic size) into a temporary folder and then times, on one thread as in a
DataLoader worker, file -> augmented normalised tensor for:

- ``project``: :class:`mae.data.decoding.ImageLoader` (torchvision's decoder into a uint8 tensor, the data
  modules' default) followed by :func:`mae.data.transforms.pretrain_transform` (RandomResizedCrop(224,
  scale=(0.2, 1), bicubic), flip, normalise), what the project's ImageNet data module runs;
- ``project_pil``: the same with ``decoder="pil"`` (PIL decode and PIL resampling, the reference's pixels);
- ``pil_torchvision``: the plain baseline, PIL + a torchvision transforms v1 ``Compose``;
- ``project_stream``: the same JPEGs as litdata shards (``python -m mae.data.shards``) read through the training
  stream of ``data=imagenet_stream`` (chunk read, the same decoder and transform), in one process.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mae.data.decoding import ImageLoader
from mae.data.image_folder import IMAGENET_MEAN, IMAGENET_STD
from mae.data.transforms import pretrain_transform
from mae.runs.optional import require

IMG_SIZE = 224
CROP_SCALE = (0.2, 1.0)


def write_jpegs(
    folder: Path, count: int, width: int = 500, height: int = 375, seed: int = 0, quality: int = 90, noise: float = 16.0
) -> list[Path]:
    """Write ``count`` JPEGs of ``width x height``: bicubic-upsampled random colour fields plus Gaussian noise of
    std ``noise`` grey levels (at the defaults ~90 KB a file; ImageNet's average is ~110 KB)."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        coarse = rng.integers(0, 256, size=(height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        texture = rng.normal(0, noise, size=(height, width, 3))
        pixels = np.clip(smooth + texture, 0, 255).astype(np.uint8)
        path = folder / f"{index:05d}.JPEG"
        Image.fromarray(pixels).save(path, quality=quality)
        paths.append(path)
    return paths


def project_pipeline(decoder: str = "torchvision") -> Callable[[str], torch.Tensor]:
    """The project's: ``ImageLoader("RGB", decoder)`` + ``pretrain_transform``."""
    load = ImageLoader("RGB", decoder)
    transform = pretrain_transform(IMG_SIZE, CROP_SCALE, True, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    return lambda path: transform(load(path))


def pil_torchvision_pipeline() -> Callable[[str], torch.Tensor]:
    """The baseline: PIL open + convert, torchvision v1 RandomResizedCrop, flip, ToTensor, Normalize."""
    from torchvision import transforms as T

    transform = T.Compose(
        [
            T.RandomResizedCrop(IMG_SIZE, scale=CROP_SCALE, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )

    def run(path: str) -> torch.Tensor:
        with Image.open(path) as img:
            return transform(img.convert("RGB"))

    return run


PIPELINES: dict[str, Callable[[], Callable[[str], torch.Tensor]]] = {
    "project": project_pipeline,
    "project_pil": lambda: project_pipeline("pil"),
    "pil_torchvision": pil_torchvision_pipeline,
}


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one intra-op thread, as in a DataLoader worker process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def images_per_second(pipeline: Callable[[str], torch.Tensor], paths: Sequence[Path]) -> float:
    """One pass over ``paths``: images per second."""
    start = time.perf_counter()
    for path in paths:
        pipeline(str(path))
    return len(paths) / (time.perf_counter() - start)


STREAM = "project_stream"


def write_stream(paths: Sequence[Path], out_dir: Path):
    """``paths`` as litdata shards (the converter's item function, one chunk) and the training stream reading
    them: a callable that serves every image once, decoded and augmented, and returns how many it served."""
    optimize = require("litdata", "streaming", "the streaming loader benchmark").optimize

    from mae.data.shards.writer import encode_item
    from mae.data.streaming import AugmentedShards

    report = out_dir / "unreadable.txt"
    optimize(
        fn=partial(encode_item, report_file=str(report)),
        inputs=[(i, str(p), 0) for i, p in enumerate(paths)],
        output_dir=str(out_dir / "train"),
        chunk_bytes="64MB",
        num_workers=1,
        keep_data_ordered=True,
        verbose=False,
    )
    transform = pretrain_transform(IMG_SIZE, CROP_SCALE, True, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    stream = AugmentedShards(
        str(out_dir / "train"), loader=ImageLoader("RGB"), augment=transform, seed=0, cache_dir=None
    )
    return lambda: sum(1 for _ in stream)


def stream_images_per_second(serve_epoch) -> float:
    start = time.perf_counter()
    count = serve_epoch()
    return count / (time.perf_counter() - start)


def measure_loaders(
    num_images: int = 64, repeats: int = 3, names: Sequence[str] = (*PIPELINES, STREAM), seed: int = 0
) -> list[dict[str, Any]]:
    """Median images/s per worker of each pipeline over ``repeats`` passes, the pipelines interleaved so that
    a change in machine load hits them all alike. Returns ``{pipeline, img_per_s_per_worker, ...}`` dicts."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="mae-bench-jpeg-") as folder:
        paths = write_jpegs(Path(folder), num_images, seed=seed)
        mean_kb = statistics.mean(path.stat().st_size for path in paths) / 1024
        pipelines = {name: PIPELINES[name]() for name in names if name != STREAM}
        stream = write_stream(paths, Path(folder) / "shards") if STREAM in names else None
        rates: dict[str, list[float]] = {name: [] for name in names}
        with one_thread():
            for pipeline in pipelines.values():  # warm-up: first-call costs, file cache
                pipeline(str(paths[0]))
            if stream is not None:
                stream()
            for _ in range(repeats):
                for name, pipeline in pipelines.items():
                    rates[name].append(images_per_second(pipeline, paths))
                if stream is not None:
                    rates[STREAM].append(stream_images_per_second(stream))
    return [
        {
            "pipeline": name,
            "img_per_s_per_worker": statistics.median(values),
            "images": num_images,
            "mean_jpeg_kb": round(mean_kb, 1),
        }
        for name, values in rates.items()
    ]
