"""Fine-tuning, linear probing and eval.py through the real configs, from a checkpoint that pre-training wrote."""

import hashlib
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from conftest import assert_one_line_error, compose_config, data_module
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from mae.jobs.downstream import build, downstream
from mae.jobs.evaluate import evaluate
from mae.jobs.harness import SetupError
from mae.jobs.pretrain import pretrain
from mae.model_files.checkpoint import export_timm_state_dict
from mae.models import MaskedAutoencoderViT
from mae.models.classifier import vit_classifier_from_mae
from mae.runs.run_directory import CONFIG_FILE, TIMM_CLASSIFIER_FILE

ROOT = Path(__file__).resolve().parents[1]

MODEL = [
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
]
# A small model and a Fashion-MNIST subset keep each run to seconds on two cores; the test split stays whole.
SMALL = MODEL + [
    "data.train_samples=256",
    "schedule.batch_size=32",
    "schedule.epochs=1",
    "schedule.warmup_epochs=0",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar.refresh_rate=0",
]


@pytest.fixture(scope="module")
def pretrained_ckpt(tmp_path_factory) -> Path:
    """A pre-training checkpoint of the small model, written by the pre-training job."""
    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    cfg = compose_config(
        SMALL + ["callbacks.knn_evaluation=null", "callbacks.reconstruction_grid=null"], output_dir=run_dir
    )
    pretrain(cfg)
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def finetuned_run(pretrained_ckpt, tmp_path_factory) -> tuple[Path, dict]:
    """A fine-tuning run from ``pretrained_ckpt``: (run directory, its results)."""
    run_dir = tmp_path_factory.mktemp("finetune") / "run"
    cfg = compose_config(["task=finetune", f"pretrained={pretrained_ckpt}"] + SMALL, output_dir=run_dir)
    return run_dir, downstream(cfg)


def pretrained_encoder(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items()}


def test_finetuning_starts_from_the_pretrained_encoder(config_factory, pretrained_ckpt):
    run = build(config_factory(["task=finetune", f"pretrained={pretrained_ckpt}"] + SMALL))
    weights = pretrained_encoder(pretrained_ckpt)
    classifier = run.module.model
    for key in ("patch_embed.proj.weight", "cls_token", "blocks.1.mlp.fc2.weight", "pos_embed"):
        assert torch.equal(classifier.state_dict()[key], weights[key]), key
    assert classifier.global_pool == "avg" and classifier.head.out_features == 10
    scratch = build(config_factory(["task=finetune", "pretrained=null"] + SMALL)).module.model
    assert not torch.equal(scratch.blocks[1].mlp.fc2.weight, weights["blocks.1.mlp.fc2.weight"])


def test_finetuning_writes_test_split_results_and_a_timm_classifier(finetuned_run, pretrained_ckpt):
    run_dir, results = finetuned_run
    assert json.loads((run_dir / "results.json").read_text()) == results
    assert results["pretrained"] == str(pretrained_ckpt)
    assert results["pretrained_sha256"] == hashlib.sha256(pretrained_ckpt.read_bytes()).hexdigest()
    assert results["task"] == "finetune" and results["split"] == "test" and results["num_images"] == 10000
    assert 0.0 <= results["top1"] <= results["top5"] <= 100.0
    schedule = OmegaConf.load(run_dir / CONFIG_FILE).schedule  # the lr scaling rule: blr x batch / 256
    assert results["optimizer_steps"] == 256 // 32 and results["peak_lr"] == pytest.approx(schedule.blr * 32 / 256)
    # The exported classifier is a timm ViT with its head: same logits as the fine-tuned module.
    module_state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=28,
        patch_size=7,
        in_chans=1,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=10,
        global_pool="avg",
        checkpoint_path=str(run_dir / TIMM_CLASSIFIER_FILE),
    ).eval()
    reference = vit_classifier_from_mae(
        MaskedAutoencoderViT(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=2, num_heads=2), num_classes=10
    ).eval()
    reference.load_state_dict({k.removeprefix("model."): v for k, v in module_state["state_dict"].items()})
    imgs = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(vit(imgs), reference(imgs), atol=1e-5)
    # The same classifier as safetensors, rebuilt from the JSON beside it alone.
    safe = run_dir / "timm_classifier.safetensors"
    arch = json.loads(safe.with_suffix(".json").read_text())
    assert arch["kind"] == "timm_classifier"
    settings = dict(arch["architecture"])
    eps = settings.pop("layer_norm_eps")
    rebuilt = VisionTransformer(**settings, norm_layer=partial(torch.nn.LayerNorm, eps=eps)).eval()
    rebuilt.load_state_dict(load_file(safe))
    with torch.no_grad():
        assert torch.equal(rebuilt(imgs), vit(imgs))


def test_linear_probe_trains_only_the_head(config_factory, pretrained_ckpt):
    cfg = config_factory(["task=linprobe", f"pretrained={pretrained_ckpt}"] + SMALL)
    results = downstream(cfg)
    assert results["task"] == "linprobe" and results["num_images"] == 10000
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    weights = pretrained_encoder(pretrained_ckpt)
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    assert encoder and all(torch.equal(value, weights[key]) for key, value in encoder.items())
    L.seed_everything(cfg.seed)
    initial_head = build(cfg).module.head[1].weight  # the seed downstream() set: the same initialisation
    assert not torch.equal(state["head.1.weight"], initial_head)
    assert state["head.0.num_batches_tracked"] == 256 // 32  # BatchNorm statistics follow the training data


def test_missing_pretrained_checkpoint_is_a_one_line_error(config_factory, tmp_path):
    cfg = config_factory(["task=finetune", f"pretrained={tmp_path / 'none.ckpt'}"] + SMALL)
    with pytest.raises(SetupError, match=r"none\.ckpt does not exist; run `make pretrain` first") as error:
        downstream(cfg)
    assert "\n" not in str(error.value)


def test_checkpoint_of_another_architecture_is_refused_by_name(config_factory, pretrained_ckpt):
    cfg = config_factory(["task=linprobe", f"pretrained={pretrained_ckpt}", "model.embed_dim=48"] + SMALL[1:])
    with pytest.raises(SetupError, match=r"cls_token has shape \(1, 1, 32\), this model expects \(1, 1, 48\)"):
        downstream(cfg)


def run_eval(tmp_path: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "eval.py"),
            f"hydra.run.dir={tmp_path / 'eval'}",
            "callbacks.progress_bar.refresh_rate=0",
            *overrides,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_eval_py_reproduces_the_final_evaluation_of_a_trained_checkpoint(finetuned_run, tmp_path):
    run_dir, results = finetuned_run
    result = run_eval(tmp_path, [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((tmp_path / "eval" / "results.json").read_text())
    for key in ("top1", "top5", "loss", "num_images", "split"):
        assert written[key] == pytest.approx(results[key]), key
    assert f"top-1 {results['top1']:.2f}%" in result.stdout


def test_eval_py_refuses_data_with_another_class_count(finetuned_run, tmp_path):
    root = tmp_path / "folder"
    for split in ("train", "val"):
        for name in ("a", "b", "c"):
            (root / split / name).mkdir(parents=True)
            Image.new("L", (28, 28), 100).save(root / split / name / "0.png")
    ckpt = finetuned_run[0] / "checkpoints" / "last.ckpt"
    result = run_eval(
        tmp_path,
        [
            f"ckpt_path={ckpt}",
            "data=image_folder",
            f"data.root={root}",
            "data.img_size=28",
            "data.in_chans=1",
            "data.mean=[0.5]",
            "data.std=[0.5]",
            "data.num_workers=0",
        ],
    )
    assert_one_line_error(result, "head.weight has shape (10, 32), this model expects (3, 32)")


def test_eval_py_without_a_checkpoint_is_a_one_line_error(tmp_path):
    result = run_eval(tmp_path, [])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: ckpt_path is required" in result.stderr


def test_reference_layout_finetuned_classifier_is_evaluated(config_factory, tmp_path):
    """A fine-tuned classifier saved as the reference does (timm keys with fc_norm and head under ``model``)."""
    torch.manual_seed(0)
    classifier = vit_classifier_from_mae(
        MaskedAutoencoderViT(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=2, num_heads=2), num_classes=10
    )
    torch.nn.init.normal_(classifier.head.weight, std=0.5)
    state = classifier.state_dict()
    assert "fc_norm.weight" in state and "norm.weight" not in state
    path = tmp_path / "checkpoint-best.pth"
    torch.save({"model": state, "epoch": 99, "args": None}, path)
    cfg = compose_config(
        ["task=finetune", f"ckpt_path={path}", "trainer.limit_val_batches=1.0"] + MODEL,
        output_dir=tmp_path / "eval",
        config_name="eval",
    )
    results = evaluate(cfg)
    # The same classifier evaluated directly, on the same 10000 test images.
    loader = data_module("fashion_mnist", batch_size=500).test_dataloader()
    classifier.eval()
    with torch.no_grad():
        correct = sum(int((classifier(x).argmax(1) == y).sum()) for x, y in loader)
    assert results["num_images"] == 10000
    assert results["top1"] == pytest.approx(100.0 * correct / 10000, abs=1e-3)


def test_export_of_a_classifier_round_trips_through_timm(tmp_path):
    classifier = vit_classifier_from_mae(
        MaskedAutoencoderViT(img_size=32, patch_size=4, in_chans=3, embed_dim=48, depth=2, num_heads=3),
        num_classes=7,
        global_pool="token",
    )
    torch.nn.init.normal_(classifier.head.weight)
    path = export_timm_state_dict(classifier, tmp_path / "clf.pth")
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=4,
        embed_dim=48,
        depth=2,
        num_heads=3,
        num_classes=7,
        global_pool="token",
        checkpoint_path=str(path),
    )
    imgs = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(vit.eval()(imgs), classifier.eval()(imgs), atol=1e-5)


def test_resumed_finetuning_ends_with_the_weights_of_an_uninterrupted_run(config_factory, pretrained_ckpt):
    """RandAugment, random erasing, mixup/cutmix and drop path are all seeded per sample or batch."""
    common = [
        "task=finetune",
        f"pretrained={pretrained_ckpt}",
        "schedule.epochs=2",
        "schedule.warmup_epochs=1",
        "data.train_samples=128",
        "schedule.batch_size=32",
        "callbacks.progress_bar.refresh_rate=0",
    ] + MODEL

    def last_state(cfg) -> dict[str, torch.Tensor]:
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]

    uninterrupted = config_factory(common, name="uninterrupted")
    downstream(uninterrupted)
    interrupted = config_factory(common + ["trainer.max_epochs=1"], name="interrupted")
    downstream(interrupted)
    ckpt = Path(interrupted.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = config_factory(common + [f"ckpt_path={ckpt}"], name="resumed")
    downstream(resumed)
    expected, after_resume = last_state(uninterrupted), last_state(resumed)
    assert expected.keys() == after_resume.keys()
    assert all(torch.equal(expected[key], after_resume[key]) for key in expected)
    assert not torch.equal(last_state(interrupted)["model.head.weight"], expected["model.head.weight"])


def test_pixel_probe_is_the_same_probe_on_the_raw_pixels(config_factory):
    cfg = config_factory(
        ["experiment=linprobe_pixels"] + SMALL[len(MODEL) :] + ["data.train_samples=4096", "schedule.batch_size=128"]
    )
    assert cfg.pretrained is None and cfg.module._target_ == "mae.training.LinearProbeModule"
    results = downstream(cfg)
    assert results["task"] == "linprobe_pixels" and results["num_images"] == 10000
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    assert state["head.1.weight"].shape == (10, 28 * 28)  # a linear classifier over every pixel
    assert not any(key.startswith("encoder.") for key in state)
    # 32 steps of the probe on 4096 images already classify the test split far above chance (10%).
    assert results["top1"] > 40.0


def test_how_much_of_the_validation_split_is_watched_per_epoch_does_not_change_what_finetuning_trains(
    config_factory, pretrained_ckpt
):
    """The fine-tuning task watches top-1 on the validation split each epoch (a share: trainer.limit_val_batches);
    the weights it ends with are those of a run that watches all of it, a fifth, or none, with the recipe's
    regularisers on."""
    common = [
        "task=finetune",
        f"pretrained={pretrained_ckpt}",
        "schedule.epochs=2",
        "schedule.warmup_epochs=1",
        "data.train_samples=128",
        "schedule.batch_size=32",
        "callbacks.progress_bar.refresh_rate=0",
        "schedule.mixup=0.8",
        "schedule.drop_path_rate=0.1",
    ] + MODEL
    assert compose_config(["task=finetune"]).trainer.limit_val_batches == 1.0
    states = []
    for share in (0.2, 1.0, 0.0):
        cfg = config_factory(common + [f"trainer.limit_val_batches={share}"], name=f"val{share}")
        downstream(cfg)
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        states.append(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    assert all(torch.equal(states[0][key], other[key]) for other in states[1:] for key in states[0])
