"""Features without masking: ``mae.extract_features`` against the model's own passes, and ``python -m mae.jobs.extract``
end to end on a checkpoint made by train.py (a tiny Fashion-MNIST written here as the data)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_data_fashion_mnist import N_TRAIN, N_VAL, make_fashion_mnist
from test_train import SMALL, run_train
from torch.utils.data import DataLoader, TensorDataset

import mae
import mae.jobs.extract
from mae.evaluation import knn
from mae.jobs.extract import main
from mae.model_files.export import write
from mae.models import MaskedAutoencoderViT

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
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
# SMALL's architecture on the default model group, for files that do not say theirs.
MODEL_OVERRIDES = [item for item in SMALL if item.startswith("model.")]


@pytest.fixture
def model() -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return MaskedAutoencoderViT(**TINY)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(7, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def block_outputs_by_hand(model: MaskedAutoencoderViT, images: torch.Tensor) -> list[torch.Tensor]:
    """Every block's output, computed step by step from the model's parts."""
    with torch.no_grad():
        x = model.patch_embed(images) + model.pos_embed[:, 1:]
        x = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(len(images), -1, -1), x], dim=1)
        outputs = []
        for block in model.blocks:
            x = block(x)
            outputs.append(x)
    return outputs


# -- the API ---------------------------------------------------------------------------------------------------
def test_tokens_are_forward_features_exactly(model, images):
    model.eval()
    with torch.no_grad():
        expected = model.forward_features(images)
    result = mae.extract_features(model, images, pool="tokens")
    assert isinstance(result, mae.Features) and result.labels is None and result.layers == {}
    assert result.features.shape == (7, 1 + 16, 32) and torch.equal(result.features, expected)
    batched = mae.extract_features(model, images, pool="tokens", batch_size=3)
    torch.testing.assert_close(batched.features, expected, rtol=0, atol=1e-6)


def test_pools_are_the_cls_token_and_the_mean_of_the_patch_tokens(model, images):
    tokens = mae.extract_features(model, images, pool="tokens").features
    assert torch.equal(mae.extract_features(model, images, pool="cls").features, tokens[:, 0])
    assert torch.equal(mae.extract_features(model, images, pool="avg").features, tokens[:, 1:].mean(dim=1))


@pytest.mark.parametrize("pool, knn_pool", [("cls", "cls"), ("avg", "mean")])
def test_features_are_the_knn_features_before_normalisation(model, images, pool, knn_pool):
    loader = DataLoader(TensorDataset(images, torch.arange(7) % 3), batch_size=3)
    ours = mae.extract_features(model, loader, pool=pool)
    theirs, labels = knn.extract_features(model, loader, pool=knn_pool)
    assert torch.equal(F.normalize(ours.features, dim=1), theirs)
    assert torch.equal(ours.labels, labels) and ours.labels.dtype == torch.int64


def test_a_loader_of_image_batches_gives_no_labels(model, images):
    result = mae.extract_features(model, DataLoader(images, batch_size=4))
    assert result.labels is None
    assert torch.equal(result.features, mae.extract_features(model, images, batch_size=4).features)


def test_intermediate_layers_are_the_raw_block_outputs_pooled_alike(model, images):
    by_hand = block_outputs_by_hand(model, images)
    result = mae.extract_features(model, images, pool="tokens", layers=[-1, 0])
    assert list(result.layers) == [0, 1]
    assert torch.equal(result.layers[0], by_hand[0]) and torch.equal(result.layers[1], by_hand[1])
    avg = mae.extract_features(model, images, pool="avg", layers=[1])
    assert torch.equal(avg.layers[1], by_hand[1][:, 1:].mean(dim=1))


def test_normed_intermediate_layers_end_with_the_features(model, images):
    result = mae.extract_features(model, images, pool="cls", layers=[0, 1], norm=True)
    assert torch.equal(result.layers[1], result.features)
    with torch.no_grad():
        assert torch.equal(result.layers[0], model.norm(block_outputs_by_hand(model, images)[0])[:, 0])


def test_runs_in_eval_mode_without_gradients_and_gives_each_module_its_mode_back(model, images):
    seen = []
    hook = model.blocks[0].register_forward_hook(
        lambda module, _args, _out: seen.append((module.training, torch.is_grad_enabled()))
    )
    model.train()
    model.blocks[1].eval()  # e.g. a block the caller froze: it must stay in eval mode
    try:
        result = mae.extract_features(model, images, pool="avg", layers=[0], batch_size=4)
    finally:
        hook.remove()
    assert seen == [(False, False), (False, False)]
    assert model.training and model.blocks[0].training and not model.blocks[1].training
    assert not result.features.requires_grad and not result.layers[0].requires_grad
    assert all(param.grad is None for param in model.parameters())
    assert not model.blocks[0]._forward_hooks  # the layer hooks are gone


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"pool": "mean"}, "pool='mean' is not a feature pooling; use one of 'cls', 'avg', 'tokens'"),
        ({"layers": [2]}, "layers=[2]: 2 is not a block index of this 2-block encoder (use -2 to 1)"),
        ({"layers": [-3]}, "layers=[-3]: -3 is not a block index of this 2-block encoder (use -2 to 1)"),
        ({"batch_size": 0}, "batch_size=0 must be at least 1"),
    ],
)
def test_bad_arguments_are_one_line(model, images, kwargs, message):
    with pytest.raises(ValueError) as error:
        mae.extract_features(model, images, **kwargs)
    assert str(error.value) == message


# -- the command -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny pre-training run's last.ckpt, beside its config_resolved.yaml."""
    tmp = tmp_path_factory.mktemp("pretrain")
    result = run_train(
        tmp,
        SMALL
        + [
            "schedule.epochs=1",
            "schedule.warmup_epochs=0",
            "callbacks.knn_evaluation=null",
            "callbacks.reconstruction_grid=null",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "cli" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A Fashion-MNIST of 24 train and 10 val random images: (root, arrays)."""
    root = tmp_path_factory.mktemp("fmnist")
    return root, make_fashion_mnist(root)


def trained_model(checkpoint: Path) -> MaskedAutoencoderViT:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model = MaskedAutoencoderViT(**TINY)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return model


def split_images(arrays: dict[str, np.ndarray], split: str) -> torch.Tensor:
    """The split as the data group serves it unaugmented: [0, 1] pixels normalised with its mean and std."""
    pixels = torch.from_numpy(arrays[f"{split}_images"]).float().div(255).unsqueeze(1)
    return (pixels - 0.2860) / 0.3530


def extract(checkpoint: Path, out: Path, root: Path, *overrides: str) -> int:
    return main([str(checkpoint), str(out), f"data.root={root}", "data.val_size=0", *overrides])


def test_saves_the_features_and_labels_of_the_whole_split(checkpoint, fmnist, tmp_path, capsys):
    root, arrays = fmnist
    out = tmp_path / "val.safetensors"
    assert extract(checkpoint, out, root, "batch_size=4", "chunk_size=6") == 0
    assert f"to {out}" in capsys.readouterr().out
    saved = load_file(str(out))
    assert set(saved) == {"features", "labels"} and not (tmp_path / "val.safetensors.parts").exists()
    expected = mae.extract_features(trained_model(checkpoint), split_images(arrays, "val"))
    torch.testing.assert_close(saved["features"], expected.features, rtol=0, atol=1e-5)
    assert saved["features"].shape == (N_VAL, 32) and saved["features"].dtype == torch.float32
    assert torch.equal(saved["labels"], torch.from_numpy(arrays["val_labels"]).long())


def test_npy_output_of_the_train_split_with_layers(checkpoint, fmnist, tmp_path):
    root, arrays = fmnist
    out = tmp_path / "feats.npy"
    assert extract(checkpoint, out, root, "split=train", "pool=avg", "layers=[0,-1]", "norm_layers=true") == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "feats_features.npy",
        "feats_labels.npy",
        "feats_layer_0.npy",
        "feats_layer_1.npy",
    ]
    expected = mae.extract_features(
        trained_model(checkpoint), split_images(arrays, "train"), pool="avg", layers=[0, 1], norm=True
    )
    np.testing.assert_allclose(np.load(tmp_path / "feats_features.npy"), expected.features.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "feats_layer_0.npy"), expected.layers[0].numpy(), atol=1e-5)
    np.testing.assert_array_equal(np.load(tmp_path / "feats_labels.npy"), arrays["train_labels"].astype(np.int64))
    assert np.load(tmp_path / "feats_features.npy").shape == (N_TRAIN, 32)


def test_an_interrupted_extraction_resumes_from_its_chunks(checkpoint, fmnist, tmp_path, monkeypatch, capsys):
    root, _ = fmnist
    settings = ["split=train", "chunk_size=5", "batch_size=2", "layers=[0]"]  # 24 images: chunks of 5, 5, 5, 5, 4
    assert extract(checkpoint, tmp_path / "whole.safetensors", root, *settings) == 0
    whole = load_file(str(tmp_path / "whole.safetensors"))

    write_chunk, written = mae.jobs.extract.write_chunk, []

    def stop_after_two(path, tensors):
        if len(written) == 2:
            raise KeyboardInterrupt
        write_chunk(path, tensors)
        written.append(path.name)

    monkeypatch.setattr(mae.jobs.extract, "write_chunk", stop_after_two)
    out = tmp_path / "resumed.safetensors"
    assert extract(checkpoint, out, root, *settings) == 130
    parts = tmp_path / "resumed.safetensors.parts"
    assert "run the same command again to continue from the chunks in" in capsys.readouterr().err
    assert sorted(path.name for path in parts.iterdir()) == [
        "chunk_000000.safetensors",
        "chunk_000001.safetensors",
        "extraction.json",
    ]
    assert not out.exists()

    monkeypatch.setattr(mae.jobs.extract, "write_chunk", write_chunk)
    encoded = []
    extract_features = mae.jobs.extract.extract_features
    monkeypatch.setattr(
        mae.jobs.extract,
        "extract_features",
        lambda *args, **kwargs: encoded.append(1) or extract_features(*args, **kwargs),
    )
    assert extract(checkpoint, out, root, *settings, "batch_size=8") == 0  # the batch may change, not the chunks
    assert len(encoded) == 3 and not parts.exists()
    resumed = load_file(str(out))
    assert set(resumed) == {"features", "labels", "layer_0"}
    for key in resumed:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=1e-6)


def test_chunks_of_other_settings_are_not_reused(checkpoint, fmnist, tmp_path, monkeypatch, capsys):
    root, _ = fmnist

    def interrupted(path, tensors):
        raise KeyboardInterrupt

    monkeypatch.setattr(mae.jobs.extract, "write_chunk", interrupted)
    out = tmp_path / "val.safetensors"
    assert extract(checkpoint, out, root, "chunk_size=4") == 130
    capsys.readouterr()
    assert extract(checkpoint, out, root, "chunk_size=4", "pool=avg") == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {out}.parts holds chunks of another extraction (pool: 'cls' there, 'avg' now); run with "
        "its settings or delete it to start over\n"
    )


def test_an_encoder_only_file_with_the_model_group(checkpoint, fmnist, tmp_path):
    root, arrays = fmnist
    model = trained_model(checkpoint)
    encoder = tmp_path / "encoder.pth"
    torch.save({"model": model.encoder_state_dict()}, encoder)
    out = tmp_path / "val.safetensors"
    assert extract(encoder, out, root, *MODEL_OVERRIDES) == 0
    torch.testing.assert_close(
        load_file(str(out))["features"],
        mae.extract_features(model, split_images(arrays, "val")).features,
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize("export_format", ["mae", "transformers"])
def test_exports_are_read_with_the_architecture_they_state(checkpoint, fmnist, tmp_path, export_format):
    """A safetensors export and a transformers directory give the checkpoint's features, with no model overrides
    (the default model group, 192 wide, would not fit)."""
    root, arrays = fmnist
    model = trained_model(checkpoint)
    exported = write(export_format, model, tmp_path / ("mae.safetensors" if export_format == "mae" else "hf"))
    out = tmp_path / "val.safetensors"
    assert extract(exported, out, root) == 0
    torch.testing.assert_close(
        load_file(str(out))["features"],
        mae.extract_features(model, split_images(arrays, "val")).features,
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "out_name, overrides, message",
    [
        ("f.safetensors", ["pool=mean"], "pool='mean' is not a feature pooling; use one of 'cls', 'avg', 'tokens'"),
        ("f.safetensors", ["split=holdout"], "split='holdout' is not a split; use one of 'train', 'val', 'test'"),
        ("f.pt", [], "OUT={tmp}/f.pt must end in .safetensors or .npy"),
        ("f.safetensors", ["chunk_size=0"], "chunk_size=0 must be an integer of at least 1"),
        ("f.safetensors", ["layers=[5]"], "layers=[5]: 5 is not a block index of this 2-block encoder (use -2 to 1)"),
        ("f.safetensors", ["no_such_key=1"], None),
        ("f.safetensors", ["device=cuda:0"] if not torch.cuda.is_available() else ["device=tpu"], None),
    ],
)
def test_bad_settings_are_one_line_before_any_work(checkpoint, fmnist, tmp_path, capsys, out_name, overrides, message):
    out = tmp_path / "out" / out_name
    assert extract(checkpoint, out, fmnist[0], *overrides) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    if message is not None:
        assert lines[0] == "error: " + message.format(tmp=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_and_one_without_encoder_are_one_line(checkpoint, fmnist, tmp_path, capsys):
    missing = tmp_path / "missing.ckpt"
    assert extract(missing, tmp_path / "f.safetensors", fmnist[0]) == 2
    assert capsys.readouterr().err == f"error: checkpoint {missing} does not exist\n"
    decoder_only = tmp_path / "decoder.pth"
    state = trained_model(checkpoint).state_dict()
    torch.save({k: v for k, v in state.items() if k.startswith(("decoder_", "mask_token"))}, decoder_only)
    assert extract(decoder_only, tmp_path / "f.safetensors", fmnist[0]) == 2
    assert capsys.readouterr().err == (
        f"error: checkpoint {decoder_only} holds no MAE or ViT encoder (no "
        "patch_embed.proj.weight; its keys: decoder_blocks.0.attn.proj.bias, "
        "decoder_blocks.0.attn.proj.weight, decoder_blocks.0.attn.qkv.bias, "
        "decoder_blocks.0.attn.qkv.weight ...)\n"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["decoder.pth"]


def test_the_module_runs_as_a_program(checkpoint, fmnist, tmp_path):
    root, arrays = fmnist
    out = tmp_path / "val.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "mae.jobs.extract", str(checkpoint), str(out), f"data.root={root}", "data.val_size=0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert torch.equal(load_file(str(out))["labels"], torch.from_numpy(arrays["val_labels"]).long())
