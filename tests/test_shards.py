"""litdata shards: the converter (python -m mae.data.shards), the streaming data module, and exact resume; shards
of a folder without labels (data=unlabeled -> data=unlabeled_stream)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_module
from litdata import StreamingDataset
from PIL import Image
from test_data_fashion_mnist import make_fashion_mnist
from test_data_transfer import write_flowers102

from mae.data.file_listing import list_image_files, split_held_out
from mae.data.loaders import sample_seed
from mae.data.shards import INFO_FILE, read_shard_info
from mae.data.shards.__main__ import main as convert
from mae.data.streaming import ShardsDataModule

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
    assert run_convert("data=fashion_mnist", root / "shards", f"data.root={root / 'fmnist'}", "data.val_size=0") == 0
    return root / "fmnist", root / "shards", arrays


def test_fashion_mnist_shards_decode_to_the_same_pixels_and_augment_like_the_in_memory_module(fashion_shards):
    idx_dir, shards, arrays = fashion_shards
    info = json.loads((shards / INFO_FILE).read_text())
    assert (info["channels"], info["image_size"], info["classes"][0]) == (1, 28, "T-shirt/top")
    stream = data_module("fashion_mnist_stream", input_dir=str(shards))
    memory = data_module("fashion_mnist", root=str(idx_dir), val_size=0)
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


# Shards of a folder without labels ----------------------------------------------------------------------------------

BROKEN = "sub/broken.jpg"
UNLABELED = dict(val_fraction=0.1, on_bad_image="skip", max_bad_fraction=0.2)
"""The folder's split (5 of 26 files held out, the undecodable one among the training files) and its tolerance."""
SMALL = dict(img_size=16, batch_size=2, num_workers=0, pin_memory=False, crop_scale=[0.35, 1.0])


def write_unlabeled_folder(root: Path) -> Path:
    """Images of many modes at three depths (PNG: RGB, grey, RGBA, palette, 16-bit, grey + alpha; JPEG: RGB, grey,
    CMYK), a file that is no image, a hidden image, and one undecodable JPEG."""
    rng = np.random.default_rng(1)

    def pixels(*shape: int) -> np.ndarray:
        return rng.integers(0, 256, shape, dtype=np.uint8)

    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(pixels(20, 24, 3)).save(root / "rgb.png")
    Image.fromarray(pixels(22, 20)).save(root / "grey.png")
    Image.fromarray(pixels(24, 21, 4)).save(root / "rgba.png")
    palette = Image.fromarray(pixels(19, 23, 3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(root / "palette.png")
    Image.fromarray(rng.integers(0, 65536, (21, 22), dtype=np.uint16)).save(root / "deep16.png")
    Image.fromarray(pixels(23, 20, 2)).save(root / "grey_alpha.png")
    Image.fromarray(pixels(25, 22, 3)).save(root / "sub" / "rgb.jpg", quality=90)
    Image.fromarray(pixels(20, 26)).save(root / "sub" / "grey.jpeg")
    Image.fromarray(pixels(24, 24, 3)).convert("CMYK").save(root / "sub" / "cmyk.jpg")
    Image.fromarray(pixels(21, 25, 3)).save(root / "sub" / "UPPER.JPG")
    (root / BROKEN).write_bytes(b"\xff\xd8 not really a JPEG")
    for index in range(15):
        name = f"{index}.{'png' if index % 2 else 'jpg'}"
        Image.fromarray(pixels(20 + index, 24, 3)).save(root / "sub" / "deeper" / name)
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(pixels(8, 8, 3)).save(root / ".hidden.png")
    return root


def folder_split(source: Path) -> tuple[list[str], list[str]]:
    """data=unlabeled's training and held-out files of ``source`` (relative paths, in the split's order)."""
    return split_held_out(list_image_files(source), UNLABELED["val_fraction"], 0)


def readable_positions(names: list[str]) -> list[int]:
    return [index for index, name in enumerate(names) if name != BROKEN]


@pytest.fixture(scope="module")
def unlabeled_shards(tmp_path_factory) -> tuple[Path, Path, str]:
    """(the folder, its shards, what the converter printed)."""
    root = tmp_path_factory.mktemp("unlabeled")
    source = write_unlabeled_folder(root / "images")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert (
            run_convert(
                "data=unlabeled",
                root / "shards",
                f"data.root={source}",
                *(f"data.{key}={value}" for key, value in UNLABELED.items()),
            )
            == 0
        )
    return source, root / "shards", printed.getvalue()


def folder_module(source: Path, **settings):
    return data_module("unlabeled", root=str(source), **{**UNLABELED, **SMALL, **settings})


def unlabeled_stream(shards: Path, **settings):
    return data_module("unlabeled_stream", input_dir=str(shards), **{**SMALL, **settings})


def test_an_unlabeled_folder_becomes_shards_of_every_readable_file_the_held_out_ones_in_val(unlabeled_shards):
    source, shards, printed = unlabeled_shards
    train, val = folder_split(source)
    assert (len(train), len(val)) == (21, 5) and BROKEN in train
    assert not {"notes.txt", ".hidden.png"} & {*train, *val} and {"deep16.png", "sub/cmyk.jpg"} <= {*train, *val}
    info = read_shard_info(shards)
    assert (info.labelled, info.classes, info.channels, info.image_size) == (False, [], 3, None)
    assert info.num_samples == {"train": 20, "val": 5} and info.format_version == 2
    assert len(info.unreadable) == 1 and str(source / BROKEN) in info.unreadable[0]
    assert "without labels" in printed and f"data=unlabeled_stream data.input_dir={shards}" in printed
    for split, names in (("train", train), ("val", val)):  # each file once, its own bytes, in the split's order
        items = StreamingDataset(str(shards / split))
        stored = [items[position] for position in range(len(items))]
        positions = readable_positions(names)
        assert [item["index"] for item in stored] == positions and {item["label"] for item in stored} == {-1}
        assert [bytes(item["image"]) for item in stored] == [(source / names[i]).read_bytes() for i in positions]


def test_the_unlabeled_stream_serves_the_folder_modules_images_with_the_numbers_measured_at_conversion(
    unlabeled_shards, capsys
):
    source, shards, printed = unlabeled_shards
    folder, stream = folder_module(source), unlabeled_stream(shards)
    assert (stream.has_labels, stream.num_classes, stream.mean) == (False, None, None)
    folder.setup()
    stream.setup()
    assert stream.mean == folder.mean and stream.std == folder.std
    assert list(stream.mean) == read_shard_info(shards).mean and f"mean {list(stream.mean)}" in printed
    assert f"mean {list(stream.mean)}, std {list(stream.std)} from {shards}/{INFO_FILE}" in capsys.readouterr().out
    train, _ = folder_split(source)
    readable = readable_positions(train)
    for served, expected, positions in (
        (stream.splits.train_eval, folder.splits.train_eval, readable),
        (stream.splits.val, folder.splits.val, range(len(folder.splits.val))),
    ):
        assert len(served) == len(positions)
        for position, index in enumerate(positions):
            decoded, label = served.dataset[position]  # as decoded, before any transform
            expected_decoded, expected_label = expected.dataset[index]
            assert label == expected_label == -1 and torch.equal(decoded, expected_decoded)
            assert torch.equal(served[position][0], expected[index][0])  # the evaluation transform
    stream.splits.train.set_epoch(2)
    augmented, label, seed = stream.splits.train[7]
    assert seed == sample_seed(stream.loaders.seed, 2, readable[7])
    expected, expected_label, _ = folder.splits.train[(readable[7], seed)]
    assert label == expected_label == -1 and torch.equal(augmented, expected)


def test_an_unlabeled_stream_epoch_serves_every_training_file_once(unlabeled_shards):
    source, shards, _ = unlabeled_shards
    readable = readable_positions(folder_split(source)[0])
    loader = unlabeled_stream(shards, num_workers=2).train_dataloader()
    epochs = []
    for _ in range(2):
        served = batches(loader)
        assert torch.cat([labels for _, labels, _ in served]).tolist() == [-1] * len(readable)
        epochs.append(torch.cat([seeds for *_, seeds in served]).tolist())
    for epoch, seeds in zip((1, 2), epochs):  # litdata's loader counts epochs from 1
        assert sorted(seeds) == sorted(sample_seed(0, epoch, index) for index in readable)


def test_unlabeled_shards_have_no_knn_and_each_stream_group_refuses_the_other_kind(unlabeled_shards, folder_shards):
    _, shards, _ = unlabeled_shards
    with pytest.raises(
        ValueError,
        match=r"^data=unlabeled_stream \(.*\) has no labels for a kNN evaluation; set "
        r"knn_data=<a labelled data group>$",
    ):
        unlabeled_stream(shards).knn_dataloaders()
    with pytest.raises(ValueError, match=r"hold images without labels; stream them with data=unlabeled_stream"):
        stream_module(shards)
    with pytest.raises(ValueError, match=rf"hold labelled images \({CLASSES} classes\); stream them with their"):
        unlabeled_stream(folder_shards[1])


def test_labelled_shards_store_their_groups_numbers_and_older_info_files_still_read(folder_shards, tmp_path):
    _, shards = folder_shards
    info = read_shard_info(shards)
    assert info.labelled and (info.mean, info.std) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    auto = stream_module(shards, mean="auto", std="auto")
    auto.setup()
    assert (auto.mean, auto.std, auto.num_classes) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), CLASSES)
    old = tmp_path / "format1"
    shutil.copytree(shards, old)
    written = json.loads((old / INFO_FILE).read_text())
    for key in ("labelled", "mean", "std"):
        del written[key]
    (old / INFO_FILE).write_text(json.dumps({**written, "format_version": 1}))
    assert read_shard_info(old) == dataclasses.replace(info, mean=None, std=None, format_version=1)
    assert stream_module(old).num_classes == CLASSES
    with pytest.raises(ValueError, match=r"data.mean=auto: .*format1/mae_shards.json stores no mean and std"):
        stream_module(old, mean="auto", std="auto")


def test_an_undecodable_sampled_file_stops_an_unlabeled_conversion_unless_skipped(unlabeled_shards, tmp_path, capsys):
    source, _, _ = unlabeled_shards
    assert run_convert("data=unlabeled", tmp_path / "out", f"data.root={source}", "data.val_fraction=0.1") == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert BROKEN.split("/")[-1] in error and "data.on_bad_image=skip" in error and not (tmp_path / "out").exists()


def test_a_pretraining_run_streams_unlabeled_shards_with_their_numbers_and_skips_knn(unlabeled_shards, config_factory):
    from mae.jobs.pretrain import pretrain

    _, shards, _ = unlabeled_shards
    cfg = config_factory(
        [
            "data=unlabeled_stream",
            f"data.input_dir={shards}",
            "data.img_size=28",
            "data.num_workers=0",
            "data.pin_memory=false",
            "schedule.batch_size=4",
            "schedule.epochs=1",
            "model.embed_dim=32",
            "model.depth=1",
            "model.num_heads=2",
            "model.decoder_embed_dim=16",
            "model.decoder_depth=1",
            "model.decoder_num_heads=2",
            "callbacks.progress_bar.refresh_rate=0",
            "trainer.log_every_n_steps=1",
        ]
    )
    results = pretrain(cfg)
    assert results["optimizer_steps"] == 5 and results["val_loss"] is not None  # 20 training images, batch 4
    assert results["knn_top1_pretrained"] is None and "has no labels" in results["knn_skipped"]
    written = (Path(cfg.paths.output_dir) / "config_resolved.yaml").read_text().split("data:")[1]
    assert f"- {read_shard_info(shards).mean[0]}" in written.split("std:")[0]
