"""Checkpoint checks that turn shape and key mismatches into one-line errors before any work starts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit the model; the message says which and why."""


def load_checkpoint_file(path: str | Path, weights_only: bool = True) -> dict:
    """Load a checkpoint onto the CPU, with a one-line error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # torch raises many kinds for a truncated or foreign file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from error


def check_state_dict_shapes(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                            source: str) -> None:
    """Raise on the first key whose shape differs, and on missing or unexpected keys, naming them."""
    for key, tensor in state_dict.items():
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{source}: {key} has shape {tuple(tensor.shape)}, "
                                  f"this model expects {tuple(expected[key].shape)}")
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit this model: missing keys {missing[:8]}"
                              f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                              f"{' ...' if len(unexpected) > 8 else ''}")


def check_resume_checkpoint(path: str | Path, module: torch.nn.Module) -> None:
    """Make sure a Lightning checkpoint can resume ``module`` before the trainer starts."""
    checkpoint = load_checkpoint_file(path, weights_only=False)
    if "state_dict" not in checkpoint or "loops" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} is not a Lightning training checkpoint (no state_dict/loops); "
                              "resume from <run dir>/checkpoints/last.ckpt")
    check_state_dict_shapes(checkpoint["state_dict"], module.state_dict(), f"checkpoint {path}")
