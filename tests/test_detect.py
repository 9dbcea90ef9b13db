"""The detection task end to end on tiny generated scenes in COCO's layout: train, score COCO AP on validation and
once on test, write the picture; the encoder's weights arrive in the backbone; bad input stops first; the published
ViTDet recipes compose and build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, compose_config, run_script
from extras import needs_extra
from test_dense_data import write_tiny_scenes

from mae.jobs.detect import PICTURE_FILE, detect
from mae.jobs.downstream import initial_encoder
from mae.runs.config import instantiate_node

needs_extra("pycocotools", "detect")  # the whole file: COCO masks and AP

TINY = [
    "task=detect",
    "schedule.iters=4",
    "schedule.warmup_iters=1",
    "schedule.val_interval=2",
    "schedule.batch_size=2",
    "callbacks.progress_bar.refresh_rate=0",
]
COUNTS = {"training": 6, "validation": 3, "test": 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data folder holding ``fashion_mnist_scenes`` (the path conf/data/fashion_mnist_scenes_coco.yaml reads)."""
    root = tmp_path_factory.mktemp("detect")
    write_tiny_scenes(root / "fashion_mnist_scenes", counts=COUNTS)
    return root


def test_detect_trains_and_scores_validation_and_test_splits(data_dir, tmp_path):
    cfg = compose_config([*TINY, f"paths.data_dir={data_dir}", "pretrained=null"], output_dir=tmp_path / "run")
    results = detect(cfg)
    assert results == json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["optimizer_steps"] == 4 and results["pretrained"] is None
    assert results["validation_split"].endswith("instances_validation.json")
    assert len(results["class_names"]) == 10
    for key in ("box_ap", "box_ap50", "mask_ap", "val_box_ap", "val_mask_ap"):
        assert results[key] is None or 0.0 <= results[key] <= 100.0
    assert "provenance" in results
    assert (tmp_path / "run" / PICTURE_FILE).stat().st_size > 0


def test_eval_scores_a_detection_checkpoint_like_the_run_did(data_dir, tmp_path):
    cfg = compose_config([*TINY, f"paths.data_dir={data_dir}", "pretrained=null"], output_dir=tmp_path / "run")
    trained = detect(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    done = run_script(
        tmp_path / "eval", f"ckpt_path={ckpt}", "task=detect", f"paths.data_dir={data_dir}", script="eval.py"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    for key in ("box_ap", "box_ap50", "mask_ap"):
        assert evaluated[key] == pytest.approx(trained[key])
    wrong = run_script(tmp_path / "wrong", f"ckpt_path={ckpt}", script="eval.py")  # the classification default
    assert wrong.returncode == 2
    error = [line for line in wrong.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "detection checkpoint" in error[0] and "task=detect" in error[0]


def test_the_pretrained_encoder_becomes_the_backbone(data_dir, encoder_file, tmp_path):
    path, state = encoder_file
    cfg = compose_config([*TINY, f"paths.data_dir={data_dir}", f"pretrained={path}"], output_dir=tmp_path / "run")
    module = instantiate_node(cfg.module, initial_encoder(cfg), num_classes=10)
    vit = module.vit
    assert torch.equal(vit.blocks[3].attn.qkv.weight, state["blocks.3.attn.qkv.weight"])
    assert torch.equal(vit.patch_embed.proj.weight, state["patch_embed.proj.weight"])
    assert torch.equal(vit.pos_embed, state["pos_embed"][:, 1:])  # kept at 4 x 4, interpolated at each forward
    assert list(module.model.backbone.strides.values()) == [1.75, 3.5, 7.0, 14.0, 28.0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.image_size=110", "110"),  # not a multiple of the 7-pixel patches
        ("paths.data_dir={missing}", "make scenes"),
        ("schedule.warmup_iters=9", "schedule.warmup_iters=9"),
        ("schedule.milestones=[0.9,0.5]", "milestones"),
    ],
)
def test_bad_input_stops_before_training_with_one_line(data_dir, tmp_path, override, message):
    override = override.format(missing=tmp_path / "nowhere")
    done = run_script(tmp_path / "run", *TINY, f"paths.data_dir={data_dir}", "pretrained=null", override)
    assert_one_line_error(done, message, tmp_path / "run")


@pytest.mark.parametrize("experiment", ["vitdet_base_maskrcnn_coco", "vitdet_large_maskrcnn_coco"])
def test_the_published_vitdet_recipes_compose_with_their_numbers(experiment):
    cfg = compose_config([f"experiment={experiment}", "pretrained=null"])
    assert (cfg.data.image_size, list(cfg.data.scale_range), cfg.data.in_chans) == (1024, [0.1, 2.0], 3)
    assert (cfg.trainer.max_steps, cfg.module.warmup_steps, cfg.schedule.global_batch_size) == (184375, 250, 64)
    milestones = [round(fraction * 184375) for fraction in cfg.module.milestones]
    assert milestones == [163889, 177546] and cfg.module.gamma == 0.1 and cfg.module.warmup_factor == 0.001
    assert (cfg.module.lr, tuple(cfg.module.betas), cfg.module.weight_decay) == (1e-4, (0.9, 0.999), 0.1)
    assert (cfg.module.out_channels, cfg.module.window_size, cfg.module.rel_pos) == (256, 14, True)
    assert list(cfg.module.anchor_sizes) == [32, 64, 128, 256, 512] and list(cfg.module.box_fc) == [1024]
    if "base" in experiment:
        assert list(cfg.module.global_blocks) == [2, 5, 8, 11]
        assert (cfg.module.layer_decay, cfg.module.drop_path_rate) == (0.7, 0.1)
    else:
        assert list(cfg.module.global_blocks) == [5, 11, 17, 23] and cfg.model.embed_dim == 1024
        assert (cfg.module.layer_decay, cfg.module.drop_path_rate) == (0.8, 0.4)


def test_the_vit_base_recipe_builds():
    cfg = compose_config(["experiment=vitdet_base_maskrcnn_coco", "pretrained=null"])
    module = instantiate_node(cfg.module, instantiate_node(cfg.model), num_classes=80)
    vit = module.vit
    assert [block.window_size for block in vit.blocks] == [14, 14, 0, 14, 14, 0, 14, 14, 0, 14, 14, 0]
    assert module.model.backbone.out_channels == 256
    assert list(module.model.backbone.strides.values()) == [4, 8, 16, 32, 64]
    groups = module.configure_optimizers()["optimizer"].param_groups
    scales = sorted({round(group["initial_lr"] / 1e-4, 12) for group in groups})  # before the warmup factor
    assert scales[0] == pytest.approx(0.7**13) and scales[-1] == 1.0
