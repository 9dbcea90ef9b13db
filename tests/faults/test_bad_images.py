"""data.on_bad_image=skip: each undecodable file is logged once, listed and counted, the batch keeps its size, and
too many bad files still stop the run with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from PIL import Image

from mae.data.decoding import ImageLoader
from mae.data.errors import CorruptDataError
from mae.jobs.harness import SetupError
from mae.jobs.pretrain import pretrain

SMALL = [
    "data.img_size=28",
    "data.num_workers=0",
    "schedule.batch_size=4",
    "schedule.epochs=1",
    "schedule.warmup_epochs=0",
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "callbacks.knn_evaluation=null",
    "callbacks.progress_bar=null",
    "trainer.limit_val_batches=1",
]
NOT_A_JPEG = b"\xff\xd8\xff\xe0 not really a jpeg"


def image_folder(root: Path, per_class: int = 8) -> Path:
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (32, 32), (i * 30, 100, 200)).save(root / split / name / f"{i}.jpg")
    return root


def test_skip_lists_counts_and_keeps_training(tmp_path):
    root = image_folder(tmp_path / "images")
    bad = root / "train" / "b" / "3.jpg"
    bad.write_bytes(NOT_A_JPEG)
    cfg = compose_config(
        SMALL + ["data=image_folder", f"data.root={root}", "data.on_bad_image=skip"], output_dir=tmp_path / "run"
    )
    results = pretrain(cfg)
    assert results["bad_images"] == 1 and results["optimizer_steps"] == 16 // 4
    assert (tmp_path / "run" / "bad_images.txt").read_text().split() == [str(bad)]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["bad_images"] == 1


def test_skip_stops_when_too_many_files_are_bad(tmp_path):
    root = image_folder(tmp_path / "images")
    for i in range(4):
        (root / "train" / "a" / f"{i}.jpg").write_bytes(NOT_A_JPEG)
    cfg = compose_config(
        SMALL + ["data=image_folder", f"data.root={root}", "data.on_bad_image=skip", "data.max_bad_fraction=0.1"],
        output_dir=tmp_path / "run",
    )
    with pytest.raises(
        SetupError,
        match=r"of the \d+ images read so far could not be decoded, more than "
        r"data.max_bad_fraction=0.1",
    ) as error:
        pretrain(cfg)
    assert "\n" not in str(error.value)


def test_loader_policies(tmp_path):
    bad, other_bad, good = tmp_path / "bad.png", tmp_path / "other_bad.png", tmp_path / "good.png"
    bad.write_bytes(b"\x89PNG broken")
    other_bad.write_bytes(b"")
    Image.new("L", (4, 4), 7).save(good)
    with pytest.raises(CorruptDataError, match=f"cannot decode image {bad}"):
        ImageLoader("L", on_bad_image="error")(str(bad))
    skipping = ImageLoader("L", on_bad_image="skip", max_bad_fraction=0.2)
    for _ in range(3):
        assert torch.equal(skipping(str(good)), torch.full((1, 4, 4), 7, dtype=torch.uint8))
    assert skipping(str(bad)) is None  # 1 bad of 4 reads: too few reads (under 1 / 0.2) to judge the fraction
    assert skipping(str(bad)) is None  # the same file again: still one bad file, 1 of 5 is not above 0.2
    with pytest.raises(CorruptDataError, match="2 of the 6 images read so far could not be decoded"):
        skipping(str(other_bad))
    for policy, fraction, message in (
        ("ignore", 0.1, "on_bad_image='ignore' must be one of error, skip"),
        ("skip", 1.0, "max_bad_fraction=1.0 must be in \\[0, 1\\)"),
    ):
        with pytest.raises(ValueError, match=message):
            ImageLoader("L", on_bad_image=policy, max_bad_fraction=fraction)
