"""One call that gives this project's MAE from any file it reads: :func:`load_model`.

Sources: this project's Lightning checkpoints, a reference MAE ``.pth`` (encoder-only, full with decoder, or
fine-tuned), a timm ViT state_dict (``.pth`` or ``.safetensors``), this project's ``.safetensors`` exports, and a
``transformers`` ViTMAE / ViT directory (``config.json`` + ``model.safetensors``). Nothing a file holds is run:
pickled files go through ``torch.load(weights_only=True)``, the rest is safetensors and JSON. The commands
(``python -m mae.extract``, ``python -m mae.jobs.visualize``, ``python -m mae.demo``) read through :func:`load`,
which adds their model group as the architecture of files that state none, and can require a decoder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mae.callbacks.run_config import RUN_CONFIG_KEY
from mae.checkpoint import CheckpointError, check_shapes, load_checkpoint_file, model_state_dict
from mae.config import instantiate_node
from mae.models import MaskedAutoencoderViT
from mae.run_directory import config_file, run_dir_of_checkpoint
from mae.stored_config import MODEL_TARGETS, trusted_node

log = logging.getLogger(__name__)

CONFIG_SUFFIX = ".json"
"""A ``.safetensors`` export's architecture lies beside it, same stem, this suffix."""

HEADS_BY_WIDTH = {128: 4, 192: 3, 256: 8, 384: 6, 512: 16, 768: 12, 1024: 16, 1280: 16}
"""Attention heads at the usual widths (ViT-Ti/S/B/L/H, the reference's 512-wide decoder, this project's CPU
decoders): the one architecture number that weights do not show."""

DECODER_PREFIXES = ("decoder_", "mask_token")
MAE_KINDS = ("mae", "timm_encoder")
"""Exports whose ``.json`` holds MAE constructor arguments (``python -m mae.export``)."""


class NoDecoderError(CheckpointError):
    """The file holds an encoder only (an encoder export or ``.pth``, a fine-tuned or linear-probe checkpoint)."""


def model_architecture(model: MaskedAutoencoderViT) -> dict[str, Any]:
    """The constructor arguments that rebuild ``model`` (what the ``.json`` beside an export holds)."""
    block, decoder_block = model.blocks[0], model.decoder_blocks[0]
    return {
        "img_size": model.img_size, "patch_size": model.patch_size, "in_chans": model.in_chans,
        "embed_dim": model.embed_dim, "depth": len(model.blocks), "num_heads": block.attn.num_heads,
        "decoder_embed_dim": model.decoder_embed.out_features, "decoder_depth": len(model.decoder_blocks),
        "decoder_num_heads": decoder_block.attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / model.embed_dim, "mask_ratio": model.mask_ratio,
        "norm_pix_loss": model.norm_pix_loss, "layer_norm_eps": model.norm.eps,
    }


def _heads(width: int, name: str, source: str) -> int:
    if width not in HEADS_BY_WIDTH:
        raise CheckpointError(f"{source} does not say its {name} and width {width} has no usual head count; pass "
                              f"{name}=<heads> to load_model")
    return HEADS_BY_WIDTH[width]


def check_has_encoder(state: Mapping[str, torch.Tensor], source: str) -> None:
    """One line when ``state`` holds no MAE or ViT encoder (no patch embedding), naming some keys it does hold."""
    if "patch_embed.proj.weight" not in state:
        raise CheckpointError(f"{source} holds no MAE or ViT encoder (no patch_embed.proj.weight; its keys: "
                              f"{', '.join(sorted(state)[:4])}{' ...' if len(state) > 4 else ''})")


def architecture_from_weights(state: Mapping[str, torch.Tensor], source: str,
                              given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The constructor arguments that weights in the reference layout imply, ``given`` ones kept (heads from
    :data:`HEADS_BY_WIDTH` unless given); without decoder weights, the decoder is the paper's (512 wide, 8 deep)."""
    check_has_encoder(state, source)
    given = given or {}
    embed_dim, in_chans, patch_size, _ = state["patch_embed.proj.weight"].shape
    grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5)) if "pos_embed" in state else 224 // patch_size
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    arch: dict[str, Any] = {
        "img_size": grid * patch_size, "patch_size": patch_size, "in_chans": in_chans, "embed_dim": embed_dim,
        "depth": depth, "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
    }
    if "decoder_embed.weight" in state:
        decoder_width = state["decoder_embed.weight"].shape[0]
        arch["decoder_embed_dim"] = decoder_width
        arch["decoder_depth"] = len({key.split(".")[1] for key in state if key.startswith("decoder_blocks.")})
        if "decoder_num_heads" not in given:
            arch["decoder_num_heads"] = _heads(decoder_width, "decoder_num_heads", source)
    else:
        arch.update(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
    if "num_heads" not in given:
        arch["num_heads"] = _heads(embed_dim, "num_heads", source)
    return {**arch, **given}


def stored_architecture(path: Path, checkpoint: Mapping[str, Any]) -> tuple[DictConfig | None, str]:
    """(the ``model`` node a file carries, where it was found): a checkpoint's stored run config, the run's
    ``config_resolved.yaml`` two folders up, or a reference ``.pth``'s ``args.model`` preset; (None, "") when the
    file says nothing."""
    stored = checkpoint.get(RUN_CONFIG_KEY)
    if isinstance(stored, Mapping) and "model" in stored:
        return trusted_node(stored["model"], MODEL_TARGETS, f"checkpoint {path}"), f"the run config stored in {path}"
    run_config = config_file(run_dir_of_checkpoint(path))
    if "state_dict" in checkpoint and run_config.is_file():
        node = OmegaConf.load(run_config).get("model")
        if isinstance(node, DictConfig) and "_target_" in node:
            return trusted_node(node, MODEL_TARGETS, str(run_config)), str(run_config)
    args = checkpoint.get("args")
    preset = f"mae.models.{getattr(args, 'model', '')}"
    if preset in MODEL_TARGETS:  # a reference pre-training file names its preset
        node = {"_target_": preset, "norm_pix_loss": bool(getattr(args, "norm_pix_loss", False))}
        if getattr(args, "input_size", None):
            node["img_size"] = int(args.input_size)
        return OmegaConf.create(node), f"args.model={args.model} in {path}"
    return None, ""


def encoder_and_decoder(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict under reference names: the prefixes of this project's downstream modules removed."""
    for prefix in ("encoder.", "model."):
        if any(key.startswith(prefix + "blocks.") for key in state):
            return {key.removeprefix(prefix): value for key, value in state.items()}
    return dict(state)


@dataclass
class Source:
    """What a file holds: its weights under reference names and the architecture it states (or None)."""

    state: dict[str, torch.Tensor]
    architecture: DictConfig | dict[str, Any] | None
    architecture_from: str = ""
    """Where the stated architecture was found (a file, a checkpoint's run config); empty when none is stated."""


def read_source(path: str | Path) -> Source:
    """The weights and stated architecture of any supported source."""
    path = Path(path)
    if path.is_dir():
        from mae.interop.transformers_format import from_transformers

        model = from_transformers(path)
        return Source(model.state_dict(), model_architecture(model), str(path / "config.json"))
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sidecar = path.with_suffix(CONFIG_SUFFIX)
        config = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        # A classifier's config describes timm's ViT, not the MAE: its weights say what the encoder is.
        architecture = config.get("architecture") if config.get("kind") in MAE_KINDS else None
        return Source(encoder_and_decoder(load_file(path)), architecture, str(sidecar) if architecture else "")
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a state_dict")
    return Source(encoder_and_decoder(model_state_dict(checkpoint)), *stored_architecture(path, checkpoint))


def has_decoder(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether weights include an MAE decoder (an encoder export, a fine-tuned classifier have none)."""
    return any(key.startswith(DECODER_PREFIXES) for key in state)


def build(architecture: DictConfig | Mapping[str, Any], overrides: Mapping[str, Any]) -> MaskedAutoencoderViT:
    if isinstance(architecture, DictConfig):
        return instantiate_node(architecture, **overrides)
    return MaskedAutoencoderViT(**{**architecture, **overrides})


@dataclass
class LoadedModel:
    """A model :func:`load` built, and where its architecture came from."""

    model: MaskedAutoencoderViT
    architecture_from: str


def load(path: str | Path, *, fallback: DictConfig | None = None, use_stated: bool = True,
         require_decoder: bool = False, overrides: Mapping[str, Any] | None = None) -> LoadedModel:
    """:func:`load_model` for the commands: the architecture is the one ``path`` states (unless ``use_stated`` is
    false), else the ``fallback`` model node (a Hydra model group), else the one the weights imply; then
    ``overrides``. ``require_decoder`` refuses a file without decoder weights (:class:`NoDecoderError`) or one
    whose decoder does not fill the model's."""
    source = f"checkpoint {path}"
    found = read_source(path)
    state, overrides = found.state, dict(overrides or {})
    check_has_encoder(state, source)
    if require_decoder and not has_decoder(state):
        raise NoDecoderError(f"{source} has no decoder weights (an encoder-only or fine-tuned file): "
                             "reconstructions need a pre-training checkpoint or a full MAE export")
    if found.architecture is not None and use_stated:
        architecture, architecture_from = found.architecture, found.architecture_from
    elif fallback is not None:
        architecture, architecture_from = fallback, "the model group"
    else:
        architecture, architecture_from = architecture_from_weights(state, source, overrides), "its weights"
    model = build(architecture, overrides)
    expected = model.state_dict()
    check_shapes(state, expected, f"{source} (architecture from {architecture_from})")
    missing = sorted(set(expected) - set(state))
    missing_encoder = [key for key in missing if not key.startswith(DECODER_PREFIXES)]
    if missing_encoder == ["norm.bias", "norm.weight"] and "fc_norm.weight" in state:
        # A reference fine-tuned classifier pools the patch tokens and normalises them with fc_norm instead.
        log.warning("%s is a fine-tuned classifier (fc_norm, no final norm): the final norm keeps its "
                    "initialisation", source)
        missing_encoder = []
    if missing_encoder:
        raise CheckpointError(f"{source} lacks encoder weights {missing_encoder[:8]}"
                              f"{' ...' if len(missing_encoder) > 8 else ''} (architecture from {architecture_from})")
    if missing and require_decoder:
        raise CheckpointError(f"{source} lacks decoder weights {missing[:8]}{' ...' if len(missing) > 8 else ''} "
                              f"(architecture from {architecture_from})")
    if missing:
        log.info("%s has no decoder weights; the decoder keeps its initialisation", source)
    unused = sorted(set(state) - set(expected))
    if unused:
        log.info("%s: keys the MAE does not use: %s", source, ", ".join(unused[:8]))
    model.load_state_dict({key: value for key, value in state.items() if key in expected}, strict=False)
    return LoadedModel(model.eval(), architecture_from)


def load_model(path: str | Path, **overrides: Any) -> MaskedAutoencoderViT:
    """This project's MAE with the weights of ``path`` (any source in this module's docstring), in eval mode.

    The architecture is the one the file states (a checkpoint's run config, the ``.json`` beside a
    ``.safetensors`` export, ``config.json``, a reference file's preset name), else the one its weights imply;
    ``overrides`` (constructor arguments of :class:`~mae.models.MaskedAutoencoderViT`, e.g. ``num_heads=16`` or
    ``norm_pix_loss=True``) replace any of it. The encoder must be complete; a file without decoder (an encoder
    export, a fine-tuned classifier) leaves the decoder at its initialisation, which is logged. A tensor of
    another shape is one line naming the key and both shapes; keys the MAE has no use for (a classifier's head)
    are logged by name.
    """
    return load(path, overrides=overrides).model
