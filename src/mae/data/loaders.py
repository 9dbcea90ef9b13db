"""Which samples are served, in what order: epoch-seeded shuffling, fixed subsets and the loaders built on them.

Every random choice here comes from a local ``torch.Generator`` seeded from the configuration, never from the
global RNG, so data order and subsets are reproducible across processes, resumes and unrelated code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from mae.data.errors import TooFewImagesError, check_int, check_optional_limit


def mixed_seed(*values: int) -> int:
    """A well-mixed 64-bit seed from several non-negative ints (``seed + epoch`` would make (0, 1) == (1, 0))."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0])


def sample_seed(*values: int) -> int:
    """A sample's 62-bit seed from ``(seed, epoch, index)``-like values; it fits a collated int64 tensor."""
    return mixed_seed(*values) >> 2


def seeded_permutation(n: int, seed: int) -> torch.Tensor:
    """A random permutation of ``range(n)`` that depends on ``seed`` only."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(mixed_seed(seed)))


def seeded_subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """The first ``limit`` items of a fixed seeded permutation of ``dataset``; all of it when ``limit`` is None
    or not smaller than the dataset (a cap, so small test datasets work with the production configs)."""
    size = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= size:
        return dataset
    return Subset(dataset, seeded_permutation(size, seed)[:limit].tolist())


class EpochSeededSampler(DistributedSampler):
    """Shuffles ``range(num_samples)`` anew each epoch, gives every sample an augmentation seed, and hands process
    ``rank`` of ``num_replicas`` its share; order and seeds of epoch ``e`` are a pure function of ``(seed, e)``.

    Yields ``(index, sample_seed)`` pairs, which :class:`~mae.data.transforms.Transformed` understands. The
    epoch's order is cut to a multiple of ``num_replicas`` and process ``r`` serves its positions ``r, r + W, ...``:
    batch ``k`` of all processes together holds the positions that batch ``k`` of one process with a ``W`` times
    larger batch holds, so a run computes the same thing on any number of processes (masks come from the sample
    seeds too). Lightning calls :meth:`set_epoch` at every epoch start, and the loaders start at the trainer's
    current epoch, so a run resumed from a checkpoint at an epoch boundary sees exactly the images and crops of an
    uninterrupted one, whatever the number of workers. A run resumed mid-epoch starts with ``skip`` samples of its
    first epoch's order already served (by all processes together): it sees the rest of that epoch, then whole
    epochs.

    A ``DistributedSampler`` only by type (its constructor is not used): that is how Lightning knows the loader is
    already split over the processes and leaves it alone; its own replacement would reshuffle the order.
    """

    def __init__(
        self, num_samples: int, seed: int, epoch: int = 0, skip: int = 0, rank: int = 0, num_replicas: int = 1
    ) -> None:
        self.num_samples = check_int("num_samples", num_samples, 0)
        self.seed = check_int("seed", seed, 0)
        self.epoch = check_int("epoch", epoch, 0)
        self.resumed_epoch, self.skip = self.epoch, check_int("skip", skip, 0)
        self.num_replicas = check_int("num_replicas", num_replicas, 1)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} is outside [0, num_replicas={num_replicas})")
        self.rank = rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_int("epoch", epoch, 0)

    @property
    def served_per_epoch(self) -> int:
        """Samples of an epoch's order that the processes serve: a multiple of ``num_replicas``."""
        return self.num_samples - self.num_samples % self.num_replicas

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(mixed_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        sample_seeds = torch.randint(0, 2**62, (self.num_samples,), generator=generator).tolist()
        start = self.skip if self.epoch == self.resumed_epoch else 0
        served = list(zip(order, sample_seeds))[start : self.served_per_epoch]
        return iter(served[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.served_per_epoch // self.num_replicas


class TrainLoader(DataLoader):
    """The training loader, stateful for Lightning so that it goes into checkpoints.

    Where a resumed run continues is a pure function of (seed, epoch, batches done), and the trainer's restored
    progress holds the last two (see :func:`resume_position`); the state holds what fixes the order, so that
    resuming with another seed, training set or global batch, which would silently continue a different order, is
    refused with one line. The number of processes may change if the global batch does not.
    """

    def __init__(self, dataset: Dataset, *, order_seed: int, global_batch_size: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.order_seed, self.global_batch_size = order_seed, global_batch_size

    def state_dict(self) -> dict[str, int]:
        return {
            "seed": self.order_seed,
            "num_samples": len(self.dataset),  # type: ignore[arg-type]
            "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        state = dict(state)
        if "batch_size" in state:  # written before global batches: by one process
            state["global_batch_size"] = state.pop("batch_size")
        current = self.state_dict()
        changed = {key: (value, current.get(key)) for key, value in state.items() if current.get(key) != value}
        if changed:
            shown = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
            raise ValueError(
                f"the checkpoint's training order does not fit this run's data ({shown}); resume with "
                "the data settings and seed it was trained with"
            )


@dataclass(frozen=True)
class Splits:
    """The datasets a data module serves, built in its ``setup()``."""

    train: Dataset
    """Training split (possibly a subset) with the training augmentation."""
    train_eval: Dataset
    """The whole training split (without the held-out images) with the eval transform (kNN memory bank)."""
    val: Dataset
    """The validation split with the eval transform: images held out of the training split, on which every
    per-epoch curve and every choice is made (the test split when there is none, see ``val_is_test``)."""
    test: Dataset
    """The dataset's evaluation split (its official test or validation images) with the eval transform: the
    number a run reports, evaluated once at its end."""
    val_is_test: bool = False
    """No images are held out: the validation split is the test split (results files say so)."""


@dataclass(frozen=True)
class LoaderSettings:
    """How a data module turns its :class:`Splits` into loaders; validated on construction."""

    batch_size: int
    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    seed: int
    knn_train_samples: int | None
    knn_val_samples: int | None
    collate_fn: Callable[[list[Any]], Any] | None = None
    """How a list of samples becomes a batch; None: PyTorch's default (stacked tensors). Detection keeps lists."""

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size, 1)
        check_int("num_workers", self.num_workers, 0)
        check_int("seed", self.seed, 0)
        check_optional_limit("knn_train_samples", self.knn_train_samples)
        check_optional_limit("knn_val_samples", self.knn_val_samples)

    def _loader(self, dataset: Dataset, loader: type[DataLoader] = DataLoader, **kwargs) -> DataLoader:
        return loader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # DataLoader refuses persistent workers without workers; the flag is meaningless then anyway.
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=self.collate_fn,
            **kwargs,
        )

    def train_loader(
        self, splits: Splits, epoch: int = 0, batches_done: int = 0, rank: int = 0, world_size: int = 1
    ) -> DataLoader:
        """Process ``rank`` of ``world_size``'s augmented training images, reshuffled per epoch by
        :class:`EpochSeededSampler`, full batches only.

        ``epoch`` is the epoch the loader is first iterated in: Lightning takes the first batch of a resumed run
        before it calls ``set_epoch``. ``batches_done`` batches of that epoch were trained by each process before
        an interruption (see :func:`resume_position`) and are not served again.
        """
        size = len(splits.train)  # type: ignore[arg-type]
        global_batch = self.batch_size * world_size
        if size < global_batch:
            # With drop_last an epoch would be empty and training would silently do nothing.
            raise TooFewImagesError(
                f"the training set has {size} images, fewer than batch_size={self.batch_size} x "
                f"{world_size} process(es); lower schedule.batch_size to at most "
                f"{max(size // world_size, 1)} or train on more images"
            )
        sampler = EpochSeededSampler(
            size, self.seed, epoch, skip=batches_done * global_batch, rank=rank, num_replicas=world_size
        )
        return self._loader(
            splits.train,
            TrainLoader,
            sampler=sampler,
            drop_last=True,
            order_seed=self.seed,
            global_batch_size=global_batch,
        )

    def eval_loader(self, dataset: Dataset) -> DataLoader:
        """Unaugmented images in dataset order, every image served."""
        return self._loader(dataset, shuffle=False, drop_last=False)

    def knn_loaders(self, splits: Splits, split: str = "val") -> tuple[DataLoader, DataLoader]:
        """(bank, queries) loaders for kNN evaluation: the training images and the ``split`` ("val" or "test")
        images, each capped by a fixed seeded subset."""
        queries = {"val": splits.val, "test": splits.test}[split]
        train = seeded_subset(splits.train_eval, self.knn_train_samples, self.seed)
        return self.eval_loader(train), self.eval_loader(seeded_subset(queries, self.knn_val_samples, self.seed))


def process_slot(module: L.LightningDataModule) -> tuple[int, int]:
    """(global rank, world size) of the process a data module's trainer runs in; ``(0, 1)`` without a trainer."""
    trainer = module.trainer
    return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)


def resume_position(module: L.LightningDataModule, batches_per_epoch: int) -> tuple[int, int]:
    """(epoch, batches of it already trained by each process) where a data module's trainer starts: ``(0, 0)``
    without a trainer, ``(e, 0)`` at an epoch boundary, ``(e, k)`` for a run resumed from a checkpoint saved after
    ``k`` batches of epoch ``e`` (what the restored loop progress says; Lightning itself would serve those batches
    again)."""
    trainer = module.trainer
    if trainer is None:
        return 0, 0
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer.fit_loop.restarting else 0
    if done >= batches_per_epoch:
        done = 0  # saved at the epoch's end
    return trainer.current_epoch, done


def check_val_size(val_size: int | float | None) -> int | float:
    """How many training images to hold out: an int (images), a float in (0, 1) (their fraction) or 0/None
    (none); one line naming the value otherwise."""
    if val_size is None:
        return 0
    if isinstance(val_size, float):
        if not 0.0 <= val_size < 1.0:
            raise ValueError(f"val_size={val_size} must be a fraction in [0, 1) or a number of images")
        return val_size
    return check_int("val_size", val_size, 0)


def held_out(dataset: Dataset, val_size: int | float, seed: int) -> tuple[Dataset, Dataset | None]:
    """``(the rest, the held-out images)``: ``val_size`` images (a float: that fraction, rounded) of a fixed
    permutation of ``dataset`` that depends on ``seed`` only, so every run with the same split seed holds out the
    same images whatever its own seed. ``val_size`` 0: ``(dataset, None)``."""
    size = len(dataset)  # type: ignore[arg-type]
    count = round(val_size * size) if isinstance(val_size, float) else val_size
    if count == 0:
        return dataset, None
    if count >= size:
        raise ValueError(f"val_size={val_size} holds out {count} of the {size} training images; leave some to train on")
    order = seeded_permutation(size, seed).tolist()
    return Subset(dataset, sorted(order[count:])), Subset(dataset, sorted(order[:count]))


def first_images(dataset: Dataset, n: int) -> torch.Tensor:
    """The images of the first ``n`` items of a dataset of ``(image, label)`` pairs, stacked ``(n, C, H, W)``."""
    size = len(dataset)  # type: ignore[arg-type]
    if not 1 <= n <= size:
        raise ValueError(f"n={n} images requested, but the validation set has {size}; ask for 1 to {size}")
    return torch.stack([dataset[i][0] for i in range(n)])


class SplitsDataModule(L.LightningDataModule):
    """What every data module serves once its ``setup()`` has built the :class:`Splits` (into ``_splits``): the
    training loader (sharded per process, resumable mid-epoch) and the validation and test loaders, from its
    ``loaders`` settings (``eval_settings`` for evaluation, the same unless a subclass says otherwise)."""

    _splits: Splits | None = None
    loaders: LoaderSettings

    @property
    def batch_size(self) -> int:
        return self.loaders.batch_size

    @property
    def eval_settings(self) -> LoaderSettings:
        """The settings of the evaluation loaders."""
        return self.loaders

    @property
    def splits(self) -> Splits:
        """The datasets served (built by ``setup()`` on first use)."""
        if self._splits is None:
            self.setup()
        assert self._splits is not None
        return self._splits

    def train_dataloader(self) -> DataLoader:
        """Augmented training images, reshuffled each epoch; a resumed run continues the interrupted epoch's order."""
        rank, world_size = process_slot(self)
        batches_per_epoch = len(self.splits.train) // world_size // self.batch_size  # type: ignore[arg-type]
        epoch, batches_done = resume_position(self, batches_per_epoch)
        return self.loaders.train_loader(self.splits, epoch, batches_done, rank, world_size)

    def val_dataloader(self) -> DataLoader:
        """The validation split: every per-epoch curve and every choice."""
        return self.eval_settings.eval_loader(self.splits.val)

    def test_dataloader(self) -> DataLoader:
        """The test split: the number a run reports, once at its end."""
        return self.eval_settings.eval_loader(self.splits.test)
