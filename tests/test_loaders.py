"""Epoch-seeded shuffling, fixed subsets and the loaders built on them."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from mae.data.loaders import EpochSeededSampler, LoaderSettings, Splits, first_images, resume_position, seeded_subset


def order(seed: int, epoch: int, n: int = 100) -> list[int]:
    sampler = EpochSeededSampler(n, seed)
    sampler.set_epoch(epoch)
    return [index for index, _ in sampler]


def sample_seeds(seed: int, epoch: int, n: int = 100) -> list[int]:
    return [sample_seed for _, sample_seed in EpochSeededSampler(n, seed, epoch)]


def settings(**overrides) -> LoaderSettings:
    args = dict(
        batch_size=4,
        num_workers=0,
        pin_memory=False,
        persistent_workers=True,
        seed=0,
        knn_train_samples=None,
        knn_val_samples=None,
    )
    return LoaderSettings(**{**args, **overrides})


def test_same_seed_and_epoch_give_the_same_order_in_fresh_samplers():
    assert order(3, 5) == order(3, 5)
    sampler = EpochSeededSampler(100, 3)
    sampler.set_epoch(5)
    assert list(sampler) == list(sampler)  # iterating does not advance anything


def test_every_sample_gets_an_augmentation_seed_fixed_by_seed_and_epoch():
    assert sample_seeds(3, 1) == sample_seeds(3, 1)
    assert sample_seeds(3, 1) != sample_seeds(3, 2)
    assert len(set(sample_seeds(3, 1))) == 100


def test_the_starting_epoch_can_be_given():
    # A resumed run's loader is first iterated before Lightning calls set_epoch.
    assert [index for index, _ in EpochSeededSampler(100, 3, epoch=4)] == order(3, 4)


def test_epochs_and_seeds_change_the_order():
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    # seed + epoch is not the mixing rule: (0, 1) and (1, 0) differ too.
    assert order(0, 1) != order(1, 0)


def test_each_epoch_is_a_permutation():
    for epoch in range(3):
        assert sorted(order(7, epoch, n=57)) == list(range(57))
    assert len(EpochSeededSampler(57, 7)) == 57


def test_order_is_independent_of_the_global_rng():
    torch.manual_seed(1)
    first = order(2, 3)
    torch.manual_seed(12345)
    state = torch.get_rng_state()
    assert order(2, 3) == first
    assert torch.equal(torch.get_rng_state(), state)  # and it consumes none of it


def test_resumed_run_sees_the_order_of_an_uninterrupted_one():
    uninterrupted = EpochSeededSampler(40, 0)
    orders = []
    for epoch in range(3):
        uninterrupted.set_epoch(epoch)
        orders.append(list(uninterrupted))
    resumed = EpochSeededSampler(40, 0)  # a new process, restored at the start of epoch 2
    resumed.set_epoch(2)
    assert list(resumed) == orders[2]


def test_invalid_sampler_arguments():
    with pytest.raises(ValueError, match="seed=-1"):
        EpochSeededSampler(10, -1)
    with pytest.raises(ValueError, match="epoch=-2"):
        EpochSeededSampler(10, 0).set_epoch(-2)


def test_seeded_subset_is_fixed_and_capped():
    data = TensorDataset(torch.arange(50))
    a, b = seeded_subset(data, 10, seed=0), seeded_subset(data, 10, seed=0)
    assert len(a) == 10 and a.indices == b.indices
    assert len(set(a.indices)) == 10 and a.indices != list(range(10))  # random, not the first ten
    assert seeded_subset(data, 10, seed=1).indices != a.indices
    assert seeded_subset(data, None, seed=0) is data
    assert seeded_subset(data, 500, seed=0) is data  # a cap, not a demand


class _Indices(Dataset):
    """Item i is (tensor([i]), i)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        if isinstance(key, tuple):  # the training sampler pairs an index with a seed, served like Transformed
            return torch.tensor([float(key[0])]), key[0], key[1]
        return torch.tensor([float(key)]), key


def test_train_loader_shuffles_by_epoch_and_drops_the_last_partial_batch():
    splits = Splits(train=_Indices(10), train_eval=_Indices(10), val=_Indices(6), test=_Indices(6))
    loader = settings(batch_size=4, seed=5).train_loader(splits)
    assert isinstance(loader.sampler, EpochSeededSampler) and loader.drop_last
    assert len(loader) == 2
    loader.sampler.set_epoch(1)
    served = torch.cat([labels for _, labels, _ in loader]).tolist()
    assert served == order(5, 1, n=10)[:8]
    assert not loader.persistent_workers  # requested, but meaningless (and refused) without workers


def test_train_loader_resumed_mid_epoch_serves_the_rest_of_that_epoch_then_whole_ones():
    splits = Splits(train=_Indices(12), train_eval=_Indices(12), val=_Indices(6), test=_Indices(6))
    loader = settings(batch_size=4, seed=5).train_loader(splits, epoch=2, batches_done=1)
    assert torch.cat([labels for _, labels, _ in loader]).tolist() == order(5, 2, n=12)[4:]
    loader.sampler.set_epoch(3)
    assert torch.cat([labels for _, labels, _ in loader]).tolist() == order(5, 3, n=12)


def test_train_loader_state_refuses_a_resume_that_would_change_the_order():
    splits = Splits(train=_Indices(12), train_eval=_Indices(12), val=_Indices(6), test=_Indices(6))
    state = settings(batch_size=4, seed=5).train_loader(splits).state_dict()
    settings(batch_size=4, seed=5).train_loader(splits).load_state_dict(state)
    with pytest.raises(ValueError, match=r"\(seed 5 -> 6, global_batch_size 4 -> 3\); resume with the data settings"):
        settings(batch_size=3, seed=6).train_loader(splits).load_state_dict(state)


def test_a_state_written_before_global_batches_still_resumes():
    splits = Splits(train=_Indices(12), train_eval=_Indices(12), val=_Indices(6), test=_Indices(6))
    settings(batch_size=4, seed=5).train_loader(splits).load_state_dict({"seed": 5, "num_samples": 12, "batch_size": 4})
    with pytest.raises(ValueError, match="global_batch_size 4 -> 8"):
        settings(batch_size=4, seed=5).train_loader(splits, world_size=2).load_state_dict(
            {"seed": 5, "num_samples": 12, "batch_size": 4}
        )


@pytest.mark.parametrize("world_size", [2, 3])
def test_processes_split_each_global_batch_of_one_process(world_size):
    """Batch k of W processes together holds the samples (and seeds) of batch k of one process with a W times
    larger batch, in every epoch; the processes' shares are disjoint and equally long."""
    n, batch = 50, 4
    splits = Splits(train=_Indices(n), train_eval=_Indices(n), val=_Indices(6), test=_Indices(6))
    one = settings(batch_size=batch * world_size, seed=5).train_loader(splits)
    shares = [
        settings(batch_size=batch, seed=5).train_loader(splits, rank=rank, world_size=world_size)
        for rank in range(world_size)
    ]
    assert len({len(loader) for loader in shares}) == 1 and len(shares[0]) == len(one)
    for epoch in (0, 1):
        for loader in [one, *shares]:
            loader.sampler.set_epoch(epoch)
        for big, *small in zip(one, *shares):
            assert sorted(big[1].tolist()) == sorted(value for part in small for value in part[1].tolist())
            assert sorted(big[2].tolist()) == sorted(value for part in small for value in part[2].tolist())
        served = [set(torch.cat([labels for _, labels, _ in loader]).tolist()) for loader in shares]
        assert all(not a & b for i, a in enumerate(served) for b in served[i + 1 :])


def test_processes_resumed_mid_epoch_serve_what_the_uninterrupted_ones_would_have():
    """2 processes interrupted after 2 batches each resume (as 2 processes, or as 1 with the same global batch)
    with exactly the samples the uninterrupted run would have served next."""
    splits = Splits(train=_Indices(40), train_eval=_Indices(40), val=_Indices(6), test=_Indices(6))
    shares = [settings(batch_size=4, seed=5).train_loader(splits, epoch=1, rank=rank, world_size=2) for rank in (0, 1)]
    rest = [[batch[1].tolist() for batch in loader][2:] for loader in shares]
    resumed = [settings(batch_size=4, seed=5).train_loader(splits, 1, 2, rank, 2) for rank in (0, 1)]
    assert [[batch[1].tolist() for batch in loader] for loader in resumed] == rest
    alone = settings(batch_size=8, seed=5).train_loader(splits, epoch=1, batches_done=2)
    assert [sorted(batch[1].tolist()) for batch in alone] == [sorted(a + b) for a, b in zip(*rest)]


def test_train_loader_refuses_a_dataset_smaller_than_a_batch():
    splits = Splits(train=_Indices(3), train_eval=_Indices(3), val=_Indices(3), test=_Indices(3))
    with pytest.raises(ValueError, match="3 images, fewer than batch_size=4"):
        settings(batch_size=4).train_loader(splits)


def test_eval_and_knn_loaders_are_ordered_and_capped():
    splits = Splits(train=_Indices(20), train_eval=_Indices(20), val=_Indices(9), test=_Indices(9))
    s = settings(batch_size=4, num_workers=1, knn_train_samples=7, knn_val_samples=None)
    val = s.eval_loader(splits.val)
    assert torch.cat([labels for _, labels in val]).tolist() == list(range(9))  # every image, in order
    assert val.persistent_workers
    knn_train, knn_val = s.knn_loaders(splits)
    train_labels = torch.cat([labels for _, labels in knn_train]).tolist()
    assert len(train_labels) == 7 and train_labels == seeded_subset(splits.train_eval, 7, 0).indices
    assert len(knn_val.dataset) == 9


@pytest.mark.parametrize(
    "field, value, rule",
    [
        ("batch_size", 0, "at least 1"),
        ("num_workers", -1, "at least 0"),
        ("knn_train_samples", 0, "at least 1"),
    ],
)
def test_invalid_loader_settings_name_value_and_rule(field, value, rule):
    with pytest.raises(ValueError) as info:
        settings(**{field: value})
    message = str(info.value)
    assert f"{field}={value}" in message and rule in message and "\n" not in message


def test_first_images_stacks_and_checks_n():
    images = first_images(_Indices(5), 3)
    assert images.shape == (3, 1) and images[:, 0].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="n=6"):
        first_images(_Indices(5), 6)


class _RecordOrder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[list[int]] = []

    def on_train_epoch_start(self) -> None:
        self.seen.append([])

    def training_step(self, batch, batch_idx):
        self.seen[-1] += batch[1].tolist()
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_sets_the_epoch_of_the_sampler():
    loader = settings(batch_size=2, seed=3).train_loader(Splits(_Indices(6), _Indices(6), _Indices(6), _Indices(6)))
    module = _RecordOrder()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader)
    assert module.seen == [order(3, 0, n=6), order(3, 1, n=6)]


def _resuming(epoch: int, processed: int, restarting: bool, world_size: int) -> SimpleNamespace:
    progress = SimpleNamespace(current=SimpleNamespace(processed=processed))
    fit_loop = SimpleNamespace(restarting=restarting, epoch_loop=SimpleNamespace(batch_progress=progress))
    return SimpleNamespace(trainer=SimpleNamespace(fit_loop=fit_loop, current_epoch=epoch, world_size=world_size))


@pytest.mark.parametrize(
    ("epoch", "processed", "restarting", "world_size", "position"),
    [
        (3, 5, True, 1, (3, 5)),  # resumed mid-epoch: the batches done are skipped
        (3, 8, True, 1, (3, 0)),  # a checkpoint at the epoch's end: nothing to skip
        (3, 5, False, 1, (3, 0)),  # not resuming
        (3, 5, True, 2, (3, 5)),  # several processes: each skips its batches done too
    ],
)
def test_resume_position(epoch, processed, restarting, world_size, position):
    assert resume_position(_resuming(epoch, processed, restarting, world_size), batches_per_epoch=8) == position
    assert resume_position(SimpleNamespace(trainer=None), batches_per_epoch=8) == (0, 0)
