"""data=unlabeled: any folder of images, no labels; listing, held-out split, decoding of every mode, mean: auto,
the run's stored file list, the kNN on knn_data or its absence, and bad input refused before any work."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_module
from PIL import Image

from mae.data.decoding import ImageLoader
from mae.data.file_listing import FileList, held_out, list_image_files, split_held_out
from mae.data.png_folder import image_path
from mae.data.png_folder import main as png_folder_main
from mae.data.unlabeled import FILE_LIST, NO_LABEL
from mae.jobs.downstream import downstream
from mae.jobs.harness import SetupError
from mae.jobs.pretrain import build, pretrain
from mae.model_files.stored_config import stored_normalization

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = [
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
]
QUIET = ["callbacks.progress_bar.refresh_rate=0", "trainer.log_every_n_steps=1"]


def folder_overrides(root: Path, **data: object) -> list[str]:
    settings = {
        "img_size": 28,
        "num_workers": 0,
        "persistent_workers": False,
        "pin_memory": False,
        "stats_samples": 16,
        **data,
    }
    return [
        "data=unlabeled",
        f"data.root={root}",
        *(f"data.{key}={value}" for key, value in settings.items()),
        "schedule.batch_size=8",
        "schedule.epochs=2",
        *TINY_MODEL,
        *QUIET,
    ]


def write_image(path: Path, rng: np.random.Generator, mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = size
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16)).save(path)
        return
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    rgb.convert(mode).save(path)


@pytest.fixture
def image_tree(tmp_path) -> Path:
    """24 images at two depths and several sizes, plus what must not be listed: hidden files and folders, a text
    file, a broken link, and a link back up the tree."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for index in range(24):
        folder = root / ("scans" if index % 3 else "scans/deep/er")
        write_image(folder / f"img{index:02d}.png", rng, size=(30 + index, 50 - index))
    write_image(root / ".hidden" / "secret.png", rng)
    write_image(root / ".dotfile.png", rng)
    (root / "notes.txt").write_text("not an image")
    os.symlink(root / "missing.png", root / "broken.png")
    os.symlink(root, root / "scans" / "loop")
    return root


# -- listing and the held-out split ----------------------------------------------------------------------------
def test_listing_is_recursive_sorted_and_skips_what_is_not_an_image(image_tree):
    files = list_image_files(image_tree)
    assert len(files) == 24 and files == sorted(files)
    assert "scans/deep/er/img00.png" in files and "scans/img01.png" in files
    assert not any(name.startswith(".") or "/." in name or "loop" in name for name in files)


def test_symlinked_folders_are_followed_once(tmp_path, image_tree):
    outside = tmp_path / "elsewhere"
    write_image(outside / "linked.png", np.random.default_rng(1))
    os.symlink(outside, image_tree / "linked_folder")
    files = list_image_files(image_tree)
    assert "linked_folder/linked.png" in files and len(files) == 25


def test_a_file_stays_on_its_side_when_files_are_added():
    paths = [f"a/{index}.png" for index in range(2000)]
    train, val = split_held_out(paths, 0.1, seed=0)
    assert 140 < len(val) < 260 and len(train) + len(val) == 2000
    more_train, more_val = split_held_out(paths + [f"b/{index}.png" for index in range(3000)], 0.1, seed=0)
    assert set(val) <= set(more_val) and set(train) <= set(more_train)
    assert split_held_out(paths, 0.1, seed=1)[1] != val  # the seed chooses the split
    assert held_out("x.png", 1.0, 0) and not held_out("x.png", 0.0, 0)


def test_the_val_dir_is_held_out_and_never_listed_for_training(tmp_path, image_tree):
    held = image_tree / "held"
    for index in range(3):
        write_image(held / f"h{index}.png", np.random.default_rng(index))
    module = data_module(
        "unlabeled",
        root=str(image_tree),
        val_dir=str(held),
        img_size=28,
        num_workers=0,
        persistent_workers=False,
        stats_samples=8,
    )
    module.prepare_run()
    assert len(module.file_list.train) == 24 and not any(name.startswith("held") for name in module.file_list.train)
    assert module.file_list.val == ["h0.png", "h1.png", "h2.png"]


# -- decoding --------------------------------------------------------------------------------------------------
MODES = ["L", "RGB", "RGBA", "P", "I;16", "CMYK", "LA"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_decodes_alike_in_both_decoders(tmp_path, mode, channels):
    path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    write_image(path, np.random.default_rng(2), mode)
    fast = ImageLoader.for_channels(channels, "torchvision", "error", 0.0)(str(path))
    reference = torch.from_numpy(np.array(ImageLoader.for_channels(channels, "pil", "error", 0.0)(str(path))))
    reference = reference.unsqueeze(0) if reference.ndim == 2 else reference.permute(2, 0, 1)
    assert fast.dtype == torch.uint8 and fast.shape == (channels, 40, 30)
    assert torch.equal(fast, reference)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    Image.fromarray(values).save(tmp_path / "g16.tif")  # TIFF: a format torchvision does not decode
    for name in ("g16.png", "g16.tif"):
        for decoder in ("torchvision", "pil"):
            pixels = ImageLoader("L", decoder)(str(tmp_path / name))
            pixels = torch.from_numpy(np.array(pixels)) if decoder == "pil" else pixels[0]
            assert pixels.flatten().tolist() == [0, 1, 128, 255], (name, decoder)


def test_any_size_is_cropped_to_img_size_and_batches_carry_no_label(image_tree):
    module = data_module(
        "unlabeled",
        root=str(image_tree),
        img_size=16,
        in_chans=1,
        num_workers=0,
        persistent_workers=False,
        batch_size=5,
        stats_samples=8,
    )
    images, labels, seeds = next(iter(module.train_dataloader()))
    assert images.shape == (5, 1, 16, 16) and labels.tolist() == [NO_LABEL] * 5 and seeds.shape == (5,)
    assert module.sample_images(1).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="no labels for a kNN evaluation"):
        module.knn_dataloaders()


# -- mean: auto --------------------------------------------------------------------------------------------------
def test_auto_statistics_are_the_pixel_statistics_of_the_sample(tmp_path, capsys):
    rng = np.random.default_rng(3)
    pixels = []
    for index in range(6):
        array = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(array).save(tmp_path / f"{index}.png")
        pixels.append(array.reshape(-1, 3) / 255)
    module = data_module(
        "unlabeled",
        root=str(tmp_path),
        val_fraction=0.4,
        split_seed=0,
        img_size=8,
        num_workers=0,
        persistent_workers=False,
        stats_samples=100,
    )
    module.prepare_run()
    train = [pixels[int(Path(name).stem)] for name in module.file_list.train]
    expected = np.concatenate(train)
    assert module.mean == pytest.approx(tuple(expected.mean(0)), abs=6e-5)
    assert module.std == pytest.approx(tuple(expected.std(0)), abs=6e-5)
    assert f"mean {list(module.mean)}, std {list(module.std)}" in capsys.readouterr().out


def test_explicit_numbers_are_kept_and_half_auto_is_refused(image_tree):
    module = data_module(
        "unlabeled",
        root=str(image_tree),
        mean=[0.5, 0.4, 0.3],
        std=[0.2, 0.2, 0.2],
        num_workers=0,
        persistent_workers=False,
        stats_samples=4,
    )
    module.prepare_run()
    assert module.mean == (0.5, 0.4, 0.3)
    with pytest.raises(ValueError, match="give both as numbers, or both as 'auto'"):
        data_module("unlabeled", root=str(image_tree), std=[0.2, 0.2, 0.2])
    with pytest.raises(ValueError, match="not available for FashionMNISTDataModule"):
        data_module("fashion_mnist", mean="auto", std="auto")


# -- a run on a folder -----------------------------------------------------------------------------------------
def test_a_run_stores_its_files_and_numbers_and_shows_learning_without_labels(config_factory, image_tree, caplog):
    cfg = config_factory(folder_overrides(image_tree, in_chans=1))
    with caplog.at_level(logging.INFO, logger="mae.callbacks.knn"):
        results = pretrain(cfg)
    run_dir = Path(cfg.paths.output_dir)
    listed = FileList.read(run_dir / FILE_LIST)
    assert len(listed.train) + len(listed.val) == 24 and listed.val
    # mean: auto, measured once, is in the written config and in the checkpoint
    written = (run_dir / "config_resolved.yaml").read_text()
    stored = stored_normalization(run_dir / "checkpoints" / "last.ckpt")
    assert stored is not None and stored.source.endswith("last.ckpt")
    assert f"- {stored.mean[0]}" in written and "auto" not in written.split("data:")[1].split("\n  std")[0]
    # no labels: kNN skipped with one line and a reason; the held-out loss and grids every epoch instead
    assert results["knn_top1_pretrained"] is None and "has no labels" in results["knn_skipped"]
    assert sum("kNN evaluation skipped" in record.message for record in caplog.records) == 1
    assert [entry["epoch"] for entry in results["val_loss_per_epoch"]] == [0, 1]
    assert results["reconstruction_grids"] == [
        "reconstruction_epoch000.png",
        "reconstruction_epoch001.png",
        "reconstruction.png",
    ]
    assert all((run_dir / name).is_file() for name in results["reconstruction_grids"])
    with open(run_dir / "csv" / "metrics.csv") as metrics:
        assert "val/loss" in metrics.readline()


def test_the_validation_masks_are_the_same_every_epoch(config_factory, image_tree):
    """The held-out loss of the same weights does not depend on when it is computed: the masks are seeded."""
    run = build(config_factory(folder_overrides(image_tree)))
    losses = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # whatever the global stream holds
        losses.append(run.trainer.validate(run.module, datamodule=run.datamodule, verbose=False)[0]["val/loss"])
    assert losses[0] == losses[1]


def test_knn_data_gives_the_knn_evaluation_its_labels(config_factory, image_tree):
    cfg = config_factory(
        folder_overrides(image_tree, in_chans=1)
        + [
            "knn_data=fashion_mnist",
            "knn_data.knn_train_samples=200",
            "knn_data.knn_val_samples=100",
            "schedule.epochs=1",
        ]
    )
    assert cfg.knn_data.img_size == 28 and cfg.knn_data.in_chans == 1
    results = pretrain(cfg)
    assert 0.0 < results["knn_top1_pretrained"] <= 1.0 and results["knn_data"] == "FashionMNISTDataModule"
    assert results["knn_bank_size"] == 200 and results["knn_num_queries"] == 100 and "knn_skipped" not in results


def test_a_resumed_run_trains_on_its_first_list(config_factory, image_tree, caplog):
    first = config_factory(folder_overrides(image_tree) + ["schedule.epochs=1"], name="first")
    pretrain(first)
    run_dir = Path(first.paths.output_dir)
    listed = FileList.read(run_dir / FILE_LIST)
    rng = np.random.default_rng(5)
    for index in range(5):
        write_image(image_tree / "added" / f"new{index}.png", rng)
    gone = image_tree / listed.train[0]
    gone.unlink()
    resumed = config_factory(
        folder_overrides(image_tree) + [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"], name="resumed"
    )
    with caplog.at_level(logging.WARNING):
        pretrain(resumed)
    again = FileList.read(Path(resumed.paths.output_dir) / FILE_LIST)
    assert again.train == listed.train and again.val == listed.val  # the added files are not trained on
    vanished = [record.message for record in caplog.records if "vanished" in record.message]
    assert len(vanished) == 1 and vanished[0].startswith("1 of the files") and str(gone) in vanished[0]


# -- bad input: one line, before any work, nothing written ---------------------------------------------------
def assert_refused(cfg, message: str, job=pretrain) -> None:
    with pytest.raises(SetupError) as error:
        job(cfg)
    assert message in str(error.value) and "\n" not in str(error.value)
    run_dir = Path(cfg.paths.output_dir)
    written = {path.name for path in run_dir.iterdir()} if run_dir.exists() else set()
    assert written <= {"train.log"}, written


def test_bad_folders_are_refused_before_any_work(config_factory, tmp_path, image_tree):
    empty = tmp_path / "folders" / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images")
    assert_refused(config_factory(folder_overrides(empty), name="empty"), f"data.root={empty} holds no image files")
    a_file = image_tree / "notes.txt"
    assert_refused(config_factory(folder_overrides(a_file), name="file"), f"data.root={a_file} is a file")
    missing = tmp_path / "folders" / "nowhere"
    assert_refused(config_factory(folder_overrides(missing), name="missing"), f"data.root={missing} is missing")
    assert_refused(
        config_factory(folder_overrides(image_tree, val_fraction=0.0), name="fraction"),
        "data.val_fraction=0.0 must be in (0, 1)",
    )
    one = tmp_path / "folders" / "one"
    write_image(one / "only.png", np.random.default_rng(0))
    side = "validation" if not held_out("only.png", 0.5, 0) else "training"
    assert_refused(
        config_factory(folder_overrides(one, val_fraction=0.5), name="one"),
        f"data.val_fraction=0.5 leaves no {side} image among the 1 files",
    )


def test_undecodable_folders_are_refused_before_any_work(config_factory, tmp_path, image_tree):
    junk = tmp_path / "folders" / "junk"
    junk.mkdir(parents=True)
    names = [f"broken{index}.jpg" for index in range(20)]
    for name in names:
        (junk / name).write_bytes(b"not a jpeg at all")
    train, _ = split_held_out(names, 0.5, seed=0)
    assert_refused(
        config_factory(folder_overrides(junk, val_fraction=0.5), name="junk"),
        f"none of the {len(train)} image files tried could be decoded",
    )
    for index in range(6):
        (image_tree / f"bad{index}.png").write_bytes(b"\x89PNG broken")
    assert_refused(
        config_factory(folder_overrides(image_tree, stats_samples=100), name="error"),
        "sampled files could not be decoded; remove them, or set data.on_bad_image=skip",
    )
    assert_refused(
        config_factory(folder_overrides(image_tree, stats_samples=100, on_bad_image="skip"), name="many"),
        "sampled image files could not be decoded, more than data.max_bad_fraction=0.01",
    )


def test_knn_data_without_labels_and_fine_tuning_without_labels_are_refused(config_factory, image_tree):
    assert_refused(
        config_factory(
            folder_overrides(image_tree) + ["knn_data=unlabeled", f"knn_data.root={image_tree}"], name="knn"
        ),
        "knn_data (UnlabeledImagesDataModule) has no labels for a kNN evaluation",
    )
    assert_refused(
        config_factory(folder_overrides(image_tree) + ["task=finetune", "pretrained=null"], name="ft"),
        "task=finetune trains a classifier and needs labels",
        job=downstream,
    )


def test_the_command_line_says_it_in_one_line_with_exit_code_2(tmp_path):
    empty = tmp_path / "folders" / "empty"
    empty.mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={tmp_path / 'run'}", *folder_overrides(empty)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and errors == [
        f"error: data.root={empty} holds no image files "
        f"(.jpg .jpeg .png .webp .gif .bmp .tif .tiff .ppm .pgm .pbm) at any depth"
    ]
    assert "Traceback" not in result.stderr


# -- Fashion-MNIST as a folder -----------------------------------------------------------------------------------
def test_the_png_folder_holds_the_in_memory_pixels(tmp_path):
    out = tmp_path / "fm"
    assert png_folder_main([str(out), "--split", "test"]) == 0
    assert image_path(out, 1234, 10000) == out / "1" / "1234.png"
    files = list_image_files(out)
    assert len(files) == 10000 and files[:2] == ["0/0000.png", "0/0001.png"] and files[-1] == "9/9999.png"
    memory = data_module("fashion_mnist").splits.test.dataset
    for index in (0, 4321, 9999):
        decoded = ImageLoader("L")(str(out / files[index]))
        assert torch.equal(decoded, memory.images[index])
    assert png_folder_main([str(out), "--split", "test"]) == 2  # an existing folder is never written into
    held_out = tmp_path / "held_out"
    assert png_folder_main([str(held_out), "--split", "val"]) == 0  # the 5000 images data.val_size holds out
    assert len(list_image_files(held_out)) == 5000
