"""The segmentation task end to end on tiny generated scenes: train, score on validation and once on test, write
the picture; the encoder's weights arrive in the backbone, a frozen encoder stays fixed, bad input stops first."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import assert_one_line_error, compose_config, run_script
from test_dense_data import write_tiny_scenes

from mae.jobs.downstream import initial_encoder
from mae.jobs.segment import PICTURE_FILE, segment
from mae.model_files.checkpoint import load_checkpoint_file
from mae.models import mae_vit_tiny_patch7
from mae.runs.config import instantiate_node

TINY = [
    "task=segment",
    "schedule.iters=4",
    "schedule.warmup_iters=1",
    "schedule.val_interval=2",
    "schedule.batch_size=4",
    "callbacks.progress_bar.refresh_rate=0",
]
COUNTS = {"training": 8, "validation": 3, "test": 2}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return write_tiny_scenes(tmp_path_factory.mktemp("segment") / "scenes", counts=COUNTS)


@pytest.mark.parametrize(("val_interval", "validations_after_training"), [(2, 0), (3, 1)])
def test_segment_trains_and_scores_validation_and_test_splits(
    scenes, tmp_path, monkeypatch, val_interval, validations_after_training
):
    validate_calls = []
    validate = L.Trainer.validate
    monkeypatch.setattr(L.Trainer, "validate", lambda *a, **k: validate_calls.append(1) or validate(*a, **k))
    overrides = [*TINY, f"data.root={scenes}", "pretrained=null", f"schedule.val_interval={val_interval}"]
    cfg = compose_config(overrides, output_dir=tmp_path / "run")
    results = segment(cfg)
    # Training's last validation pass at its last step already scored the final weights; otherwise once more.
    assert len(validate_calls) == validations_after_training
    assert results == json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["optimizer_steps"] == 4 and results["pretrained"] is None
    side = 112  # the scenes' canvas: scored at the labels' full resolution
    assert results["num_pixels"] == COUNTS["test"] * side * side
    assert results["val_num_pixels"] == COUNTS["validation"] * side * side
    assert results["validation_split"] == "validation" and len(results["class_names"]) == 11
    for key in ("miou", "pixel_accuracy", "mean_accuracy", "val_miou", "val_pixel_accuracy"):
        assert 0.0 <= results[key] <= 100.0
    assert len(results["per_class_iou"]) == 11
    assert "provenance" in results
    picture = tmp_path / "run" / PICTURE_FILE
    assert picture.stat().st_size > 0


def test_the_pretrained_encoder_becomes_the_backbone(scenes, encoder_file, tmp_path):
    path, state = encoder_file
    cfg = compose_config([*TINY, f"data.root={scenes}", f"pretrained={path}"], output_dir=tmp_path / "run")

    module = instantiate_node(cfg.module, initial_encoder(cfg), num_classes=11)
    vit = module.model.backbone.vit
    assert torch.equal(vit.blocks[3].attn.qkv.weight, state["blocks.3.attn.qkv.weight"])
    assert torch.equal(vit.patch_embed.proj.weight, state["patch_embed.proj.weight"])
    assert vit.pos_embed.shape[1] == 1 + (84 // 7) ** 2  # resized to the crop's 12 x 12 patches
    assert vit.pos_embed.requires_grad


def test_a_frozen_encoder_stays_fixed_while_the_heads_learn(scenes, encoder_file, tmp_path):
    path, _ = encoder_file
    cfg = compose_config(
        [*TINY, f"data.root={scenes}", f"pretrained={path}", "module.freeze_backbone=true"], output_dir=tmp_path / "run"
    )
    results = segment(cfg)
    assert results["freeze_backbone"] is True
    trained = load_checkpoint_file(tmp_path / "run" / "checkpoints" / "last.ckpt")["state_dict"]

    fresh = instantiate_node(cfg.module, initial_encoder(cfg), num_classes=11).state_dict()
    backbone = [key for key in fresh if key.startswith("model.backbone.")]
    heads = [key for key in fresh if key.startswith("model.decode_head.") and key.endswith("conv_seg.weight")]
    assert backbone and heads
    assert all(torch.equal(trained[key], fresh[key]) for key in backbone)
    assert not all(torch.equal(trained[key], fresh[key]) for key in heads)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.crop_size=80", "80"),  # not a multiple of the 7-pixel patches
        ("data.root={missing}", "make scenes"),
        ("schedule.warmup_iters=9", "schedule.warmup_iters=9"),
    ],
)
def test_bad_input_stops_before_training_with_one_line(scenes, tmp_path, override, message):
    override = override.format(missing=tmp_path / "nowhere")
    done = run_script(tmp_path / "run", *TINY, f"data.root={scenes}", "pretrained=null", override)
    assert_one_line_error(done, message, tmp_path / "run")


def test_a_pretrained_file_of_another_width_is_refused(scenes, tmp_path):
    other = mae_vit_tiny_patch7(in_chans=1, embed_dim=96, num_heads=3)
    path = tmp_path / "narrow.pth"
    torch.save({"model": other.state_dict()}, path)
    done = run_script(tmp_path / "run", *TINY, f"data.root={scenes}", f"pretrained={path}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert sum(line.startswith("error:") for line in done.stderr.splitlines()) == 1


@pytest.mark.parametrize("experiment", ["mae_vit_base_upernet_ade20k", "mae_vit_large_upernet_ade20k"])
def test_the_published_ade20k_recipes_compose_with_their_numbers(experiment):
    cfg = compose_config([f"experiment={experiment}", "pretrained=null"])
    assert (cfg.data.crop_size, cfg.data.num_classes, list(cfg.data.scale)) == (512, 150, [2048, 512])
    assert (cfg.trainer.max_steps, cfg.module.warmup_steps, cfg.schedule.global_batch_size) == (160000, 1500, 16)
    assert (cfg.module.lr, tuple(cfg.module.betas), cfg.module.weight_decay) == (1e-4, (0.9, 0.999), 0.05)
    assert (cfg.module.aux_weight, list(cfg.module.pool_scales), cfg.module.rel_pos_bias) == (0.4, [1, 2, 3, 6], True)
    assert (cfg.module.window, cfg.module.stride, cfg.module.power, cfg.module.min_lr) == (512, 256, 1.0, 0.0)
    if "base" in experiment:
        assert (list(cfg.module.out_indices), cfg.module.layer_decay, cfg.module.channels) == ([3, 5, 7, 11], 0.65, 768)
    else:
        assert list(cfg.module.out_indices) == [7, 11, 15, 23] and cfg.model.embed_dim == 1024


def test_the_vit_base_recipe_builds(tmp_path):
    cfg = compose_config(["experiment=mae_vit_base_upernet_ade20k", "pretrained=null"])
    module = instantiate_node(cfg.module, instantiate_node(cfg.model), num_classes=150)
    assert module.model.backbone.vit.pos_embed.shape[1] == 1 + 32 * 32
    groups = module.configure_optimizers()["optimizer"].param_groups
    scales = sorted({round(group["initial_lr"] / 1e-4, 12) for group in groups})  # before the warmup factor
    assert scales[0] == pytest.approx(0.65**13) and scales[-1] == 1.0


def test_eval_scores_a_segmentation_checkpoint_like_the_run_did(scenes, tmp_path):
    cfg = compose_config([*TINY, f"data.root={scenes}", "pretrained=null"], output_dir=tmp_path / "run")
    trained = segment(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    # One scene per batch here, all the test scenes in one batch in the run: the same scores.
    done = run_script(
        tmp_path / "eval",
        f"ckpt_path={ckpt}",
        "task=segment",
        f"data.root={scenes}",
        "data.eval_batch_size=1",
        script="eval.py",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert evaluated["miou"] == pytest.approx(trained["miou"]) and evaluated["num_pixels"] == trained["num_pixels"]
    assert evaluated["per_class_iou"] == pytest.approx(trained["per_class_iou"], nan_ok=True)
    wrong = run_script(tmp_path / "wrong", f"ckpt_path={ckpt}", script="eval.py")  # the classification default
    assert wrong.returncode == 2
    error = [line for line in wrong.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "segmentation checkpoint" in error[0] and "task=segment" in error[0]
