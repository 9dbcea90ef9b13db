"""``python -m mae.jobs.extract CKPT OUT [data=<group>] [split=test] [key=value ...]``: the encoder's features and the
labels of a whole dataset split (``conf/extract.yaml``).

OUT is a ``.safetensors`` file holding ``features`` (float32), ``labels`` (int64) and, with ``layers=[...]``,
``layer_<i>`` for each block ``i`` (0-based); or a ``.npy`` name, whose stem gets one file per key beside it
(``feats.npy``: ``feats_features.npy``, ``feats_labels.npy``, ``feats_layer_<i>.npy``). Rows are the split's images
in order, unaugmented (the data module's ``eval_train_dataloader()`` or ``val_dataloader()``), encoded with every
patch visible (:func:`mae.evaluation.features.extract_features`).

The split is encoded ``chunk_size`` images at a time; each chunk is written whole (atomically) into ``OUT.parts/``
with the settings in ``OUT.parts/extraction.json``. Run again after an interruption, the command skips the chunks
already there (settings that differ are refused: delete ``OUT.parts`` to start over), then assembles OUT and
removes ``OUT.parts``. Bad input (unknown pool or split, a missing checkpoint, one without encoder weights, an OUT
of another suffix, ...) is one ``error: ...`` line and exit code 2 before any image is encoded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from mae.data.errors import CorruptDataError, check_int, one_line
from mae.evaluation.features import check_layers, check_pool, extract_features
from mae.model_files.checkpoint import check_input_size
from mae.model_files.loading import load
from mae.runs.atomic_files import replaced_atomically, write_text_atomically
from mae.runs.config import compose_in_repo, instantiate_node

SUFFIXES = (".safetensors", ".npy")
SPLIT_LOADERS = {"train": "eval_train_dataloader", "val": "val_dataloader", "test": "test_dataloader"}
"""Each split's unaugmented, in-order loader on the data module."""
MANIFEST = "extraction.json"
LOADER_KEYS = ("batch_size", "num_workers", "pin_memory", "persistent_workers")
"""Data settings that change how images are loaded, not which: a resumed extraction may change them."""
SETUP_ERRORS = (ValueError, TypeError, OSError, HydraException, OmegaConfBaseException)


def check_out(out: Path) -> Path:
    """``out`` if its suffix is known and its folder exists as a writable one or can be created there."""
    if out.suffix not in SUFFIXES:
        raise ValueError(f"OUT={out} must end in {' or '.join(SUFFIXES)}")
    existing = out.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"OUT={out} cannot be written: {existing} is not a writable folder")
    return out


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def output_files(out: Path, keys: list[str]) -> dict[str, Path]:
    """Where each tensor goes: all into OUT for ``.safetensors``, ``<stem>_<key>.npy`` beside it for ``.npy``."""
    if out.suffix == ".safetensors":
        return dict.fromkeys(keys, out)
    return {key: out.with_name(f"{out.stem}_{key}.npy") for key in keys}


def choose_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device={device!r} is not a device ({one_line(error)})") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but no CUDA device is available; use device=cpu or null")
    return chosen


def chunk_loader(loader: DataLoader, start: int, stop: int) -> DataLoader:
    """``loader``'s images ``start`` to ``stop`` (in order) with its batching, workers and collation."""
    return DataLoader(
        Subset(loader.dataset, range(start, stop)),
        batch_size=loader.batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        collate_fn=loader.collate_fn,
    )


def counted(batches: DataLoader, bar: tqdm) -> Iterator[Any]:
    for batch in batches:
        yield batch
        bar.update(len(batch[0]))


def write_chunk(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with replaced_atomically(path) as tmp:
        save_file({key: value.contiguous() for key, value in tensors.items()}, str(tmp))


def start_parts(parts: Path, settings: dict[str, Any]) -> None:
    """Create ``parts`` for ``settings``, or check that the chunks already there were made with the same ones."""
    manifest = parts / MANIFEST
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        changed = next((key for key in sorted(set(found) | set(settings)) if found.get(key) != settings.get(key)), None)
        if changed is not None:
            raise ValueError(
                f"{parts} holds chunks of another extraction ({changed}: {found.get(changed)!r} there, "
                f"{settings.get(changed)!r} now); run with its settings or delete it to start over"
            )
        return
    parts.mkdir(parents=True, exist_ok=True)
    write_text_atomically(manifest, json.dumps(settings, indent=2, sort_keys=True))


def assemble(parts: Path, num_chunks: int, out: Path) -> dict[str, torch.Tensor]:
    """Concatenate the chunks into OUT (each file written atomically) and remove ``parts``."""
    chunks = [load_file(str(parts / chunk_name(index))) for index in range(num_chunks)]
    tensors = {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}
    files = output_files(out, list(tensors))
    if out.suffix == ".safetensors":
        write_chunk(out, tensors)
    else:
        for key, path in files.items():
            with replaced_atomically(path) as tmp:
                np.save(tmp, tensors[key].numpy())
    shutil.rmtree(parts)
    return tensors


def chunk_name(index: int) -> str:
    return f"chunk_{index:06d}.safetensors"


def run_settings(cfg: DictConfig, ckpt_path: Path, layers: list[int], num_images: int) -> dict[str, Any]:
    """What decides the chunks' content: a resumed extraction must have the same (loader settings may change)."""
    data = {
        key: value for key, value in OmegaConf.to_container(cfg.data, resolve=True).items() if key not in LOADER_KEYS
    }
    stat = ckpt_path.stat()
    return {
        "checkpoint": str(ckpt_path.resolve()),
        "checkpoint_bytes": stat.st_size,
        "checkpoint_mtime_ns": stat.st_mtime_ns,
        "data": data,
        "split": str(cfg.split),
        "pool": str(cfg.pool),
        "layers": layers,
        "norm_layers": bool(cfg.norm_layers),
        "chunk_size": int(cfg.chunk_size),
        "num_images": num_images,
    }


def encode_chunks(model: nn.Module, loader: DataLoader, parts: Path, cfg: DictConfig, layers: list[int]) -> int:
    """Write every chunk of ``loader``'s images that ``parts`` lacks; returns the number of chunks."""
    num_images, chunk_size = len(loader.dataset), int(cfg.chunk_size)
    starts = range(0, num_images, chunk_size)
    missing = [index for index in range(len(starts)) if not (parts / chunk_name(index)).is_file()]
    done = num_images - sum(min(chunk_size, num_images - starts[index]) for index in missing)
    with tqdm(total=num_images, initial=done, unit="img", desc=f"{cfg.split} features", mininterval=1.0) as bar:
        for index in missing:
            batches = chunk_loader(loader, starts[index], min(starts[index] + chunk_size, num_images))
            result = extract_features(
                model, counted(batches, bar), pool=str(cfg.pool), layers=layers, norm=bool(cfg.norm_layers)
            )
            tensors = {
                "features": result.features,
                "labels": result.labels,
                **{f"layer_{i}": value for i, value in result.layers.items()},
            }
            write_chunk(parts / chunk_name(index), tensors)
    return len(starts)


def extract(cfg: DictConfig, ckpt_path: Path, out: Path) -> dict[str, torch.Tensor]:
    """Check every setting, load model and data, then encode the split chunk by chunk into OUT; returns the
    tensors written. Bad settings are raised (one line) before any image is encoded."""
    check_out(out)
    check_pool(str(cfg.pool))
    if cfg.split not in SPLIT_LOADERS:
        raise ValueError(f"split={cfg.split!r} is not a split; use one of {', '.join(map(repr, SPLIT_LOADERS))}")
    check_int("chunk_size", cfg.chunk_size, 1)
    layers = OmegaConf.to_container(cfg.layers) if isinstance(cfg.layers, ListConfig) else cfg.layers
    device = choose_device(cfg.device)
    model = load(ckpt_path, fallback=cfg.model, use_stated=bool(cfg.use_run_config)).model
    layers = check_layers([layers] if isinstance(layers, int) else layers, len(model.blocks))
    datamodule = instantiate_node(cfg.data)
    check_input_size((model.img_size, model.in_chans), datamodule, ckpt_path)
    loader = getattr(datamodule, SPLIT_LOADERS[cfg.split])()
    num_images = len(loader.dataset)
    if num_images == 0:
        raise ValueError(f"the {cfg.split} split of data {cfg.data._target_} has no images")
    parts = parts_dir(out)
    start_parts(parts, run_settings(cfg, ckpt_path, layers, num_images))
    num_chunks = encode_chunks(model.to(device), loader, parts, cfg, layers)
    return assemble(parts, num_chunks, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mae.jobs.extract",
        description=__doc__ + "\n\nSee conf/extract.yaml for the keys.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "ckpt",
        type=Path,
        help="anything mae.load_model reads: this project's .ckpt or "
        ".safetensors export, a reference MAE .pth, a timm ViT state_dict, "
        "a transformers ViTMAE/ViT directory",
    )
    parser.add_argument(
        "out", type=Path, help="the file to write: OUT.safetensors, or OUT.npy for OUT_features.npy and OUT_labels.npy"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="config overrides, e.g. data=cifar10 split=train pool=avg layers=[-4,-1] chunk_size=8192",
    )
    args = parser.parse_args(argv)
    try:
        cfg = compose_in_repo("extract", args.overrides)
        tensors = extract(cfg, args.ckpt, args.out)
    except (*SETUP_ERRORS, CorruptDataError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"interrupted: run the same command again to continue from the chunks in {parts_dir(args.out)}",
            file=sys.stderr,
        )
        return 130
    shape = "x".join(map(str, tensors["features"].shape))
    print(
        f"wrote features ({shape}) and labels of the {cfg.split} split to "
        f"{', '.join(sorted({str(path) for path in output_files(args.out, list(tensors)).values()}))}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
