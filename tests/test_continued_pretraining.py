"""Continued pre-training (``pretrained=PATH`` in the pre-training task): encoder and decoder from any file
``mae.load_model`` reads, position tables resized to the model's grid, one-line errors for files that do not fit."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from extras import needs_extra

import mae.jobs.pretrain as pretrain_job
from mae.jobs.harness import SetupError
from mae.jobs.pretrain import initial_model, pretrain
from mae.model_files.checkpoint import CheckpointError, interpolate_pos_embed
from mae.model_files.export import save_mae
from mae.model_files.loading import load_mae_weights
from mae.models.classifier import vit_classifier_from_mae
from mae.models.pos_embed import sincos_2d
from mae.runs.config import instantiate_node

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "official_mae_tiny.pt"

# The default model group (patch 7 on 28 px Fashion-MNIST) shrunk to one block, and one step on 16 images.
TINY = [
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "data.train_samples=64",
    "schedule.batch_size=16",
    "+trainer.max_steps=1",
    "trainer.limit_val_batches=0",
    "callbacks.knn_evaluation=null",
    "callbacks.reconstruction_grid=null",
    "callbacks.progress_bar.refresh_rate=0",
]
# The architecture of the reference fixture (see /work/shared/fixtures/README.md) as model group overrides.
FIXTURE_MODEL = [
    "model=mae_vit_tiny_patch4",
    "data.img_size=32",
    "data.in_chans=3",
    "model.embed_dim=64",
    "model.depth=2",
    "model.num_heads=4",
    "model.decoder_embed_dim=32",
    "model.decoder_depth=2",
    "model.decoder_num_heads=4",
]


def trained_like(cfg) -> torch.nn.Module:
    """The model group's MAE with every trainable weight moved away from any initialisation."""
    torch.manual_seed(123)
    model = instantiate_node(cfg.model)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def fresh(cfg, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return instantiate_node(cfg.model)


def continued(cfg, seed: int = 0) -> torch.nn.Module:
    """The pre-training job's initial model, from the same random state as :func:`fresh`."""
    torch.manual_seed(seed)
    return initial_model(cfg)


def assert_same_state(model: torch.nn.Module, expected: dict[str, torch.Tensor], keys=None) -> None:
    state = model.state_dict()
    for key in keys if keys is not None else expected:
        assert torch.equal(state[key], expected[key]), key


class FirstStep(L.Callback):
    """Records the model's weights before training, and the first training batch with its masking noise and loss."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}
        self.batch = self.noise = self.loss = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self.state = {key: value.clone() for key, value in pl_module.model.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.batch is None:
            self.batch, self.noise, self.loss = batch, pl_module.training_noise(batch), outputs["loss"].detach()


def export(model: torch.nn.Module, fmt: str, tmp_path: Path) -> Path:
    if fmt == "mae":
        return save_mae(model, tmp_path / "source.safetensors")
    needs_extra("transformers", "hf")
    from mae.model_files.transformers_format import save_transformers

    return save_transformers(model, tmp_path / "source_hf")


@pytest.mark.parametrize("fmt", ["mae", "transformers"])
def test_a_continued_run_starts_at_the_source_models_loss(config_factory, tmp_path, monkeypatch, fmt):
    source = trained_like(config_factory(TINY, name="source"))
    path = export(source, fmt, tmp_path)
    first, build = FirstStep(), pretrain_job.build

    def build_with_recorder(cfg):
        run = build(cfg)
        run.trainer.callbacks.append(first)
        return run

    monkeypatch.setattr(pretrain_job, "build", build_with_recorder)
    cfg = config_factory(TINY + [f"pretrained={path}"])
    results = pretrain(cfg)

    # Encoder and decoder are the source's before the first step...
    assert first.state.keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        assert torch.equal(first.state[key], value), key
    # ...so the first training loss is the source's on that batch with those masks.
    assert first.noise is not None
    with torch.no_grad():
        expected = source(first.batch[0], noise=first.noise).loss
    torch.testing.assert_close(first.loss, expected, rtol=0, atol=1e-6)
    assert results["pretrained"] == str(path) and results["optimizer_steps"] == 1
    assert json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())["pretrained"] == str(path)


def test_a_reference_pth_with_decoder_loads_whole_into_the_matching_model_group(config_factory, tmp_path):
    fixture = torch.load(FIXTURE, weights_only=True)
    torch.save({"model": fixture["state_dict"], "epoch": 799}, tmp_path / "checkpoint-799.pth")
    cfg = config_factory(FIXTURE_MODEL + [f"pretrained={tmp_path / 'checkpoint-799.pth'}"])
    model = continued(cfg).eval()
    assert model.state_dict().keys() == fixture["state_dict"].keys()
    assert_same_state(model, fixture["state_dict"])  # decoder and perturbed position tables included
    with torch.no_grad():
        loss = model(fixture["imgs"], noise=fixture["norm_pix_noise"]).loss
    torch.testing.assert_close(loss, fixture["norm_pix_loss"], rtol=0, atol=1e-6)


def test_an_encoder_only_file_keeps_the_decoders_own_initialisation_and_says_so(config_factory, tmp_path, caplog):
    source = trained_like(config_factory(TINY, name="source"))
    path = tmp_path / "encoder.pth"
    torch.save({"model": source.encoder_state_dict()}, path)  # the reference's encoder-only layout
    cfg = config_factory(TINY + [f"pretrained={path}"])
    with caplog.at_level(logging.INFO):
        model = continued(cfg)
    assert_same_state(model, source.encoder_state_dict())
    initial = fresh(cfg).state_dict()
    decoder_keys = [key for key in initial if key not in source.encoder_state_dict()]
    assert decoder_keys and "decoder_pred.weight" in decoder_keys
    assert_same_state(model, initial, decoder_keys)
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert warnings[0].getMessage() == (
        f"pretrained={path} holds an encoder only: the decoder keeps the model's initialisation"
    )
    assert not load_mae_weights(fresh(cfg), path).decoder


def test_a_fine_tuned_classifier_gives_its_encoder_and_keeps_the_final_norm(config_factory, tmp_path, caplog):
    source = trained_like(config_factory(TINY, name="source"))
    path = tmp_path / "finetuned.pth"
    torch.save({"model": vit_classifier_from_mae(source, num_classes=5).state_dict()}, path)  # fc_norm and head
    cfg = config_factory(TINY + [f"pretrained={path}"])
    with caplog.at_level(logging.INFO):
        model = continued(cfg)
    initial = fresh(cfg).state_dict()
    kept = [key for key in initial if key.startswith(("norm.", "decoder_", "mask_token"))]
    assert_same_state(model, initial, kept)
    assert_same_state(model, source.state_dict(), [key for key in initial if key not in kept])
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert warnings == [
        f"pretrained={path} holds an encoder only: the decoder and the final norm (a fine-tuned "
        "classifier has fc_norm instead) keep the model's initialisation"
    ]
    assert load_mae_weights(fresh(cfg), path).unused == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]


def test_another_image_size_takes_the_models_own_sincos_tables(config_factory, tmp_path, caplog):
    source = trained_like(config_factory(TINY, name="source"))  # 28 px: a 4x4 grid of 7 px patches
    path = save_mae(source, tmp_path / "source.safetensors")
    cfg = config_factory(TINY + ["data.img_size=56", f"pretrained={path}"])  # an 8x8 grid
    with caplog.at_level(logging.INFO, logger="mae.model_files.loading"):
        model = continued(cfg)
    assert load_mae_weights(fresh(cfg), path).resized_from == (4, 4)
    assert torch.equal(model.pos_embed, sincos_2d(32, 8).unsqueeze(0))
    assert torch.equal(model.decoder_pos_embed, sincos_2d(16, 8).unsqueeze(0))
    same_shape = [key for key in source.state_dict() if not key.endswith("pos_embed")]
    assert_same_state(model, source.state_dict(), same_shape)
    resized = [record.getMessage() for record in caplog.records if "resized" in record.getMessage()]
    assert resized == [
        f"pretrained={path}: position tables resized from the file's 4x4 patch grid to the model's "
        "8x8 (pos_embed: the sin-cos table of the new grid; decoder_pos_embed: the sin-cos table of "
        "the new grid)"
    ]


def test_another_image_size_interpolates_tables_that_are_not_sincos(config_factory, tmp_path, caplog):
    fixture = torch.load(FIXTURE, weights_only=True)  # 32 px, an 8x8 grid; its position tables were perturbed
    torch.save({"model": fixture["state_dict"]}, tmp_path / "reference.pth")
    cfg = config_factory(FIXTURE_MODEL + ["data.img_size=48", f"pretrained={tmp_path / 'reference.pth'}"])
    with caplog.at_level(logging.INFO, logger="mae.model_files.loading"):
        model = continued(cfg)
    for name in ("pos_embed", "decoder_pos_embed"):
        expected = interpolate_pos_embed(fixture["state_dict"][name], (12, 12))
        assert expected.shape[1] == 1 + 12 * 12 and torch.equal(getattr(model, name), expected), name
        assert not torch.allclose(getattr(model, name)[0], sincos_2d(expected.shape[-1], 12), atol=1e-3)
    assert (
        "from the file's 8x8 patch grid to the model's 12x12 (pos_embed: interpolated bicubically; "
        "decoder_pos_embed: interpolated bicubically)" in caplog.text
    )


@pytest.mark.parametrize(
    ("overrides", "numbers"),
    [
        (["model.embed_dim=48", "model.depth=2"], ("embed_dim=32, depth=1", "embed_dim=48, depth=2")),
        (
            ["model=mae_vit_tiny_patch4", "model.embed_dim=32", "model.depth=1", "model.num_heads=2"],
            ("patch_size=7", "patch_size=4"),
        ),
        (["data.in_chans=3"], ("in_chans=1", "in_chans=3")),
        (
            ["model.mlp_ratio=2.0", "model.decoder_embed_dim=24"],
            ("mlp_ratio=4.0, decoder_embed_dim=16", "mlp_ratio=2.0, decoder_embed_dim=24"),
        ),
        (["model.num_heads=4"], ("num_heads=2", "num_heads=4")),  # not in the shapes: as the export states it
    ],
)
def test_another_architecture_is_one_line_naming_both(config_factory, tmp_path, overrides, numbers):
    source = trained_like(config_factory(TINY, name="source"))
    path = save_mae(source, tmp_path / "source.safetensors")
    cfg = config_factory(TINY + overrides + [f"pretrained={path}"])
    with pytest.raises(CheckpointError) as error:
        continued(cfg)
    preset = "mae_vit_tiny_patch4" if "model=mae_vit_tiny_patch4" in overrides else "mae_vit_tiny_patch7"
    assert str(error.value) == (
        f"pretrained={path} has {numbers[0]} but model={preset} builds {numbers[1]}; choose "
        "the model group that matches the file (or set those numbers, e.g. "
        "model.embed_dim=...)"
    )


def test_an_encoder_only_file_is_not_held_to_the_decoder(config_factory, tmp_path):
    source = trained_like(config_factory(TINY, name="source"))
    torch.save({"model": source.encoder_state_dict()}, tmp_path / "encoder.pth")
    cfg = config_factory(
        TINY + ["model.decoder_embed_dim=24", "model.decoder_depth=2", f"pretrained={tmp_path / 'encoder.pth'}"]
    )
    assert len(continued(cfg).decoder_blocks) == 2
    wider = config_factory(TINY + ["model.embed_dim=64", f"pretrained={tmp_path / 'encoder.pth'}"], name="wider")
    with pytest.raises(CheckpointError, match=r"has embed_dim=32 but model=mae_vit_tiny_patch7 builds embed_dim=64;"):
        continued(wider)


def test_another_architecture_through_train_py_exits_2_with_one_line(config_factory, tmp_path):
    source = trained_like(config_factory(TINY, name="source"))
    path = save_mae(source, tmp_path / "source.safetensors")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"hydra.run.dir={tmp_path / 'cli'}",
            f"paths.log_dir={tmp_path / 'outputs'}",
            *TINY,
            "model.depth=2",
            f"pretrained={path}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: pretrained={path} has depth=1 but model=mae_vit_tiny_patch7 builds depth=2; choose "
        "the model group that matches the file (or set those numbers, e.g. model.embed_dim=...)"
    ]
    assert "Traceback" not in result.stderr and not (tmp_path / "cli" / "checkpoints").exists()


def test_pretrained_and_resume_together_are_one_line_before_any_work(config_factory, tmp_path):
    source = trained_like(config_factory(TINY, name="source"))
    path = save_mae(source, tmp_path / "source.safetensors")
    cfg = config_factory(TINY + [f"pretrained={path}", f"ckpt_path={tmp_path / 'last.ckpt'}"])
    with pytest.raises(SetupError) as error:
        pretrain(cfg)
    assert str(error.value) == (
        f"pretrained={path} and ckpt_path={tmp_path / 'last.ckpt'} are both set: resuming "
        "(ckpt_path) restores a run's weights, optimizer and schedule, continued pre-training "
        "(pretrained) starts a new schedule from weights; give one of them"
    )
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_a_missing_file_is_one_line_naming_it(config_factory, tmp_path):
    cfg = config_factory(TINY + [f"pretrained={tmp_path / 'nothing.safetensors'}"])
    with pytest.raises(SetupError, match=rf"^pretrained={tmp_path / 'nothing.safetensors'} does not exist; "):
        pretrain(cfg)


def test_pretrained_null_is_the_papers_random_initialisation(config_factory):
    cfg = config_factory(TINY)
    assert cfg.pretrained is None
    assert_same_state(continued(cfg), fresh(cfg).state_dict())
