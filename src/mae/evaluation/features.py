"""Features of an MAE encoder on whole images (no masking): pooled, per token, and of intermediate blocks.

``extract_features(model, images)`` runs ``model.forward_features`` (the encoder on every patch, then the final
norm) in eval mode and without gradients, batch by batch, and hands the model back in the training mode it had.
Intermediate blocks are read with forward hooks during that same pass, so the final features are exactly
``forward_features``'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from mae.runs.torch_state import eval_mode, model_device_and_dtype

POOLS = ("cls", "avg", "tokens")
"""``cls``: the cls token ``(N, D)``; ``avg``: the mean of the patch tokens ``(N, D)``; ``tokens``: every token,
cls first ``(N, 1 + L, D)``."""


@dataclass(frozen=True)
class Features:
    """What :func:`extract_features` returns: CPU tensors, one row per image in input order, features float32."""

    features: torch.Tensor
    """The encoder's output (after its final norm), pooled as asked: ``(N, D)``, or ``(N, 1 + L, D)`` for tokens."""
    labels: torch.Tensor | None = None
    """``(N,)`` int64 labels of ``(images, labels, ...)`` batches; None for a tensor of images or image batches."""
    layers: dict[int, torch.Tensor] = field(default_factory=dict)
    """The outputs of the requested blocks, pooled like ``features``, keyed by 0-based block index (a negative
    index given counts from the end and is stored as its positive one), in increasing order."""


def check_pool(pool: str) -> str:
    """``pool`` if it is one of :data:`POOLS`, else a one-line ``ValueError`` naming it and the allowed ones."""
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r} is not a feature pooling; use one of {', '.join(map(repr, POOLS))}")
    return pool


def check_layers(layers: Sequence[int] | None, depth: int) -> list[int]:
    """Block indices as sorted, distinct 0-based ones; negative ones count from the end, as Python's do."""
    if layers is None:
        return []
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise ValueError(f"layers={layers!r} must be a list of block indices")
    chosen = set()
    for index in layers:
        if isinstance(index, bool) or not isinstance(index, int) or not -depth <= index < depth:
            raise ValueError(
                f"layers={list(layers)}: {index!r} is not a block index of this {depth}-block encoder "
                f"(use -{depth} to {depth - 1})"
            )
        chosen.add(index % depth)
    return sorted(chosen)


def pool_tokens(tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """``(N, 1 + L, D)`` tokens pooled as :data:`POOLS` says."""
    # The same pooling as mae.evaluation.knn.pool_tokens ("avg" is its "mean"); importing that module here would
    # make `import mae` load torchmetrics.
    if pool == "cls":
        return tokens[:, 0]
    if pool == "avg":
        return tokens[:, 1:].mean(dim=1)
    return tokens


@contextmanager
def block_outputs(model: nn.Module, indices: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """While the block runs, each forward pass of ``model`` puts the output of ``model.blocks[i]`` under ``i``."""
    outputs: dict[int, torch.Tensor] = {}
    hooks = [
        model.blocks[i].register_forward_hook(lambda _module, _args, out, i=i: outputs.__setitem__(i, out))
        for i in indices
    ]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


def image_batches(images: torch.Tensor | Iterable, batch_size: int) -> Iterator[tuple[torch.Tensor, object]]:
    """``(images, labels or None)`` batches of a tensor (split by ``batch_size``) or of an iterable of batches."""
    if isinstance(images, torch.Tensor):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        for batch in images.split(batch_size):
            yield batch, None
        return
    for batch in images:
        if isinstance(batch, torch.Tensor):
            yield batch, None
        elif isinstance(batch, Sequence) and batch and isinstance(batch[0], torch.Tensor):
            yield batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            raise TypeError(
                f"a batch of {type(batch).__name__}: expected an image tensor or an (images, labels, ...) tuple"
            )


def extract_features(
    model: nn.Module,
    images: torch.Tensor | Iterable,
    pool: str = "cls",
    layers: Sequence[int] | None = None,
    batch_size: int = 256,
    norm: bool = False,
) -> Features:
    """Encode ``images`` with every patch visible and pool the tokens.

    Args:
        model: an MAE (:class:`~mae.models.MaskedAutoencoderViT`, or anything with ``forward_features(imgs) ->
            (N, 1 + L, D)`` and a ``blocks`` list); run where it is, in eval mode and without gradients, and left
            in the training mode each of its submodules had.
        images: ``(N, C, H, W)`` normalised images, encoded ``batch_size`` at a time; or an iterable (e.g. a
            ``DataLoader``) of image batches or of ``(images, labels, ...)`` batches, encoded as they come (the
            labels are returned too, ``batch_size`` is then unused).
        pool: ``"cls"``, ``"avg"`` or ``"tokens"``, see :data:`POOLS`.
        layers: blocks whose outputs to return as well (0-based; ``-1`` is the last block).
        batch_size: images per forward pass when ``images`` is a tensor.
        norm: apply the encoder's final norm to the intermediate blocks' outputs too. As in timm's
            ``VisionTransformer.forward_intermediates``, they are the raw block outputs by default, so with
            ``norm=True`` the last block's equals ``features``.

    Returns:
        :class:`Features`; ``features`` for ``pool="tokens"`` is ``model.forward_features(images)``.

    A bad ``pool``, ``layers`` or ``batch_size`` is a one-line ``ValueError`` before any image is encoded.
    """
    check_pool(pool)
    taken = check_layers(layers, len(model.blocks))
    device, dtype = model_device_and_dtype(model)
    features, labels, by_layer = [], [], {i: [] for i in taken}
    with eval_mode(model), torch.no_grad(), block_outputs(model, taken) as outputs:
        for imgs, targets in image_batches(images, batch_size):
            tokens = model.forward_features(imgs.to(device=device, dtype=dtype, non_blocking=True))
            features.append(pool_tokens(tokens, pool).float().cpu())
            for i in taken:
                out = model.norm(outputs[i]) if norm else outputs[i]
                by_layer[i].append(pool_tokens(out, pool).float().cpu())
            if targets is not None:
                labels.append(torch.as_tensor(targets).long().cpu())
    if not features:
        raise ValueError("no images to extract features from")
    if labels and len(labels) != len(features):
        raise ValueError("some batches have labels and some do not")
    return Features(
        torch.cat(features),
        torch.cat(labels) if labels else None,
        {i: torch.cat(chunks) for i, chunks in by_layer.items()},
    )
