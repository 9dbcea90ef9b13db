"""Hugging Face ``transformers`` ViTMAE and ViT directories, written from and read into this project's MAE.

A directory is ``config.json`` + ``model.safetensors``: it is written and read without pickle. Written names are
the module names of the pinned ``transformers`` (5.x: ``vit.layers.N.attention.q_proj``, ...), or on request the
4.x names of the published ``facebook/vit-mae-*`` files; reading takes either, and also the names 5.x's own
``save_pretrained`` writes (4.x names, but its decoder layers under ``decoder.decoder_encoder.layer.N``).

``transformers`` itself is imported only by the functions that build its configs; it is the optional extra
``pip install 'mae-lightning[hf]'``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import safetensors.torch
import torch

from mae.model_files.checkpoint import CheckpointError, check_state_dict_shapes
from mae.model_files.stored_config import PREPROCESSOR_CONFIG
from mae.models.mae import MaskedAutoencoderViT
from mae.models.pos_embed import sincos_2d
from mae.runs.atomic_files import replaced_atomically, write_text_atomically
from mae.runs.optional import require

if TYPE_CHECKING:
    import transformers

log = logging.getLogger(__name__)

TRANSFORMERS_VERSION = "5.25.0"
"""The ``transformers`` version these conversions are tested against (constraints.txt pins it)."""

Layout = Literal["5.x", "4.x"]

# Top-level tensors: this project's name (module or parameter) -> transformers' name below the model root.
_ENCODER_NAMES = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj": "embeddings.patch_embeddings.projection",
    "norm": "layernorm",
}
_DECODER_NAMES = {
    "decoder_embed": "decoder.decoder_embed",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_norm": "decoder.decoder_norm",
    "decoder_pred": "decoder.decoder_pred",
}
# Inside one transformer block: timm's module -> transformers 5.x module (the fused qkv is split apart).
_BLOCK_NAMES = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_QKV_NAMES = ("attention.q_proj", "attention.k_proj", "attention.v_proj")
# Inside one layer: transformers 4.x module -> 5.x module (layer norms keep their names).
_LAYER_4X_TO_5X = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_LAYER_5X_TO_4X = {new: old for old, new in _LAYER_4X_TO_5X.items()}
# Layer stacks of ViTMAEForPreTraining under every name they are stored with -> the 5.x name.
_STACKS_TO_5X = {
    "vit.layers": "vit.layers",
    "vit.encoder.layer": "vit.layers",  # 4.x
    "decoder.decoder_layers": "decoder.decoder_layers",  # 5.x and 4.x
    "decoder.decoder_encoder.layer": "decoder.decoder_layers",  # what 5.x's save_pretrained writes
}
_STACKS_5X_TO_4X = {"vit.layers": "vit.encoder.layer", "decoder.decoder_layers": "decoder.decoder_layers"}
_LAYER_KEY = re.compile(
    r"^(?P<stack>"
    + "|".join(re.escape(s) for s in _STACKS_TO_5X)
    + r")\.(?P<index>\d+)\.(?P<module>.+)\.(?P<param>weight|bias)$"
)
_FIXED_TABLES = ("vit.embeddings.position_embeddings", "decoder.decoder_pos_embed")
"""Fixed sin-cos tables: a file may leave them out, the model's own ones are then exact."""

# ViTMAEConfig's defaults, for keys a config.json leaves out (the test checks them against transformers').
VITMAE_CONFIG_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "qkv_bias": True,
    "decoder_num_attention_heads": 16,
    "decoder_hidden_size": 512,
    "decoder_num_hidden_layers": 8,
    "decoder_intermediate_size": 2048,
    "mask_ratio": 0.75,
    "norm_pix_loss": False,
}


def _transformers() -> Any:
    """The ``transformers`` module, or a one-line error saying how to install it."""
    return require("transformers", "hf", "the Hugging Face format (ViTMAE/ViT directories)")


def _check_model(model: Any) -> MaskedAutoencoderViT:
    if not isinstance(model, MaskedAutoencoderViT):
        raise ValueError(f"expected a MaskedAutoencoderViT, got {type(model).__name__}")
    return model


def _renamed(key: str, names: Mapping[str, str]) -> str | None:
    """``key`` under ``names``, matching either the whole key or its module (the key less ``.weight``/``.bias``)."""
    if key in names:
        return names[key]
    module, _, param = key.rpartition(".")
    return f"{names[module]}.{param}" if module in names else None


# -- this project -> transformers -------------------------------------------------------------------
def _encoder_geometry(model: MaskedAutoencoderViT) -> dict[str, Any]:
    """The config fields a ViT encoder shares between ``ViTConfig`` and ``ViTMAEConfig``."""
    block = model.blocks[0]
    return dict(
        image_size=model.img_size,
        patch_size=model.patch_size,
        num_channels=model.in_chans,
        hidden_size=model.embed_dim,
        num_hidden_layers=len(model.blocks),
        num_attention_heads=block.attn.num_heads,
        intermediate_size=block.mlp.fc1.out_features,
        # The model's own epsilon (the reference's 1e-6), never transformers' default of 1e-12.
        layer_norm_eps=model.norm.eps,
        hidden_act="gelu",
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def vitmae_config(model: MaskedAutoencoderViT) -> transformers.ViTMAEConfig:
    """The ``transformers.ViTMAEConfig`` of ``model``'s architecture, masking ratio and loss."""
    model = _check_model(model)
    block = model.decoder_blocks[0]
    config = _transformers().ViTMAEConfig(
        **_encoder_geometry(model),
        decoder_hidden_size=model.decoder_embed.out_features,
        decoder_num_hidden_layers=len(model.decoder_blocks),
        decoder_num_attention_heads=block.attn.num_heads,
        decoder_intermediate_size=block.mlp.fc1.out_features,
        mask_ratio=model.mask_ratio,
        norm_pix_loss=model.norm_pix_loss,
    )
    config.architectures = ["ViTMAEForPreTraining"]
    return config


def vit_config(model: MaskedAutoencoderViT) -> transformers.ViTConfig:
    """The ``transformers.ViTConfig`` of ``model``'s encoder."""
    config = _transformers().ViTConfig(**_encoder_geometry(_check_model(model)))
    config.architectures = ["ViTModel"]
    return config


def _blocks_to_transformers(
    state: Mapping[str, torch.Tensor], prefix: str, depth: int, stack: str
) -> dict[str, torch.Tensor]:
    """Blocks ``prefix.N.*`` (timm) as transformers 5.x layers ``stack.N.*``, the fused qkv split in three."""
    out: dict[str, torch.Tensor] = {}
    for index in range(depth):
        src, dst = f"{prefix}.{index}.", f"{stack}.{index}."
        for param in ("weight", "bias"):
            # timm's qkv rows are [query; key; value], each head-major: exactly transformers' three projections.
            for name, part in zip(_QKV_NAMES, state[f"{src}attn.qkv.{param}"].chunk(3, dim=0)):
                out[f"{dst}{name}.{param}"] = part
            for timm_name, hf_name in _BLOCK_NAMES.items():
                out[f"{dst}{hf_name}.{param}"] = state[f"{src}{timm_name}.{param}"]
    return out


def _encoder_to_transformers(model: MaskedAutoencoderViT, root: str) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    out = {
        f"{root}{_renamed(key, _ENCODER_NAMES)}": tensor
        for key, tensor in state.items()
        if _renamed(key, _ENCODER_NAMES) is not None
    }
    out.update(_blocks_to_transformers(state, "blocks", len(model.blocks), f"{root}layers"))
    return out


def to_legacy_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ViTMAEForPreTraining state dict in 5.x names under the 4.x names of the published files."""
    out = {}
    for key, tensor in state.items():
        found = _LAYER_KEY.match(key)
        if found and found["stack"] in _STACKS_5X_TO_4X:
            module = _LAYER_5X_TO_4X.get(found["module"], found["module"])
            key = f"{_STACKS_5X_TO_4X[found['stack']]}.{found['index']}.{module}.{found['param']}"
        out[key] = tensor
    return out


def to_transformers_state_dict(model: MaskedAutoencoderViT, layout: Layout = "5.x") -> dict[str, torch.Tensor]:
    """``model``'s weights under ``transformers.ViTMAEForPreTraining`` names: the pinned version's (``"5.x"``) or
    those of the published ``facebook/vit-mae-*`` files (``"4.x"``). The q/k/v tensors are views of the fused qkv."""
    model = _check_model(model)
    if layout not in ("5.x", "4.x"):
        raise ValueError(f"layout={layout!r} is not one of '5.x', '4.x'")
    state = model.state_dict()
    out = _encoder_to_transformers(model, "vit.")
    out.update(
        {
            _renamed(key, _DECODER_NAMES): tensor
            for key, tensor in state.items()
            if _renamed(key, _DECODER_NAMES) is not None
        }
    )
    out.update(_blocks_to_transformers(state, "decoder_blocks", len(model.decoder_blocks), "decoder.decoder_layers"))
    return to_legacy_names(out) if layout == "4.x" else out


def to_transformers_vit_state_dict(model: MaskedAutoencoderViT) -> dict[str, torch.Tensor]:
    """``model``'s encoder under ``transformers.ViTModel`` (5.x) names, without a pooler."""
    return _encoder_to_transformers(_check_model(model), "")


def _write_directory(out_dir: str | Path, config_json: str, state: Mapping[str, torch.Tensor]) -> Path:
    out = Path(out_dir)
    # The q/k/v views share the fused tensor's storage, which safetensors refuses: each is written as its own copy.
    tensors = {key: tensor.detach().to("cpu", copy=True).contiguous() for key, tensor in state.items()}
    with replaced_atomically(out / "model.safetensors") as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_text_atomically(out / "config.json", config_json)
    return out


def save_transformers(model: MaskedAutoencoderViT, out_dir: str | Path, layout: Layout = "5.x") -> Path:
    """Write ``model`` as a ``transformers.ViTMAEForPreTraining`` directory (config.json + model.safetensors).

    ``ViTMAEForPreTraining.from_pretrained(out_dir)`` then loads every weight and gives the same loss, logits
    (this project's ``pred``), mask and ids_restore for the same images and ``noise``.
    """
    config = vitmae_config(model)
    return _write_directory(out_dir, config.to_json_string(), to_transformers_state_dict(model, layout))


def save_transformers_vit(model: MaskedAutoencoderViT, out_dir: str | Path) -> Path:
    """Write ``model``'s encoder as a ``transformers.ViTModel`` directory without a pooler.

    Load it with ``ViTModel.from_pretrained(out_dir, add_pooling_layer=False)``: its ``last_hidden_state`` is
    ``model.forward_features(imgs)``.
    """
    config = vit_config(model)
    return _write_directory(out_dir, config.to_json_string(), to_transformers_vit_state_dict(model))


def write_preprocessor_config(out_dir: str | Path, img_size: int, mean: Sequence[float], std: Sequence[float]) -> Path:
    """``preprocessor_config.json`` for ``ViTImageProcessor``: resize to ``img_size``, scale to [0, 1], normalise
    with the model's training ``mean`` and ``std`` (which :func:`mae.model_files.stored_config.stored_normalization` reads back)."""
    config = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": int(img_size), "width": int(img_size)},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(v) for v in mean],
        "image_std": [float(v) for v in std],
    }
    path = Path(out_dir) / PREPROCESSOR_CONFIG
    write_text_atomically(path, json.dumps(config, indent=2) + "\n")
    return path


# -- transformers -> this project -------------------------------------------------------------------
def _side(value: Any, name: str) -> int:
    """An ``image_size``/``patch_size`` config value as one side: an int, or a list of two equal ints."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{name}={list(value)} is not square; this project's MAE takes square sizes only")
        value = value[0]
    return int(value)


def mae_kwargs_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``MaskedAutoencoderViT`` arguments from a ViTMAE ``config.json`` dict (missing keys take ViTMAEConfig's
    defaults, whose ``layer_norm_eps`` is 1e-12, as in the published files)."""
    if config.get("model_type", "vit_mae") != "vit_mae":
        raise ValueError(f"config has model_type={config['model_type']!r}, expected 'vit_mae' (a ViTMAE model)")
    c = {**VITMAE_CONFIG_DEFAULTS, **config}
    if c["hidden_act"] != "gelu":
        raise ValueError(f"hidden_act={c['hidden_act']!r} is not supported; this project's MAE uses exact 'gelu'")
    if not c["qkv_bias"]:
        raise ValueError("qkv_bias=False is not supported; this project's MAE has query/key/value biases")
    mlp_ratio = c["intermediate_size"] / c["hidden_size"]
    decoder_ratio = c["decoder_intermediate_size"] / c["decoder_hidden_size"]
    if decoder_ratio != mlp_ratio or int(c["hidden_size"] * mlp_ratio) != c["intermediate_size"]:
        raise ValueError(
            f"intermediate_size={c['intermediate_size']} (hidden_size={c['hidden_size']}) and "
            f"decoder_intermediate_size={c['decoder_intermediate_size']} (decoder_hidden_size="
            f"{c['decoder_hidden_size']}) need one MLP ratio shared by encoder and decoder"
        )
    return dict(
        img_size=_side(c["image_size"], "image_size"),
        patch_size=_side(c["patch_size"], "patch_size"),
        in_chans=c["num_channels"],
        embed_dim=c["hidden_size"],
        depth=c["num_hidden_layers"],
        num_heads=c["num_attention_heads"],
        decoder_embed_dim=c["decoder_hidden_size"],
        decoder_depth=c["decoder_num_hidden_layers"],
        decoder_num_heads=c["decoder_num_attention_heads"],
        mlp_ratio=mlp_ratio,
        mask_ratio=c["mask_ratio"],
        norm_pix_loss=bool(c["norm_pix_loss"]),
        layer_norm_eps=c["layer_norm_eps"],
    )


def to_current_names(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Map each key of a ViTMAEForPreTraining state dict, in any layout this module reads, to its 5.x name."""
    names = {}
    for key in state:
        found = _LAYER_KEY.match(key)
        if found:
            module = _LAYER_4X_TO_5X.get(found["module"], found["module"])
            names[key] = f"{_STACKS_TO_5X[found['stack']]}.{found['index']}.{module}.{found['param']}"
        else:
            names[key] = key
    return names


def _blocks_from_transformers(
    state: Mapping[str, torch.Tensor], stack: str, depth: int, prefix: str
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for index in range(depth):
        src, dst = f"{stack}.{index}.", f"{prefix}.{index}."
        for param in ("weight", "bias"):
            out[f"{dst}attn.qkv.{param}"] = torch.cat([state[f"{src}{name}.{param}"] for name in _QKV_NAMES])
            for timm_name, hf_name in _BLOCK_NAMES.items():
                out[f"{dst}{timm_name}.{param}"] = state[f"{src}{hf_name}.{param}"]
    return out


def _from_current_names(state: Mapping[str, torch.Tensor], depth: int, decoder_depth: int) -> dict[str, torch.Tensor]:
    """A complete 5.x ViTMAEForPreTraining state dict under this project's (reference MAE) names."""
    top = {f"vit.{hf}": ours for ours, hf in _ENCODER_NAMES.items()} | {hf: ours for ours, hf in _DECODER_NAMES.items()}
    out = {}
    for key, tensor in state.items():
        ours = _renamed(key, top)
        if ours is not None:
            out[ours] = tensor
    out.update(_blocks_from_transformers(state, "vit.layers", depth, "blocks"))
    out.update(_blocks_from_transformers(state, "decoder.decoder_layers", decoder_depth, "decoder_blocks"))
    return out


def load_transformers_weights(model: MaskedAutoencoderViT, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a ViTMAEForPreTraining state dict (4.x or 5.x names) into ``model``, in place.

    A tensor of another shape is one line naming its key and both shapes; missing or unexpected keys are one line
    naming them. Position tables the file leaves out keep the model's fixed sin-cos ones.
    """
    model = _check_model(model)
    names = to_current_names(state)
    expected = to_transformers_state_dict(model)
    for key, name in names.items():
        if name in expected and tuple(state[key].shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, this model expects {tuple(expected[name].shape)}"
            )
    current = {name: state[key] for key, name in names.items()}
    required = {k: v for k, v in expected.items() if k in current or k not in _FIXED_TABLES}
    check_state_dict_shapes(current, required, source)
    for name in _FIXED_TABLES:
        if name in current:
            _warn_unless_sincos(current[name], name, source)
        else:
            log.info("%s has no %s; the fixed sin-cos table is used", source, name)
            current[name] = expected[name]
    ours = _from_current_names(current, len(model.blocks), len(model.decoder_blocks))
    model.load_state_dict(ours, strict=True)


def _warn_unless_sincos(table: torch.Tensor, name: str, source: str) -> None:
    """A position table should be the fixed 2-D sin-cos one; another is kept (outputs then match the source)."""
    if table.is_meta:  # a shapes-only model has no values to check
        return
    grid = int(round((table.shape[1] - 1) ** 0.5))
    if not torch.allclose(table[0].float().cpu(), sincos_2d(table.shape[-1], grid), atol=1e-5):
        zeros = (
            " (all zeros: transformers 5.x leaves it so in a model initialised from a config)"
            if not table.any()
            else ""
        )
        log.warning("%s: %s is not the fixed 2-D sin-cos table%s; kept as it is", source, name, zeros)


def _read_directory(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``config.json`` and the safetensors weights (one file or shards) of a transformers model directory."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} is not a transformers model directory: it has no config.json")
    config = json.loads(config_file.read_text())
    load_file = safetensors.torch.load_file
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return config, load_file(str(single))
    if index.is_file():
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(path / shard)))
        return config, state
    pickled = (
        " (its pytorch_model.bin is a pickle, which this project never loads)"
        if (path / "pytorch_model.bin").is_file()
        else ""
    )
    raise CheckpointError(f"{path} has no model.safetensors{pickled}")


def from_transformers(source: str | Path | transformers.ViTMAEForPreTraining) -> MaskedAutoencoderViT:
    """This project's MAE, in eval mode, from a transformers ViTMAE directory or an in-memory
    ``ViTMAEForPreTraining``: the architecture from its config, the weights in 4.x or 5.x names.

    For the same images and ``noise`` it gives the source's loss, logits (as ``pred``), mask and ids_restore.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_dir():
            raise CheckpointError(f"{path} is not a directory (expected config.json + model.safetensors)")
        (config, state), name = _read_directory(path), str(path)
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        config, state, name = source.config.to_dict(), source.state_dict(), type(source).__name__
    else:
        raise ValueError(
            f"expected a transformers model directory or ViTMAEForPreTraining, got {type(source).__name__}"
        )
    model = MaskedAutoencoderViT(**mae_kwargs_from_config(config))
    load_transformers_weights(model, state, name)
    return model.eval()
