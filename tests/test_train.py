"""train.py through the real configs: a full tiny run, resume equality, bad input, DDP on two CPU processes."""

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error

from mae.jobs.harness import SetupError
from mae.jobs.pretrain import pretrain
from mae.models import MaskedAutoencoderViT

ROOT = Path(__file__).resolve().parents[1]

# A small model and a Fashion-MNIST subset keep each run to seconds on two cores.
SMALL = [
    "data.train_samples=256",
    "data.knn_train_samples=256",
    "data.knn_val_samples=128",
    "schedule.batch_size=32",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=2",
    "callbacks.progress_bar.refresh_rate=0",
]


def run_train(tmp_path: Path, overrides: list[str], name: str = "cli") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"hydra.run.dir={tmp_path / name}",
            f"paths.log_dir={tmp_path / 'outputs'}",
            *overrides,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return [
            (int(row["step"]), float(row["train/loss_step"]))
            for row in csv.DictReader(handle)
            if row.get("train/loss_step")
        ]


def test_run_writes_checkpoints_grid_and_results(config_factory, tmp_path):
    cfg = config_factory(SMALL + ["schedule.epochs=2", "schedule.warmup_epochs=1"])
    results = pretrain(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.ckpt", "epoch000.ckpt", "epoch001.ckpt"}
    assert (run_dir / "reconstruction.png").is_file() and (run_dir / "config_resolved.yaml").is_file()
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk == results
    assert 0.0 <= results["knn_top1_pretrained"] <= 1.0 and 0.0 <= results["knn_top1_random_init"] <= 1.0
    assert results["optimizer_steps"] == 2 * (256 // 32) and results["effective_batch_size"] == 32
    assert results["peak_lr"] == pytest.approx(cfg.schedule.blr * 32 / 256)
    last = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    assert results["checkpoint_sha256"] == hashlib.sha256(last).hexdigest()
    assert results["pretrained"] is None and results["pretrained_sha256"] is None
    # The Lightning checkpoint's model weights are in the reference layout.
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    model = MaskedAutoencoderViT(
        img_size=28,
        patch_size=7,
        in_chans=1,
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()}, strict=True)


def test_resumed_run_repeats_the_uninterrupted_loss_curve(config_factory):
    common = SMALL + [
        "schedule.epochs=3",
        "schedule.warmup_epochs=1",
        "callbacks.knn_evaluation=null",
        "callbacks.reconstruction_grid=null",
    ]
    full = config_factory(common, name="full")
    pretrain(full)
    interrupted = config_factory(common + ["trainer.max_epochs=2"], name="interrupted")
    pretrain(interrupted)
    last = Path(interrupted.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = config_factory(common + [f"ckpt_path={last}"], name="resumed")
    pretrain(resumed)

    full_curve = step_losses(Path(full.paths.output_dir))
    stitched = step_losses(Path(interrupted.paths.output_dir)) + step_losses(Path(resumed.paths.output_dir))
    assert len(full_curve) == 3 * 8
    assert [step for step, _ in stitched] == [step for step, _ in full_curve]
    assert [loss for _, loss in stitched] == pytest.approx([loss for _, loss in full_curve], rel=1e-6, abs=1e-7)


def test_resume_from_checkpoint_of_another_shape_is_refused(config_factory):
    cfg = config_factory(
        SMALL + ["schedule.epochs=1", "callbacks.knn_evaluation=null", "callbacks.reconstruction_grid=null"],
        name="small",
    )
    pretrain(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    wider = config_factory(SMALL + ["model.embed_dim=48", f"ckpt_path={ckpt}"], name="wider")
    with pytest.raises(SetupError, match=r"cls_token has shape \(1, 1, 32\), this model expects \(1, 1, 48\)"):
        pretrain(wider)
    assert not (Path(wider.paths.output_dir) / "checkpoints").exists()


def test_fast_dev_run_through_train_py(tmp_path):
    result = run_train(tmp_path, SMALL + ["+trainer.fast_dev_run=2"])
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "cli"
    assert "kNN top-1" in result.stdout
    assert (run_dir / "reconstruction.png").is_file()
    assert json.loads((run_dir / "results.json").read_text())["optimizer_steps"] == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.mask_ratio=1.5"], "mask_ratio=1.5 is outside [0, 1)"),
        (["data.img_size=30"], "img_size=30 is not divisible by patch_size=7"),
        (["model.decoder_depth=0"], "decoder_depth=0 must be at least 1"),
        (["schedule.min_lr=1"], "schedule.min_lr=1 is above the peak lr"),
        (["schedule.batch_size=0"], "schedule.batch_size=0 must be at least 1"),
        (["data=image_folder", "data.root=/nonexistent/imagenet"], "/nonexistent/imagenet"),
        (["ckpt_path=/nonexistent/last.ckpt"], "checkpoint /nonexistent/last.ckpt does not exist"),
    ],
)
def test_bad_input_stops_before_any_work_with_one_line(tmp_path, overrides, message):
    result = run_train(tmp_path, SMALL + overrides)
    assert_one_line_error(result, message, tmp_path / "cli")


def test_unknown_preset_names_the_available_ones(tmp_path):
    result = run_train(tmp_path, ["model=mae_vit_gigantic"])
    assert result.returncode != 0
    assert "Could not find 'model/mae_vit_gigantic'" in result.stderr and "mae_vit_base_patch16" in result.stderr


def test_ddp_on_two_cpu_processes(tmp_path):
    result = run_train(
        tmp_path,
        SMALL
        + [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            "schedule.epochs=1",
            "schedule.warmup_epochs=0",
        ],
        name="ddp",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    # Two processes: the effective batch (and so the lr) doubles and each process takes half the steps.
    assert results["effective_batch_size"] == 64
    assert results["optimizer_steps"] == 256 // 64
    assert (tmp_path / "ddp" / "checkpoints" / "last.ckpt").is_file()


def write_imagenet_folder(root: Path, size: int = 40) -> Path:
    """A tiny copy of the ImageNet layout: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, real JPEG files."""
    from PIL import Image

    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            (root / split / wnid).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (size + 8 * i, size), (i * 40, 100, 200)).save(root / split / wnid / f"{i}.JPEG")
    return root


def test_paper_vit_base_recipe_runs_a_step_on_imagenet_layout(tmp_path):
    root = write_imagenet_folder(tmp_path / "imagenet", size=240)
    result = run_train(
        tmp_path,
        [
            "experiment=mae_vit_base_in1k",
            f"data.root={root}",
            "trainer=cpu",
            "logger=csv",
            "schedule.batch_size=2",
            "schedule.accumulate_grad_batches=1",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "data.pin_memory=false",
            "+trainer.fast_dev_run=1",
            "callbacks.knn_evaluation=null",
            "callbacks.progress_bar.refresh_rate=0",
        ],
        name="vitb",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "vitb" / "results.json").read_text())
    assert results["optimizer_steps"] == 1 and results["peak_lr"] == pytest.approx(1.5e-4 * 2 / 256)
    assert (tmp_path / "vitb" / "reconstruction.png").is_file()


def test_corrupt_image_met_during_training_is_a_one_line_error(tmp_path):
    root = write_imagenet_folder(tmp_path / "folder")
    bad = root / "train" / "n01443537" / "3.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = run_train(
        tmp_path,
        SMALL
        + ["data=image_folder", f"data.root={root}", "data.img_size=28", "data.num_workers=0", "schedule.batch_size=8"],
    )
    assert_one_line_error(result, f"cannot decode image {bad}")
