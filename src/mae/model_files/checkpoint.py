"""Checkpoint checks that turn shape and key mismatches into one-line errors before any work starts."""

from __future__ import annotations

import argparse
import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from mae.runs.atomic_files import replaced_atomically

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit the model; the message says which and why."""


ALLOWED_GLOBALS = (argparse.Namespace,)
"""The one class a checkpoint may ask for beyond tensors and plain containers: the reference MAE's ``.pth`` files
store their command line as an ``argparse.Namespace``."""

_GLOBAL_IN_ERROR = re.compile(r"GLOBAL (\S+) was not an allowed global")


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint asks to run or build something other than tensors and plain containers; nothing was run."""


def load_checkpoint_file(path: str | Path) -> dict:
    """Load a checkpoint onto the CPU without executing anything it holds.

    Every checkpoint the project reads comes through here: ``torch.load(weights_only=True)`` with
    ``argparse.Namespace`` as the only extra class allowed. A file that asks for any other global (a class to
    build, a function to call) is refused with one line naming the global, before anything is built; a missing or
    unreadable file is one line too.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _GLOBAL_IN_ERROR.search(str(error))
        if found is None:
            raise CheckpointError(f"cannot read checkpoint {path}: {_unpickler_reason(error)}") from error
        raise UnsafeCheckpointError(
            f"checkpoint {path} asks for the global {found.group(1)}, which this project never loads (allowed: "
            "tensors, plain containers and argparse.Namespace); nothing in the file was run"
        ) from error
    except Exception as error:  # torch raises many kinds for a truncated or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(error)}") from error


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _unpickler_reason(error: Exception) -> str:
    """torch's own reason, without its advice to load the file with ``weights_only=False``."""
    for line in str(error).splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip()
    return _first_line(error)


def check_shapes(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise on the first key both have whose shapes differ, naming the key and both shapes."""
    for key, tensor in state_dict.items():
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(tensor.shape)}, this model expects {tuple(expected[key].shape)}"
            )


def check_state_dict_shapes(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise on the first key whose shape differs, and on missing or unexpected keys, naming them."""
    check_shapes(state_dict, expected, source)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit this model: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )


def check_input_size(trained: tuple[int, int], datamodule, path: str | Path) -> None:
    """A checkpoint trained on ``(img_size, in_chans)`` images must be fed images the data module serves alike."""
    served = (datamodule.img_size, datamodule.in_chans)
    if tuple(trained) != served:
        raise CheckpointError(
            f"checkpoint {path} takes {trained[0]} px images with {trained[1]} channels, but "
            f"the data serves {served[0]} px with {served[1]}; choose the data group it was "
            f"trained on (data=...) or set data.img_size={trained[0]} data.in_chans={trained[1]}"
        )


def check_resume_checkpoint(path: str | Path, module: torch.nn.Module) -> None:
    """Make sure a Lightning checkpoint can resume ``module`` before the trainer starts."""
    checkpoint = load_checkpoint_file(path)
    if "state_dict" not in checkpoint or "loops" not in checkpoint:
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning training checkpoint (no state_dict/loops); "
            "resume from <run dir>/checkpoints/last.ckpt"
        )
    check_state_dict_shapes(checkpoint["state_dict"], module.state_dict(), f"checkpoint {path}")


def model_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The model weights of any checkpoint this project reads, under reference (timm) names.

    Accepts a reference MAE ``.pth`` dict (weights under ``model``), this project's Lightning checkpoint
    (under ``state_dict``, prefixed ``model.``) or a plain state_dict such as timm's.
    """
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        return {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        return dict(checkpoint["model"])
    return dict(checkpoint)


def interpolate_pos_embed(
    pos_embed: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Resize a ``(1, prefix + h*w, D)`` position table to another grid, keeping the prefix (cls) rows.

    The grid rows are resized bicubically (``align_corners=False``), as the reference does for fine-tuning at
    another resolution; at the original size the table comes back unchanged.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = int(round(grid.shape[1] ** 0.5))
    if old * old != grid.shape[1]:
        raise CheckpointError(f"pos_embed has {grid.shape[1]} grid rows, not a square grid")
    if (old, old) == tuple(grid_size):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid.float(), size=tuple(grid_size), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def load_encoder_weights(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, grid_size: tuple[int, int]
) -> tuple[list[str], list[str]]:
    """Load the weights ``model`` has names for, resizing ``pos_embed`` to ``grid_size`` when it differs.

    Returns the model's keys the checkpoint lacks and the checkpoint's keys the model lacks, for the caller to
    report by name; a tensor of another shape is a :class:`CheckpointError` naming the key and both shapes.
    """
    state = dict(state_dict)
    if "pos_embed" in state:
        state["pos_embed"] = interpolate_pos_embed(state["pos_embed"], grid_size)
    expected = model.state_dict()
    decoder_table = state.get("decoder_pos_embed")
    if (
        decoder_table is not None
        and "decoder_pos_embed" in expected
        and decoder_table.shape != expected["decoder_pos_embed"].shape
    ):
        # A fixed sin-cos table: the model's own one for the new grid is exact, so the file's is dropped.
        del state["decoder_pos_embed"]
    check_shapes(state, expected, source)
    result = model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return sorted(result.missing_keys), sorted(set(state) - set(expected))


def export_timm_encoder(model: torch.nn.Module, path: str | Path) -> Path:
    """Write the MAE encoder as a timm ``VisionTransformer`` state_dict (``num_classes=0``).

    ``timm.create_model("vit_base_patch16_224", num_classes=0, checkpoint_path=path)`` (the matching preset for
    other sizes) then gives the same features as ``model.forward_features``.
    """
    return _save_tensors(model.encoder_state_dict(), path)


def export_timm_state_dict(model: torch.nn.Module, path: str | Path) -> Path:
    """Write a timm model's state_dict (e.g. a fine-tuned classifier, head included) for ``timm.create_model(...,
    checkpoint_path=path)``."""
    return _save_tensors(model.state_dict(), path)


def _save_tensors(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    with replaced_atomically(path) as tmp:
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
    return Path(path)
