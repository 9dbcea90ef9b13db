"""FSDP2 (torch's ``fully_shard``) for the MAE: one unit per transformer block, and plain copies of a sharded
model (FSDP2 refuses ``copy.deepcopy``)."""

from __future__ import annotations

import copy
import weakref

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

_UNSHARDED_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()
"""Copies of models, parameters on the meta device, taken before FSDP2 sharded them; keyed by the model."""


def remember_unsharded_layout(model: nn.Module) -> None:
    """Keep a copy of ``model`` with its parameters on the meta device (no memory for them); call it just before
    sharding ``model`` with FSDP2's ``fully_shard``, which forbids deep copies, so that :func:`unsharded_copy` can
    still build plain copies of it."""
    memo = {
        id(param): nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
        for param in model.parameters()
    }
    _UNSHARDED_LAYOUTS[model] = copy.deepcopy(model, memo)


def unsharded_copy(model: nn.Module) -> nn.Module:
    """A plain copy of ``model`` with its full weights, on the CPU. An FSDP2-sharded ``model`` (whose layout
    :func:`remember_unsharded_layout` kept) is gathered from its shards: every process must call this then."""
    if not isinstance(model, FSDPModule):
        return copy.deepcopy(model).cpu()
    layout = _UNSHARDED_LAYOUTS.get(model)
    if layout is None:
        raise TypeError(
            f"{type(model).__name__} is sharded with FSDP2, which cannot be copied; call "
            "remember_unsharded_layout(model) before fully_shard"
        )
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # Gathered on every process (offloading to the CPU here would give the full weights to rank 0 only).
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    copied = copy.deepcopy(layout)
    # assign: the gathered tensors replace the meta parameters (copied, so that nothing aliases the model).
    copied.load_state_dict(
        {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}, strict=True, assign=True
    )
    return copied


def shard_blocks(model: nn.Module, mesh: DeviceMesh) -> None:
    """Shard ``model`` in place over ``mesh``: one unit per transformer block, so that only one block's parameters
    are gathered at a time, and a root unit for the rest (embeddings, norms, decoder projections)."""
    remember_unsharded_layout(model)
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # Callbacks encode with forward_features (kNN): it must gather the parameters as forward does.
    register_fsdp_forward_method(model, "forward_features")
