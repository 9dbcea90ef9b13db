"""Feature extraction split over the processes of a distributed run and gathered back in dataset order.

Each of ``W`` processes encodes the items ``r, r + W, r + 2W, ...`` of the loader's dataset; the gathered features
are put back in dataset order, so every process ends with the features a single process would have computed,
and an evaluation on them (the kNN vote) is run once on the same numbers whatever the number of processes.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from mae.evaluation.knn import extract_features


def rank_share(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """A loader over items ``rank, rank + world_size, ...`` of ``loader``'s dataset, with its batch settings.

    Every process's share makes the same number of batches: where this one's would make one batch fewer than the
    longest share's (shares differ by at most one item), it ends with an extra batch repeating its last item (the
    first item of the dataset for an empty share), which :func:`gather_in_order` drops. A sharded model (FSDP2)
    needs every process in each forward; the other batches are those of the plain share."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is outside [0, world_size={world_size})")
    dataset = loader.dataset
    total = len(dataset)  # type: ignore[arg-type]
    batch_size = loader.batch_size
    if batch_size is None:
        raise ValueError("the loader has no batch_size; feature extraction split over processes needs one")
    indices = list(range(rank, total, world_size))
    batches = [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]
    longest = -(-len(range(0, total, world_size)) // batch_size)  # the batches of share 0
    if len(batches) < longest:
        batches.append(indices[-1:] or [0])
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        collate_fn=loader.collate_fn,
    )


def interleave(gathered: torch.Tensor, total: int) -> torch.Tensor:
    """``(W, rows, ...)`` shares, share ``r`` holding items ``r, r + W, ...`` padded at its end, to the ``total``
    items in dataset order (row ``i`` of share ``r`` is item ``i * W + r``)."""
    world_size, rows = gathered.shape[:2]
    if rows * world_size < total:
        raise ValueError(f"{world_size} shares of {rows} rows cannot hold {total} items")
    return gathered.transpose(0, 1).reshape(rows * world_size, *gathered.shape[2:])[:total]


def gather_in_order(trainer: L.Trainer, local: torch.Tensor, total: int) -> torch.Tensor:
    """This process's share (see :func:`rank_share`) gathered from every process into dataset order."""
    rows = -(-total // trainer.world_size)
    padded = local.new_zeros(rows, *local.shape[1:])
    padded[: local.shape[0]] = local
    return interleave(trainer.strategy.all_gather(padded), total)


def sharded_features(
    trainer: L.Trainer, model: nn.Module, loader: DataLoader, pool: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~mae.evaluation.knn.extract_features` of the whole ``loader``, computed by all processes of
    ``trainer`` together (every process must call it) and returned to each of them."""
    if trainer.world_size == 1:
        return extract_features(model, loader, pool)
    features, labels = extract_features(model, rank_share(loader, trainer.global_rank, trainer.world_size), pool)
    total = len(loader.dataset)  # type: ignore[arg-type]
    return gather_in_order(trainer, features, total), gather_in_order(trainer, labels, total)
