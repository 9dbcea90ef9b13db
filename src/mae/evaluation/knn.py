"""Weighted k-nearest-neighbour evaluation of a frozen encoder (InstDisc / DINO protocol).

Features are L2-normalised, so a dot product is the cosine similarity; each query takes its ``k`` most similar
training samples and every neighbour votes for its class with weight ``exp(similarity / temperature)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.eval_frame import OptimizedModule
from torch.distributed.fsdp import FSDPModule
from torchmetrics.functional.classification import multiclass_accuracy

from mae.runs.torch_state import eval_mode, model_device_and_dtype

POOLS = ("cls", "mean")
DEFAULT_CHUNK_SIZE = 1024


def check_pool(pool: str) -> str:
    """Return ``pool`` if it is a known pooling mode, else raise a one-line ``ValueError``."""
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r} is not a feature pooling mode; use one of {', '.join(map(repr, POOLS))}")
    return pool


def pool_tokens(tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """``(N, 1 + L, D)`` encoder tokens to ``(N, D)``: the cls token, or the mean of the patch tokens."""
    check_pool(pool)
    return tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(dim=1)


def extract_features(
    model: nn.Module,
    loader: Iterable,
    pool: str = "cls",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode every ``(images, labels)`` batch of ``loader`` with ``model.forward_features``.

    Args:
        model: an MAE (anything with ``forward_features(imgs) -> (N, 1 + L, D)``); left in the training
            mode it had.
        loader: yields ``(images, labels)`` batches.
        pool: ``"cls"`` takes the cls token, ``"mean"`` averages the patch tokens.
        device: where to run the encoder; the model's own device when omitted. The model is not moved.

    Returns:
        L2-normalised float32 features ``(N, D)`` and int64 labels ``(N,)``, both on ``device``.
    """
    check_pool(pool)
    model_device, dtype = model_device_and_dtype(model)
    device = model_device if device is None else torch.device(device)
    features, labels = [], []
    with eval_mode(model), torch.no_grad():
        for batch in loader:
            imgs, targets = batch[0], batch[1]
            tokens = model.forward_features(imgs.to(device=device, dtype=dtype, non_blocking=True))
            # Normalise in float32: half-precision norms of wide features lose the small differences kNN uses.
            features.append(F.normalize(pool_tokens(tokens, pool).float(), dim=1))
            labels.append(torch.as_tensor(targets, device=device).long())
    if not features:
        raise ValueError("the loader yielded no batches; kNN evaluation needs labelled images")
    return torch.cat(features), torch.cat(labels)


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Class scores ``(Nq, num_classes)`` of a similarity-weighted kNN vote.

    A neighbour with cosine similarity ``s`` adds ``exp(s / temperature)`` to its class, up to a per-query
    factor (see below); the predicted class is the highest score.

    Args:
        train_features: ``(Nt, D)`` L2-normalised bank of training features.
        train_labels: ``(Nt,)`` integer labels in ``[0, num_classes)``.
        query_features: ``(Nq, D)`` L2-normalised features to classify.
        num_classes: number of classes.
        k: neighbours per query; clamped to ``Nt`` so that small banks still work.
        temperature: softness of the vote; small values let the nearest neighbour dominate.
        chunk_size: queries handled at once, bounding the ``chunk_size x Nt`` similarity matrix.
    """
    if train_features.ndim != 2 or query_features.ndim != 2 or train_features.shape[1] != query_features.shape[1]:
        raise ValueError(
            f"feature shapes {tuple(train_features.shape)} and {tuple(query_features.shape)} "
            "are not (N, D) with a common D"
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"train_labels has shape {tuple(train_labels.shape)}, expected ({train_features.shape[0]},)")
    if train_features.shape[0] == 0:
        raise ValueError("the training feature bank is empty")
    for name, value in (("num_classes", num_classes), ("k", k), ("chunk_size", chunk_size)):
        if value < 1:
            raise ValueError(f"{name}={value} must be at least 1")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive")
    if int(train_labels.min()) < 0 or int(train_labels.max()) >= num_classes:
        raise ValueError(
            f"train labels span [{int(train_labels.min())}, {int(train_labels.max())}], outside [0, {num_classes})"
        )

    k = min(k, train_features.shape[0])
    bank = train_features.float().t()
    bank_labels = train_labels.long().to(bank.device)
    scores = []
    for queries in query_features.float().to(bank.device).split(chunk_size):
        similarity, indices = (queries @ bank).topk(k, dim=1)
        # exp(sim / T) shifted by the query's top similarity: each query's scores shrink by one common factor,
        # which leaves its ranking unchanged, and a tiny temperature no longer overflows to inf.
        weights = ((similarity - similarity[:, :1]) / temperature).exp()
        votes = torch.zeros(queries.shape[0], num_classes, device=bank.device)
        # Summing weights per class index is the one-hot-times-weights sum of the reference, without the
        # (chunk, k, num_classes) one-hot tensor.
        scores.append(votes.scatter_add_(1, bank_labels[indices], weights))
    if not scores:
        return torch.zeros(0, num_classes, device=bank.device)
    return torch.cat(scores)


def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> float:
    """Top-1 accuracy in ``[0, 1]`` of :func:`knn_predict` on the labelled queries."""
    if num_classes < 2:
        # torchmetrics' multiclass metrics need two classes, and with one the score would be meaningless.
        raise ValueError(f"num_classes={num_classes}: kNN accuracy needs at least 2 classes")
    if query_features.shape[0] == 0:
        raise ValueError("there are no query features to classify")
    scores = knn_predict(train_features, train_labels, query_features, num_classes, k, temperature, chunk_size)
    targets = query_labels.long().to(scores.device)
    return float(multiclass_accuracy(scores, targets, num_classes=num_classes, average="micro"))


def evaluate_encoder(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    pool: str = "cls",
    device: torch.device | str | None = None,
) -> float:
    """kNN top-1 on ``val_loader`` with a feature bank from ``train_loader``, both encoded by ``model``."""
    train_features, train_labels = extract_features(model, train_loader, pool, device)
    val_features, val_labels = extract_features(model, val_loader, pool, device)
    return knn_top1(train_features, train_labels, val_features, val_labels, num_classes, k, temperature)


def random_init_model(model: nn.Module, seed: int = 0) -> nn.Module:
    """A newly built model of ``model``'s architecture, initialised from ``seed``: the random-init baseline.

    The baseline is ``cls(**model.init_kwargs)`` for ``model``'s own class: the constructor, and so the
    initialisation, a training run starts from (for the MAE the paper's: xavier-uniform Linears and patch
    projection, normal(0.02) cls and mask tokens, fixed sin-cos tables, the patch projection's default bias).
    Nothing is copied from ``model``, which is untouched: trained values that an ``initialize_weights()`` call
    would leave in place (the patch projection's bias) cannot leak into it.

    It is built on the CPU from a generator seeded with ``seed``, so the same seed gives the same weights on any
    device, inside ``fork_rng``, so the caller's random streams are left exactly where they were (only the CPU
    generator is seeded: ``torch.manual_seed`` would reseed the GPUs' too). Each parameter and buffer is then
    moved to the device and dtype of its counterpart in ``model``, and the baseline is returned in eval mode.

    ``model`` may be wrapped by ``torch.compile`` (its ``_orig_mod`` is rebuilt; the baseline is not compiled)
    or sharded by FSDP2 (the baseline is a plain, unsharded model). No collective is involved: each process can
    build it on its own, and all processes get the same weights.
    """
    if isinstance(model, OptimizedModule):
        model = model._orig_mod
    init_kwargs = getattr(model, "init_kwargs", None)
    if not isinstance(init_kwargs, Mapping):
        raise TypeError(
            f"{type(model).__name__} keeps no init_kwargs (its constructor's arguments) to build a fresh model from"
        )
    # fully_shard swaps a module's class for a subclass of FSDPModule and it; build the class it swapped out.
    cls = next(base for base in type(model).__mro__ if not issubclass(base, FSDPModule))
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.random.default_generator.manual_seed(seed)
        baseline = cls(**init_kwargs)
    trained = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name, tensor in [*baseline.named_parameters(), *baseline.named_buffers()]:
            if name not in trained:
                raise TypeError(
                    f"{cls.__name__}(**init_kwargs) has {name!r}, which the trained {type(model).__name__} lacks"
                )
            tensor.data = tensor.data.to(device=trained[name].device, dtype=trained[name].dtype)
    return baseline.eval()
