"""litdata shards: the converter (python -m mae.data.shards), the streaming data module, and exact resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from litdata import StreamingDataset
from PIL import Image

from mae.data.loaders import sample_seed
from mae.data.shards import INFO_FILE, read_shard_info
from mae.data.shards.__main__ import main as convert
from mae.data.streaming import ShardsDataModule

from conftest import data_module
from test_data_fashion_mnist import make_fashion_mnist
from test_data_transfer import write_flowers102

CLASSES = 24  # one training image per class in the folder source: a label is a sample's identity


def write_folder(root: Path, corrupt: bool = False) -> Path:
    """An ImageNet-layout folder of real JPEGs: train/cNN/0.JPEG (one image per class), val/c00/*.JPEG."""
    rng = np.random.default_rng(0)
    for index in range(CLASSES):
        folder = root / "train" / f"c{index:02d}"
        folder.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (20 + index, 24, 3), dtype=np.uint8)).save(folder / "0.JPEG")
    (root / "val" / "c00").mkdir(parents=True)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / "val" / "c00" / f"{index}.JPEG")
    if corrupt:
        (root / "train" / "c05" / "1.JPEG").write_bytes(b"\xff\xd8 not really a JPEG")
    return root


def run_convert(source: str, out: Path, *overrides: str) -> int:
    return convert([source, str(out), "num_workers=1", *overrides])


@pytest.fixture(scope="module")
def folder_shards(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("folder")
    source = write_folder(root / "imagenet", corrupt=True)
    assert run_convert(str(source), root / "shards") == 0
    return source, root / "shards"


def stream_module(input_dir: Path, **settings) -> ShardsDataModule:
    defaults = dict(input_dir=str(input_dir), batch_size=4, num_workers=0, crop_scale=[0.35, 1.0])
    return data_module("imagenet_stream", **{**defaults, **settings})


# The converter ------------------------------------------------------------------------------------------------------

def test_folder_shards_hold_each_files_bytes_and_label_in_order_and_name_the_unreadable_one(folder_shards, capsys):
    source, shards = folder_shards
    info = read_shard_info(shards)
    assert info.classes == [f"c{index:02d}" for index in range(CLASSES)]
    assert (info.channels, info.image_size, info.num_samples) == (3, None, {"train": CLASSES, "val": 3})
    bad = source / "train" / "c05" / "1.JPEG"
    assert len(info.unreadable) == 1 and str(bad) in info.unreadable[0]
    train = StreamingDataset(str(shards / "train"))
    files = sorted(source.glob("train/*/0.JPEG"))
    # ImageFolder order (c05/0 then the corrupt c05/1, then c06/0): positions in the source split are kept.
    expected_index = [index if index <= 5 else index + 1 for index in range(CLASSES)]
    assert [train[i]["index"] for i in range(CLASSES)] == expected_index
    assert [train[i]["label"] for i in range(CLASSES)] == list(range(CLASSES))
    assert all(bytes(train[i]["image"]) == files[i].read_bytes() for i in range(CLASSES))


def test_the_converter_refuses_a_non_empty_output_and_overwrites_only_shards(folder_shards, tmp_path, capsys):
    source, shards = folder_shards
    assert run_convert(str(source), shards) == 2
    assert f"{shards} is not empty" in capsys.readouterr().err and read_shard_info(shards).num_samples["val"] == 3
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert run_convert(str(source), other, "overwrite=true") == 2
    assert "holds no shards" in capsys.readouterr().err and (other / "keep.txt").read_text() == "mine"
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    (copy / "val" / "stale.txt").write_text("old")
    assert run_convert(str(source), copy, "overwrite=true") == 0
    assert not (copy / "val" / "stale.txt").exists() and read_shard_info(copy).num_samples["train"] == CLASSES


@pytest.fixture(scope="module")
def fashion_shards(tmp_path_factory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A tiny Fashion-MNIST in its IDX files and its shards: (IDX folder, shard folder, arrays)."""
    root = tmp_path_factory.mktemp("fashion")
    arrays = make_fashion_mnist(root / "fmnist")
    assert run_convert("data=fashion_mnist", root / "shards", f"data.root={root / 'fmnist'}") == 0
    return root / "fmnist", root / "shards", arrays


def test_fashion_mnist_shards_decode_to_the_same_pixels_and_augment_like_the_in_memory_module(fashion_shards):
    idx_dir, shards, arrays = fashion_shards
    info = json.loads((shards / INFO_FILE).read_text())
    assert (info["channels"], info["image_size"], info["classes"][0]) == (1, 28, "T-shirt/top")
    stream = data_module("fashion_mnist_stream", input_dir=str(shards))
    memory = data_module("fashion_mnist", root=str(idx_dir))
    assert stream.num_classes == memory.num_classes == 10
    images, labels = zip(*(stream.splits.val[i] for i in range(len(stream.splits.val))))
    expected_val, _ = zip(*(memory.splits.val[i] for i in range(len(memory.splits.val))))
    assert torch.equal(torch.stack(images), torch.stack(expected_val))
    assert list(labels) == arrays["val_labels"].tolist()
    # A training sample: the memory module's augmentation with the seed the stream derives from (seed, epoch, index).
    stream.splits.train.set_epoch(3)
    augmented, label, seed = stream.splits.train[7]
    assert seed == sample_seed(stream.loaders.seed, 3, 7)
    expected, expected_label, _ = memory.splits.train[(7, seed)]
    assert torch.equal(augmented, expected) and label == expected_label == int(arrays["train_labels"][7])


def test_a_transfer_datasets_files_become_shards(tmp_path):
    tiny = write_flowers102(tmp_path / "flowers")
    assert run_convert("data=flowers102", tmp_path / "shards", f"data.root={tiny.root}") == 0
    info = read_shard_info(tmp_path / "shards")
    assert (len(info.classes), info.channels) == (tiny.num_classes, 3)
    assert (info.num_samples["train"], info.num_samples["val"]) == tiny.sizes


def test_a_bad_source_is_one_line(tmp_path, capsys):
    assert run_convert(str(tmp_path / "absent"), tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and "absent" in error
    assert not (tmp_path / "out").exists()


# The streaming data module ------------------------------------------------------------------------------------------

def test_stream_module_refuses_missing_or_mismatched_shards_before_any_work(folder_shards, tmp_path):
    _, shards = folder_shards
    with pytest.raises(FileNotFoundError, match="does not exist; write them with `python -m mae.data.shards"):
        stream_module(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no litdata index"):
        stream_module(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"hold 3-channel images, but data.in_chans=1"):
        stream_module(shards, in_chans=1, mean=[0.5], std=[0.5])
    with pytest.raises(ValueError, match=r"train_samples=8: a streamed epoch is the whole training split"):
        stream_module(shards, train_samples=8)
    with pytest.raises(ValueError, match=r"persistent_workers=True: .* set data.persistent_workers=false"):
        stream_module(shards, persistent_workers=True)


def test_a_remote_input_dir_has_its_info_fetched_and_checked_like_a_local_one(folder_shards, tmp_path):
    """litdata's ``local:`` prefix goes through its downloaders, as s3:// and gs:// do."""
    from mae.data.streaming import read_info

    _, shards = folder_shards
    assert read_info(f"local:{shards}") == read_shard_info(shards)
    with pytest.raises(FileNotFoundError, match=r"cannot fetch local:.*absent/train/index.json"):
        read_info(f"local:{tmp_path / 'absent'}")
    future = tmp_path / "future"
    shutil.copytree(shards, future)
    info = json.loads((future / INFO_FILE).read_text())
    (future / INFO_FILE).write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(ValueError, match=r"mae_shards.json has format_version=99, this version reads 1"):
        read_info(f"local:{future}")


@pytest.mark.parametrize("remote", [False, True])
def test_shards_whose_items_would_be_unpickled_are_refused_before_any_read(folder_shards, tmp_path, remote):
    from mae.data.streaming import read_info

    _, shards = folder_shards
    hostile = tmp_path / "hostile"
    shutil.copytree(shards, hostile)
    index = json.loads((hostile / "val" / "index.json").read_text())
    index["config"]["data_format"] = ["int", "pickle", "int"]
    (hostile / "val" / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"val/index.json stores items as pickle, which can run code when read"):
        read_info(f"local:{hostile}" if remote else str(hostile))


def test_stream_module_refuses_shards_of_another_image_size(fashion_shards):
    with pytest.raises(ValueError, match=r"hold 28 px images, but data.img_size=32; set data.img_size=28"):
        data_module("fashion_mnist_stream", input_dir=str(fashion_shards[1]), img_size=32)


def batches(loader, count: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    served = []
    for batch in loader:
        served.append(batch)
        if count is not None and len(served) == count:
            break
    return served


def test_an_epoch_serves_every_sample_once_reshuffled_per_epoch_with_the_runs_seed(folder_shards):
    _, shards = folder_shards
    loader = stream_module(shards, num_workers=2).train_dataloader()
    epochs = [torch.cat([labels for _, labels, _ in batches(loader)]).tolist() for _ in range(2)]
    assert all(sorted(epoch) == list(range(CLASSES)) for epoch in epochs)
    assert epochs[0] != epochs[1]
    again = stream_module(shards, num_workers=2).train_dataloader()
    assert torch.cat([labels for _, labels, _ in batches(again)]).tolist() == epochs[0]
    other_seed = stream_module(shards, num_workers=2, seed=1).train_dataloader()
    assert torch.cat([labels for _, labels, _ in batches(other_seed)]).tolist() != epochs[0]


def test_a_loader_restored_mid_epoch_serves_exactly_what_the_uninterrupted_one_would_have(folder_shards):
    """The ordered sample ids (here: labels) and the augmented images, over the rest of epoch 1 and all of epoch 2,
    with 2 workers: from the loader's state_dict, as Lightning restores it from a checkpoint."""
    _, shards = folder_shards
    full = stream_module(shards, num_workers=2).train_dataloader()
    reference = batches(full) + batches(full)  # 2 epochs of 6 batches
    first = stream_module(shards, num_workers=2).train_dataloader()
    served = batches(first, 2)
    state = first.state_dict()
    resumed = stream_module(shards, num_workers=2).train_dataloader()
    resumed.load_state_dict(state)
    served += batches(resumed) + batches(resumed)
    assert [labels.tolist() for _, labels, _ in served] == [labels.tolist() for _, labels, _ in reference]
    assert all(torch.equal(a, b) for (a, *_), (b, *_) in zip(served, reference))
    assert [seeds.tolist() for *_, seeds in served] == [seeds.tolist() for *_, seeds in reference]
