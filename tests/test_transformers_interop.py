"""Hugging Face transformers ViTMAE / ViT directories, both ways, with output parity (all offline, from configs)."""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from extras import needs_extra

transformers = needs_extra("transformers", "hf")
from safetensors.torch import load_file, save_file  # noqa: E402  (transformers brings safetensors)

from mae.model_files import transformers_format  # noqa: E402
from mae.model_files.checkpoint import CheckpointError  # noqa: E402
from mae.model_files.loading import load_model  # noqa: E402
from mae.model_files.transformers_format import (  # noqa: E402
    TRANSFORMERS_VERSION,
    VITMAE_CONFIG_DEFAULTS,
    from_transformers,
    load_transformers_weights,
    mae_kwargs_from_config,
    save_transformers,
    save_transformers_vit,
    to_transformers_state_dict,
    vitmae_config,
)
from mae.models import (  # noqa: E402
    MaskedAutoencoderViT,
    mae_vit_base_patch16,
    mae_vit_huge_patch14,
    mae_vit_large_patch16,
    mae_vit_tiny_patch4,
    mae_vit_tiny_patch7,
)
from mae.models.pos_embed import sincos_2d  # noqa: E402

ATOL = 1e-5

CPU_PRESETS: dict[str, Callable[..., MaskedAutoencoderViT]] = {
    "tiny_patch7_28px_1ch": lambda **kw: mae_vit_tiny_patch7(in_chans=1, **kw),
    "tiny_patch4_28px_1ch": lambda **kw: mae_vit_tiny_patch4(img_size=28, in_chans=1, **kw),
    "tiny_patch4_32px_3ch": lambda **kw: mae_vit_tiny_patch4(**kw),
}


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Noise on every trainable vector (biases, LayerNorms, cls and mask tokens), so that zero biases and unit
    LayerNorms cannot hide a misplaced weight; the matrices are random already."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad and param.numel() == param.shape[-1]:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return module.eval()


def project_model(make: Callable[..., MaskedAutoencoderViT], **kwargs) -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return perturbed(make(**kwargs))


def transformers_model(config) -> torch.nn.Module:
    """A random ViTMAEForPreTraining built from ``config``, with the fixed sin-cos tables of transformers' own code.

    5.25's weight init visits the patch projection before the embeddings; the flag it leaves there makes the
    embeddings skip their own init (position table and cls token stay zero), and the decoder's table is zeroed
    outright. The models' own ``initialize_weights`` is run again here.
    """
    torch.manual_seed(1)
    model = transformers.ViTMAEForPreTraining(config)
    model.vit.embeddings.patch_embeddings.projection._is_hf_initialized = False
    model.vit.embeddings.initialize_weights()
    model.decoder.initialize_weights(model.vit.embeddings.patch_embeddings.num_patches)
    return perturbed(model, seed=1)


def batch(model: MaskedAutoencoderViT, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    imgs = torch.randn(n, model.in_chans, model.img_size, model.img_size, generator=generator)
    return imgs, torch.rand(n, model.num_patches, generator=generator)


def assert_same_outputs(
    ours: MaskedAutoencoderViT, theirs: torch.nn.Module, imgs: torch.Tensor, noise: torch.Tensor
) -> None:
    with torch.no_grad():
        a, b = ours(imgs, noise=noise), theirs(imgs, noise=noise)
    assert a.pred.shape == b.logits.shape
    assert torch.allclose(a.loss, b.loss, rtol=0, atol=ATOL), (a.loss, b.loss)
    assert torch.allclose(a.pred, b.logits, rtol=0, atol=ATOL), (a.pred - b.logits).abs().max()
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.ids_restore, b.ids_restore)


def load_exported(directory) -> torch.nn.Module:
    model, info = transformers.ViTMAEForPreTraining.from_pretrained(directory, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    return model.eval()


_PUBLISHED_NAMES = [  # transformers 5.x -> 4.x names of the published facebook/vit-mae-* files, written here apart
    (r"^vit\.layers\.", "vit.encoder.layer."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]


def published_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        for pattern, replacement in _PUBLISHED_NAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = tensor.detach().clone()
    return out


def write_directory(directory, config, state: dict[str, torch.Tensor]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(config.to_json_string())
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"), metadata={"format": "pt"}
    )


# -- configs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, geometry",
    [
        (mae_vit_base_patch16, (224, 16, 768, 12, 12)),
        (mae_vit_large_patch16, (224, 16, 1024, 24, 16)),
        (mae_vit_huge_patch14, (224, 14, 1280, 32, 16)),
        (CPU_PRESETS["tiny_patch7_28px_1ch"], (28, 7, 192, 6, 3)),
    ],
    ids=["B", "L", "H", "tiny7"],
)
def test_config_carries_the_geometry_the_reference_epsilon_and_the_loss(make, geometry):
    with torch.device("meta"):
        model = make(norm_pix_loss=True)
    config = vitmae_config(model)
    width = geometry[2]
    assert (
        config.image_size,
        config.patch_size,
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
    ) == geometry
    assert config.num_channels == model.in_chans and config.intermediate_size == 4 * width
    assert config.layer_norm_eps == 1e-6  # transformers' default would be 1e-12
    assert (config.hidden_act, config.qkv_bias, config.norm_pix_loss, config.mask_ratio) == ("gelu", True, True, 0.75)
    assert (
        config.decoder_hidden_size,
        config.decoder_num_hidden_layers,
        config.decoder_num_attention_heads,
        config.decoder_intermediate_size,
    ) == ((512, 8, 16, 2048) if width >= 768 else (128, 2, 4, 512))
    assert mae_kwargs_from_config(config.to_dict())["layer_norm_eps"] == 1e-6


def test_defaults_for_missing_config_keys_are_transformers_own():
    config = transformers.ViTMAEConfig()
    assert {key: getattr(config, key) for key in VITMAE_CONFIG_DEFAULTS} == VITMAE_CONFIG_DEFAULTS


def test_the_tested_transformers_is_the_pinned_one():
    assert transformers.__version__ == TRANSFORMERS_VERSION


def test_fixed_position_tables_are_the_same_numbers_in_both_libraries():
    """transformers builds [sin_h|cos_h|sin_w|cos_w] and rotates the halves; the project's table is column first."""
    model = transformers_model(vitmae_config(CPU_PRESETS["tiny_patch4_28px_1ch"]()))
    grid = 7
    assert torch.equal(model.vit.embeddings.position_embeddings[0], sincos_2d(192, grid))
    assert torch.equal(model.decoder.decoder_pos_embed[0], sincos_2d(128, grid))
    assert not model.vit.embeddings.position_embeddings.requires_grad  # a frozen parameter, as in this project
    assert "vit.embeddings.position_embeddings" in model.state_dict()


# -- this project -> transformers -------------------------------------------------------------------
@pytest.mark.parametrize("norm_pix_loss", [False, True], ids=["pix", "normpix"])
@pytest.mark.parametrize("preset", list(CPU_PRESETS))
def test_export_loads_every_weight_and_gives_the_same_outputs(tmp_path, preset, norm_pix_loss):
    ours = project_model(CPU_PRESETS[preset], norm_pix_loss=norm_pix_loss)
    save_transformers(ours, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    theirs = load_exported(tmp_path)
    assert theirs.config.norm_pix_loss is norm_pix_loss and theirs.config.layer_norm_eps == 1e-6
    assert_same_outputs(ours, theirs, *batch(ours))


@pytest.mark.slow
def test_vit_base_export_gives_the_same_outputs_with_and_without_norm_pix_loss(tmp_path):
    ours = project_model(mae_vit_base_patch16, norm_pix_loss=True)
    save_transformers(ours, tmp_path)
    theirs = load_exported(tmp_path)
    imgs, noise = batch(ours, n=1)  # one 224 px image: a ViT-B forward is the slow part here
    assert_same_outputs(ours, theirs, imgs, noise)
    # Both read the flag at every forward: one export serves both settings (the tiny presets export each).
    ours.norm_pix_loss = theirs.config.norm_pix_loss = False
    assert_same_outputs(ours, theirs, imgs, noise)


def test_export_writes_the_pinned_versions_names(tmp_path):
    ours = project_model(CPU_PRESETS["tiny_patch7_28px_1ch"])
    save_transformers(ours, tmp_path)
    written = load_file(str(tmp_path / "model.safetensors"))
    reference = transformers.ViTMAEForPreTraining(vitmae_config(ours)).state_dict()
    assert {k: tuple(v.shape) for k, v in written.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert "vit.layers.0.attention.q_proj.weight" in written and "decoder.decoder_layers.1.mlp.fc2.bias" in written
    # The fused qkv splits into query, key and value rows, biases too.
    qkv_bias = ours.blocks[2].attn.qkv.bias.detach()
    parts = [written[f"vit.layers.2.attention.{p}_proj.bias"] for p in "qkv"]
    assert torch.equal(torch.cat(parts), qkv_bias)
    assert torch.equal(written["decoder.decoder_pred.weight"], ours.decoder_pred.weight.detach())


@pytest.mark.parametrize("make", [mae_vit_large_patch16, mae_vit_huge_patch14], ids=["L", "H"])
def test_large_and_huge_geometries_give_the_same_outputs_both_ways(tmp_path, make):
    """Each preset's image size, patch, widths, heads and MLP, two blocks deep (the mapping is the same for every
    block; the whole depth is checked by shape below): export and read back, numbers compared both times."""
    ours = project_model(make, depth=2, decoder_depth=1, norm_pix_loss=True)
    save_transformers(ours, tmp_path)
    theirs = load_exported(tmp_path)
    imgs, noise = batch(ours, n=1)
    assert_same_outputs(ours, theirs, imgs, noise)
    back = load_model(tmp_path)
    assert_same_outputs(back, theirs, imgs, noise)


@pytest.mark.parametrize("make", [mae_vit_large_patch16, mae_vit_huge_patch14], ids=["L", "H"])
def test_large_and_huge_geometries_map_key_for_key_both_ways(make):
    # Shapes only (meta tensors): a full ViT-L/H forward would take most of a minute on 2 cores.
    with torch.device("meta"):
        ours = make()
        theirs = transformers.ViTMAEForPreTraining(vitmae_config(ours))
        back = MaskedAutoencoderViT(**mae_kwargs_from_config(theirs.config.to_dict()))
    shapes = lambda state: {k: tuple(v.shape) for k, v in state.items()}  # noqa: E731
    assert shapes(to_transformers_state_dict(ours)) == shapes(theirs.state_dict())
    load_transformers_weights(back, theirs.state_dict(), "meta model")
    assert shapes(back.state_dict()) == shapes(ours.state_dict())
    published = published_names(theirs.state_dict())
    assert shapes(to_transformers_state_dict(ours, layout="4.x")) == shapes(published)


@pytest.mark.parametrize("preset", list(CPU_PRESETS) + [pytest.param("vit_base", marks=pytest.mark.slow)])
def test_encoder_exports_as_a_vit_model_with_the_same_features(tmp_path, preset):
    make = mae_vit_base_patch16 if preset == "vit_base" else CPU_PRESETS[preset]
    ours = project_model(make)
    save_transformers_vit(ours, tmp_path)
    vit, info = transformers.ViTModel.from_pretrained(tmp_path, add_pooling_layer=False, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    imgs, _ = batch(ours)
    with torch.no_grad():
        theirs = vit.eval()(imgs).last_hidden_state
        features = ours.forward_features(imgs)
    assert theirs.shape == features.shape == (2, 1 + ours.num_patches, ours.embed_dim)
    assert torch.allclose(theirs, features, rtol=0, atol=ATOL)


# -- transformers -> this project -------------------------------------------------------------------
@pytest.mark.parametrize("norm_pix_loss", [False, True], ids=["pix", "normpix"])
@pytest.mark.parametrize("preset", list(CPU_PRESETS))
def test_a_transformers_model_reads_back_with_the_same_outputs(tmp_path, preset, norm_pix_loss):
    with torch.device("meta"):
        config = vitmae_config(CPU_PRESETS[preset](norm_pix_loss=norm_pix_loss))
    theirs = transformers_model(config)
    theirs.save_pretrained(tmp_path)  # 5.25 writes 4.x names, its decoder layers as decoder.decoder_encoder.layer.N
    from_dir = from_transformers(tmp_path)
    assert not from_dir.training and from_dir.norm_pix_loss is norm_pix_loss
    assert torch.equal(from_dir.pos_embed[0], sincos_2d(config.hidden_size, from_dir.grid_size))
    assert torch.equal(from_dir.decoder_pos_embed[0], sincos_2d(config.decoder_hidden_size, from_dir.grid_size))
    imgs, noise = batch(from_dir)
    assert_same_outputs(from_dir, theirs, imgs, noise)
    in_memory = from_transformers(theirs)
    assert all(torch.equal(v, in_memory.state_dict()[k]) for k, v in from_dir.state_dict().items())


@pytest.mark.slow
def test_a_vit_base_transformers_model_reads_back_with_the_same_outputs(tmp_path):
    with torch.device("meta"):
        config = vitmae_config(mae_vit_base_patch16(norm_pix_loss=True))
    theirs = transformers_model(config)
    theirs.save_pretrained(tmp_path)
    ours = from_transformers(tmp_path)
    imgs, noise = batch(ours, n=1)
    assert_same_outputs(ours, theirs, imgs, noise)
    ours.norm_pix_loss = theirs.config.norm_pix_loss = False
    assert_same_outputs(ours, theirs, imgs, noise)


def test_the_published_4x_layout_is_read(tmp_path):
    with torch.device("meta"):
        template = CPU_PRESETS["tiny_patch4_28px_1ch"](norm_pix_loss=True)
    config = vitmae_config(template)
    theirs = transformers_model(config)
    state = published_names(theirs.state_dict())
    for key in (
        "vit.embeddings.patch_embeddings.projection.weight",
        "vit.encoder.layer.0.attention.attention.query.weight",
        "vit.encoder.layer.5.attention.output.dense.bias",
        "vit.encoder.layer.0.intermediate.dense.weight",
        "vit.encoder.layer.0.output.dense.weight",
        "vit.encoder.layer.0.layernorm_before.weight",
        "vit.encoder.layer.0.layernorm_after.bias",
        "vit.layernorm.weight",
        "vit.embeddings.cls_token",
        "vit.embeddings.position_embeddings",
        "decoder.decoder_layers.1.attention.attention.value.bias",
        "decoder.decoder_embed.weight",
        "decoder.decoder_norm.bias",
        "decoder.decoder_pred.weight",
        "decoder.mask_token",
        "decoder.decoder_pos_embed",
    ):
        assert key in state, key
    write_directory(tmp_path, config, state)
    ours = from_transformers(tmp_path)
    imgs, noise = batch(template)
    assert_same_outputs(ours, theirs, imgs, noise)
    # transformers' own reader of 4.x files takes these names as they are ...
    assert_same_outputs(ours, load_exported(tmp_path), imgs, noise)
    # ... and the module writes the same names when asked for the 4.x layout.
    assert set(to_transformers_state_dict(ours, layout="4.x")) == set(state)


def test_sharded_weights_are_read(tmp_path):
    ours = project_model(CPU_PRESETS["tiny_patch7_28px_1ch"])
    save_transformers(ours, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    shards = {
        name: {k: v for i, (k, v) in enumerate(state.items()) if i % 2 == part}
        for part, name in enumerate(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
    }
    for name, tensors in shards.items():
        save_file(tensors, str(tmp_path / name))
    weight_map = {key: name for name, tensors in shards.items() for key in tensors}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    back = from_transformers(tmp_path)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ours.state_dict().items())


def test_a_file_without_the_fixed_tables_takes_the_sincos_ones(tmp_path):
    ours = project_model(CPU_PRESETS["tiny_patch7_28px_1ch"])
    save_transformers(ours, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["vit.embeddings.position_embeddings"], state["decoder.decoder_pos_embed"]
    save_file(state, str(tmp_path / "model.safetensors"))
    back = from_transformers(tmp_path)
    assert torch.equal(back.pos_embed, ours.pos_embed) and torch.equal(back.decoder_pos_embed, ours.decoder_pos_embed)
    imgs, noise = batch(ours)
    with torch.no_grad():
        a, b = back(imgs, noise=noise), ours(imgs, noise=noise)
    assert torch.equal(a.pred, b.pred) and torch.equal(a.loss, b.loss)


def test_zero_tables_of_a_config_initialised_model_are_kept_with_a_warning(caplog):
    # transformers 5.25 leaves both position tables at zero in a model built from a config (see transformers_model).
    theirs = transformers.ViTMAEForPreTraining(vitmae_config(CPU_PRESETS["tiny_patch7_28px_1ch"]())).eval()
    assert not theirs.vit.embeddings.position_embeddings.any() and not theirs.decoder.decoder_pos_embed.any()
    with caplog.at_level("WARNING", logger="mae.model_files.transformers_format"):
        ours = from_transformers(theirs)
    assert sum("is not the fixed 2-D sin-cos table (all zeros" in r.message for r in caplog.records) == 2
    assert_same_outputs(ours, theirs, *batch(ours))


# -- bad input: one line each -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "layout, key",
    [
        ("5.x", "vit.layers.1.mlp.fc1.weight"),
        ("4.x", "vit.encoder.layer.1.attention.attention.query.weight"),
        ("5.x", "decoder.decoder_pred.bias"),
    ],
)
def test_a_shape_mismatch_is_one_line_naming_the_key_and_both_shapes(tmp_path, layout, key):
    ours = project_model(CPU_PRESETS["tiny_patch7_28px_1ch"])
    save_transformers(ours, tmp_path, layout=layout)
    state = load_file(str(tmp_path / "model.safetensors"))
    expected = tuple(state[key].shape)
    state[key] = torch.zeros(7, *expected[1:])
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        from_transformers(tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert f"{key} has shape {(7, *expected[1:])}, this model expects {expected}" in message


def test_missing_and_unexpected_keys_are_one_line(tmp_path):
    ours = project_model(CPU_PRESETS["tiny_patch7_28px_1ch"])
    save_transformers(ours, tmp_path)
    state = {
        k: v
        for k, v in load_file(str(tmp_path / "model.safetensors")).items()
        if not k.startswith("decoder.decoder_layers")
    }
    state["vit.pooler.dense.weight"] = torch.zeros(2, 2)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        CheckpointError,
        match=r"missing keys \['decoder\.decoder_layers\.0\..*unexpected keys "
        r"\['vit\.pooler\.dense\.weight'\]",
    ) as error:
        from_transformers(tmp_path)
    assert "\n" not in str(error.value)


def test_sources_it_cannot_read_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="is not a directory"):
        from_transformers(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="has no config.json"):
        from_transformers(tmp_path)
    ours = project_model(CPU_PRESETS["tiny_patch7_28px_1ch"])
    save_transformers(ours, tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"has no model.safetensors \(its pytorch_model.bin is a pickle"):
        from_transformers(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for change, message in (
        ({"model_type": "vit"}, "expected 'vit_mae'"),
        ({"hidden_act": "gelu_new"}, "exact 'gelu'"),
        ({"decoder_intermediate_size": 256}, "one MLP ratio"),
        ({"image_size": [28, 32]}, "not square"),
    ):
        with pytest.raises(ValueError, match=message):
            mae_kwargs_from_config({**config, **change})
    with pytest.raises(ValueError, match="expected a MaskedAutoencoderViT, got Linear"):
        save_transformers(torch.nn.Linear(2, 2), tmp_path)


def test_without_transformers_import_works_and_exports_say_how_to_install(monkeypatch):
    # No module-level import of transformers (torchmetrics imports it on its own whenever it is installed, so
    # sys.modules cannot tell): only inside functions, or under TYPE_CHECKING.
    tree = ast.parse(Path(transformers_format.__file__).read_text())
    eager = [
        node
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom)) and "transformers" in ast.unparse(node).split()
    ]
    assert not eager, [ast.unparse(node) for node in eager]
    monkeypatch.setitem(sys.modules, "transformers", None)
    with torch.device("meta"):
        model = CPU_PRESETS["tiny_patch7_28px_1ch"]()
    with pytest.raises(ImportError) as error:
        vitmae_config(model)
    assert "\n" not in str(error.value) and "pip install -e '.[hf]'" in str(error.value)
