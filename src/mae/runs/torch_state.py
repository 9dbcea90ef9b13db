"""A model's device, dtype and train/eval mode, and the global random state: read, or set for a block and given
back as they were."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and give every submodule back its own previous mode.

    ``model.train(was_training)`` would not do: it sets one mode for all submodules, which would undo, say,
    a frozen BatchNorm that the caller had deliberately left in eval mode.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def preserved_rng(device: torch.device | str | None = None) -> Iterator[None]:
    """Restore the global CPU random state (and that of ``device``, if a GPU) when the block ends.

    Evaluation draws random numbers without asking: every ``DataLoader`` iteration takes its base seed from
    the global generator. Fenced in here, running an evaluation does not change what training draws next.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    gpus = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        yield


def model_device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device of the model's first parameter and dtype of its first floating-point one.

    Inputs are cast to that dtype so that a model held in half precision (e.g. Lightning's ``bf16-true``)
    can be called outside the trainer's precision plugin.
    """
    params = list(model.parameters())
    if not params:
        return torch.device("cpu"), torch.float32
    dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)
    return params[0].device, dtype
