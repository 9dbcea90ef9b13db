"""Fashion-MNIST: the IDX reader, where the files are looked for, and what the data module serves."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_module
from omegaconf import OmegaConf

from mae.data import CorruptDataError, FashionMNISTDataModule, fashion_mnist, read_idx
from mae.data.fashion_mnist import FILES, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
N_TRAIN, N_VAL = 24, 10


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """The exact on-disk IDX format: big-endian magic, one big-endian uint32 per dimension, then the bytes."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, content: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)
    return path


def make_fashion_mnist(directory: Path, gz: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny Fashion-MNIST (random 28x28 images, labels 0-9) into ``directory``; returns its arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        "val_images": rng.integers(0, 256, (N_VAL, 28, 28), dtype=np.uint8),
        "val_labels": rng.integers(0, 10, N_VAL, dtype=np.uint8),
    }
    for key, array in arrays.items():
        magic = IDX_IMAGES_MAGIC if key.endswith("images") else IDX_LABELS_MAGIC
        write(directory / FILES[key], idx_bytes(array, magic), gz)
    return arrays


@pytest.fixture
def data_no_system_dirs(monkeypatch, tmp_path):
    """Hide Debian's package directory so that only the test's own files can be found."""
    missing = tmp_path / "usr-share-datasets-fashion-mnist"
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", (missing,))
    return missing


@pytest.fixture
def data_fmnist_root(tmp_path, data_no_system_dirs):
    """A tiny gzipped Fashion-MNIST in a flat root directory: (root, arrays)."""
    root = tmp_path / "fmnist"
    return root, make_fashion_mnist(root)


def module(root, **overrides) -> FashionMNISTDataModule:
    # No held-out images by default: the tiny fakes are checked against the files split by split.
    args = dict(root=str(root), batch_size=4, seed=0, knn_train_samples=None, knn_val_samples=None, val_size=0)
    return data_module("fashion_mnist", **{**args, **overrides})


def to_pixels(imgs: torch.Tensor, dm: FashionMNISTDataModule) -> torch.Tensor:
    """Undo the normalisation: back to 0-255 integers."""
    mean, std = torch.tensor(dm.mean).view(-1, 1, 1), torch.tensor(dm.std).view(-1, 1, 1)
    return ((imgs * std + mean) * 255).round().to(torch.uint8)


# -- the IDX reader ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trips_exactly(tmp_path, gz):
    images = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    labels = np.array([0, 9, 3], dtype=np.uint8)
    images_path = write(tmp_path / "imgs-idx3-ubyte", idx_bytes(images, IDX_IMAGES_MAGIC), gz)
    labels_path = write(tmp_path / "labels-idx1-ubyte", idx_bytes(labels, IDX_LABELS_MAGIC), gz)
    read_images, read_labels = read_idx(images_path, IDX_IMAGES_MAGIC), read_idx(labels_path, IDX_LABELS_MAGIC)
    assert read_images.dtype == torch.uint8 and read_images.shape == (5, 7, 3)
    assert np.array_equal(read_images.numpy(), images) and np.array_equal(read_labels.numpy(), labels)


def assert_one_line_naming(error: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_rejects_a_wrong_magic_number(tmp_path, gz):
    labels = np.arange(10, dtype=np.uint8)
    path = write(tmp_path / "labels", idx_bytes(labels, IDX_LABELS_MAGIC), gz)
    with pytest.raises(CorruptDataError) as error:
        read_idx(path, IDX_IMAGES_MAGIC)  # a label file where images are expected
    assert_one_line_naming(error, path, "magic number 0x00000801, expected 0x00000803")


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_rejects_truncated_and_oversized_payloads(tmp_path, gz):
    content = idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8), IDX_IMAGES_MAGIC)
    short = write(tmp_path / "short", content[:-5], gz)
    with pytest.raises(CorruptDataError) as error:
        read_idx(short, IDX_IMAGES_MAGIC)
    assert_one_line_naming(error, short, "truncated")
    long = write(tmp_path / "long", content + b"\0", gz)
    with pytest.raises(CorruptDataError) as error:
        read_idx(long, IDX_IMAGES_MAGIC)
    assert_one_line_naming(error, long, "trailing bytes")
    header_only = write(tmp_path / "header", content[:9], gz)
    with pytest.raises(CorruptDataError) as error:
        read_idx(header_only, IDX_IMAGES_MAGIC)
    assert_one_line_naming(error, header_only, "truncated header")


def test_read_idx_rejects_a_cut_gzip_stream_and_a_non_gzip_file(tmp_path):
    content = gzip.compress(idx_bytes(np.zeros((4, 28, 28), dtype=np.uint8), IDX_IMAGES_MAGIC))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(content[: len(content) // 2])
    with pytest.raises(CorruptDataError) as error:
        read_idx(cut, IDX_IMAGES_MAGIC)
    assert_one_line_naming(error, cut, "cannot read")
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(b"this is not gzip data at all")
    with pytest.raises(CorruptDataError) as error:
        read_idx(not_gzip, IDX_IMAGES_MAGIC)
    assert_one_line_naming(error, not_gzip, "cannot read")


# -- finding the files -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("gz", [True, False])
def test_module_reads_both_layouts_and_compressions_exactly(tmp_path, data_no_system_dirs, layout, gz):
    root = tmp_path / "data"
    arrays = make_fashion_mnist(root if layout == "flat" else root / "FashionMNIST" / "raw", gz=gz)
    dm = module(root)
    assert dm.num_classes == 10 and dm.in_chans == 1 and dm.img_size == 28
    imgs, labels = next(iter(dm.val_dataloader()))
    assert torch.equal(to_pixels(imgs, dm)[:, 0], torch.from_numpy(arrays["val_images"][:4]))
    assert labels.tolist() == arrays["val_labels"][:4].tolist()
    knn_train, _ = dm.knn_dataloaders()
    train_labels = torch.cat([batch[1] for batch in knn_train])
    assert train_labels.tolist() == arrays["train_labels"].tolist()


def test_a_corrupt_file_fails_setup_naming_it(data_fmnist_root):
    root, _ = data_fmnist_root
    labels = root / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.full(N_VAL, 10, dtype=np.uint8), IDX_LABELS_MAGIC)))
    dm = module(root)  # the files exist: construction succeeds, reading them fails
    with pytest.raises(CorruptDataError) as error:
        dm.setup()
    assert_one_line_naming(error, labels, "label 10 outside 0-9")


def test_missing_data_fails_at_construction_naming_every_place_searched(tmp_path, data_no_system_dirs):
    root = tmp_path / "nothing-here"
    with pytest.raises(FileNotFoundError) as error:
        module(root)
    message = str(error.value)
    assert "\n" not in message
    for place in (root, root / "FashionMNIST" / "raw", data_no_system_dirs):
        assert str(place) in message
    for hint in ("apt-get install dataset-fashion-mnist", "data.root=", "data.download=true"):
        assert hint in message


def test_an_incomplete_directory_is_skipped_for_the_next_one(tmp_path, data_no_system_dirs):
    root = tmp_path / "data"
    make_fashion_mnist(root)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    arrays = make_fashion_mnist(root / "FashionMNIST" / "raw", gz=False, seed=9)
    imgs, _ = next(iter(module(root).val_dataloader()))
    assert torch.equal(to_pixels(imgs, module(root))[:, 0], torch.from_numpy(arrays["val_images"][:4]))


def test_download_needs_a_root_when_nothing_is_found(data_no_system_dirs):
    with pytest.raises(ValueError, match="data.download=true needs data.root"):
        data_module("fashion_mnist", root=None, download=True)


def test_debian_package_is_the_default_source_with_5000_training_images_held_out():
    dm = data_module("fashion_mnist", root=None, batch_size=256, knn_train_samples=None, knn_val_samples=None)
    dm.setup()
    splits = dm.splits
    assert len(splits.train) == len(splits.train_eval) == 55000 and len(splits.val) == 5000
    assert len(splits.test) == 10000 and dm.num_classes == 10 and not splits.val_is_test
    pixels = splits.train_eval.dataset.dataset.images  # the held-out subset is cut from all 60000 training images
    assert pixels.shape == (60000, 1, 28, 28) and pixels.dtype == torch.uint8
    trained, held_out = set(splits.train_eval.dataset.indices), set(splits.val.dataset.indices)
    assert not trained & held_out and len(trained | held_out) == 60000  # disjoint, together the training split
    assert set(splits.train.dataset.indices) == trained  # the augmented training images are the same ones
    assert sorted({splits.val.dataset.dataset.labels[i] for i in held_out}) == list(range(10))
    assert sorted(set(splits.test.dataset.labels)) == list(range(10))
    # The default normalisation constants are the whole training set's statistics.
    scaled = pixels.float() / 255
    assert scaled.mean().item() == pytest.approx(dm.mean[0], abs=5e-4)
    assert scaled.std().item() == pytest.approx(dm.std[0], abs=5e-4)
    assert len(dm.train_dataloader()) == 55000 // 256
    assert "5000 training images held out" in dm.validation_split()


def test_the_held_out_images_depend_on_the_split_seed_only(data_fmnist_root):
    root, _ = data_fmnist_root
    held = {}
    for seed, split_seed in ((0, 0), (1, 0), (0, 1)):
        dm = module(root, seed=seed, val_size=6, val_split_seed=split_seed)
        dm.setup()
        held[seed, split_seed] = list(dm.splits.val.dataset.indices)
        assert len(dm.splits.train_eval) == len(dm.splits.val.dataset.dataset) - 6
    assert held[0, 0] == held[1, 0] != held[0, 1]  # the run seed moves nothing; the split seed does


def test_a_fraction_holds_out_that_share_and_bad_sizes_are_one_line(data_fmnist_root):
    root, arrays = data_fmnist_root
    dm = module(root, val_size=0.25)
    dm.setup()
    total = len(arrays["train_labels"])
    assert len(dm.splits.val) == round(0.25 * total) and len(dm.splits.train_eval) == total - round(0.25 * total)
    for bad, message in ((1.5, "val_size=1.5 must be a fraction in"), (-1, "val_size=-1 must be an integer")):
        with pytest.raises(ValueError, match=message):
            module(root, val_size=bad)
    with pytest.raises(ValueError, match=f"val_size={total} holds out {total} of the {total} training images"):
        module(root, val_size=total).setup()


# -- what the module serves ------------------------------------------------------------------------------------
def test_loader_shapes_dtypes_and_normalisation(data_fmnist_root):
    root, arrays = data_fmnist_root
    dm = module(root, batch_size=5)
    imgs, labels, seeds = next(iter(dm.train_dataloader()))
    assert imgs.shape == (5, 1, 28, 28) and imgs.dtype == torch.float32 and labels.dtype == torch.int64
    # Each training sample carries its own seed (its augmentation's and its mask's), distinct within the batch.
    assert seeds.dtype == torch.int64 and len(set(seeds.tolist())) == 5
    assert len(dm.train_dataloader()) == N_TRAIN // 5  # drop_last
    val_imgs, _ = next(iter(dm.val_dataloader()))
    expected = (torch.from_numpy(arrays["val_images"][:5]).float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(val_imgs[:, 0], expected)
    assert dm.mean == (0.2860,) and dm.std == (0.3530,) and dm.batch_size == 5
    samples = dm.sample_images(3)
    assert samples.shape == (3, 1, 28, 28) and torch.equal(samples, val_imgs[:3])


def test_train_samples_is_a_fixed_seeded_subset(data_fmnist_root):
    root, _ = data_fmnist_root

    def subset(seed: int) -> list[int]:
        dm = module(root, seed=seed, train_samples=8)
        dm.setup()
        return dm.splits.train.dataset.indices

    first = subset(0)
    assert len(first) == 8 and subset(0) == first
    assert subset(1) != first
    dm = module(root, train_samples=8)
    assert len(dm.train_dataloader()) == 8 // 4


def test_augmentation_keeps_the_shape_and_changes_the_image(data_fmnist_root):
    root, _ = data_fmnist_root
    dm = module(root, crop_scale=(0.2, 0.5))
    dm.setup()
    torch.manual_seed(0)
    augmented = [dm.splits.train[3][0] for _ in range(2)]
    original = dm.splits.train_eval[3][0]
    assert augmented[0].shape == original.shape == (1, 28, 28)
    assert not torch.allclose(augmented[0], original) and not torch.allclose(augmented[0], augmented[1])
    torch.manual_seed(0)
    assert torch.equal(dm.splits.train[3][0], augmented[0])  # without a sample seed: the global RNG
    # With the sampler's (index, seed) keys the crop depends on the seed only, not on the global RNG.
    seeded = dm.splits.train[(3, 123)][0]
    torch.manual_seed(99)
    assert torch.equal(dm.splits.train[(3, 123)][0], seeded)
    assert not torch.equal(dm.splits.train[(3, 124)][0], seeded)


def test_other_image_sizes_and_three_channels(data_fmnist_root):
    root, _ = data_fmnist_root
    dm = module(root, img_size=32, in_chans=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    train_imgs, _, _ = next(iter(dm.train_dataloader()))
    val_imgs, _ = next(iter(dm.val_dataloader()))
    assert train_imgs.shape == val_imgs.shape == (4, 3, 32, 32)
    assert torch.equal(val_imgs[:, 0], val_imgs[:, 2])  # the gray channel, repeated


def test_knn_loaders_are_capped_unshuffled_and_unaugmented(data_fmnist_root):
    root, _ = data_fmnist_root
    dm = module(root, knn_train_samples=6, knn_val_samples=100)
    train, val = dm.knn_dataloaders()
    assert len(train.dataset) == 6 and len(val.dataset) == N_VAL
    first = torch.cat([imgs for imgs, _ in train])
    assert torch.equal(first, torch.cat([imgs for imgs, _ in dm.knn_dataloaders()[0]]))


def test_loading_in_a_worker_process(data_fmnist_root):
    root, _ = data_fmnist_root
    loader = module(root, num_workers=1, persistent_workers=True).train_dataloader()
    assert loader.persistent_workers
    imgs = next(iter(loader))[0]
    assert imgs.shape == (4, 1, 28, 28) and torch.isfinite(imgs).all()


def test_hydra_list_values_are_accepted(data_fmnist_root):
    root, _ = data_fmnist_root
    cfg = OmegaConf.create({"crop_scale": [0.35, 1.0], "mean": [0.2860], "std": [0.3530]})
    dm = module(root, crop_scale=cfg.crop_scale, mean=cfg.mean, std=cfg.std)
    assert dm.crop_scale == (0.35, 1.0) and dm.mean == (0.2860,) and isinstance(dm.std, tuple)


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"num_workers": -1}, "num_workers=-1"),
        ({"img_size": 0}, "img_size=0"),
        ({"crop_scale": (0.5, 0.2)}, "crop_scale=[0.5, 0.2]"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale=[0.0, 1.0]"),
        ({"mean": (0.5, 0.5)}, "in_chans=1"),
        ({"in_chans": 2}, "in_chans=2"),
        ({"train_samples": 0}, "train_samples=0"),
    ],
)
def test_invalid_values_raise_one_line_value_errors(data_fmnist_root, overrides, named):
    root, _ = data_fmnist_root
    with pytest.raises(ValueError) as error:
        module(root, **overrides)
    assert named in str(error.value) and "\n" not in str(error.value)


def test_download_fetches_into_root_in_prepare_data(tmp_path, data_no_system_dirs, monkeypatch):
    calls = []

    class FakeFashionMNIST:  # stands in for torchvision's downloader: writes its raw layout, no network
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            make_fashion_mnist(Path(root) / "FashionMNIST" / "raw", gz=False)

    monkeypatch.setattr("torchvision.datasets.FashionMNIST", FakeFashionMNIST)
    root = tmp_path / "download-here"
    dm = module(root, download=True)  # nothing there yet: no error, the download comes in prepare_data()
    assert calls == []
    dm.prepare_data()
    assert calls == [(str(root), True, True), (str(root), False, True)]
    assert len(next(iter(dm.val_dataloader()))[0]) == 4
