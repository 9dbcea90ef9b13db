"""One call that gives this project's MAE from any file it reads: :func:`load_model`.

Sources: this project's Lightning checkpoints, a reference MAE ``.pth`` (encoder-only, full with decoder, or
fine-tuned), a timm ViT state_dict (``.pth`` or ``.safetensors``), this project's ``.safetensors`` exports, and a
``transformers`` ViTMAE / ViT directory (``config.json`` + ``model.safetensors``). Nothing a file holds is run:
pickled files go through ``torch.load(weights_only=True)``, the rest is safetensors and JSON. The commands
(``python -m mae.jobs.extract``, ``python -m mae.jobs.visualize``, ``python -m mae.demo``) read through :func:`load`,
which adds their model group as the architecture of files that state none, and can require a decoder.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mae.model_files.checkpoint import (
    CheckpointError,
    check_shapes,
    interpolate_pos_embed,
    load_checkpoint_file,
    load_encoder_weights,
    model_state_dict,
)
from mae.model_files.stored_config import MODEL_TARGETS, RUN_CONFIG_KEY, read_config_file, trusted_node
from mae.models import MaskedAutoencoderViT
from mae.models.pos_embed import sincos_2d
from mae.runs.config import instantiate_node
from mae.runs.run_directory import config_file, run_dir_of_checkpoint

log = logging.getLogger(__name__)

CONFIG_SUFFIX = ".json"
"""A ``.safetensors`` export's architecture lies beside it, same stem, this suffix."""

HEADS_BY_WIDTH = {128: 4, 192: 3, 256: 8, 384: 6, 512: 16, 768: 12, 1024: 16, 1280: 16}
"""Attention heads at the usual widths (ViT-Ti/S/B/L/H, the reference's 512-wide decoder, this project's CPU
decoders): the one architecture number that weights do not show."""

DECODER_PREFIXES = ("decoder_", "mask_token")
MAE_KINDS = ("mae", "timm_encoder")
"""Exports whose ``.json`` holds MAE constructor arguments (``python -m mae.model_files.export``)."""


class NoDecoderError(CheckpointError):
    """The file holds an encoder only (an encoder export or ``.pth``, a fine-tuned or linear-probe checkpoint)."""


def model_architecture(model: MaskedAutoencoderViT) -> dict[str, Any]:
    """The constructor arguments that rebuild ``model`` (what the ``.json`` beside an export holds)."""
    block, decoder_block = model.blocks[0], model.decoder_blocks[0]
    return {
        "img_size": model.img_size,
        "patch_size": model.patch_size,
        "in_chans": model.in_chans,
        "embed_dim": model.embed_dim,
        "depth": len(model.blocks),
        "num_heads": block.attn.num_heads,
        "decoder_embed_dim": model.decoder_embed.out_features,
        "decoder_depth": len(model.decoder_blocks),
        "decoder_num_heads": decoder_block.attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / model.embed_dim,
        "mask_ratio": model.mask_ratio,
        "norm_pix_loss": model.norm_pix_loss,
        "layer_norm_eps": model.norm.eps,
    }


def _heads(width: int, name: str, source: str) -> int:
    if width not in HEADS_BY_WIDTH:
        raise CheckpointError(
            f"{source} does not say its {name} and width {width} has no usual head count; pass "
            f"{name}=<heads> to load_model"
        )
    return HEADS_BY_WIDTH[width]


def check_has_encoder(state: Mapping[str, torch.Tensor], source: str) -> None:
    """One line when ``state`` holds no MAE or ViT encoder (no patch embedding), naming some keys it does hold."""
    if "patch_embed.proj.weight" not in state:
        raise CheckpointError(
            f"{source} holds no MAE or ViT encoder (no patch_embed.proj.weight; its keys: "
            f"{', '.join(sorted(state)[:4])}{' ...' if len(state) > 4 else ''})"
        )


def shape_architecture(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The constructor arguments that the shapes of an encoder's weights (reference layout) show: ``patch_size``,
    ``in_chans``, ``embed_dim``, ``depth``, ``mlp_ratio``, ``img_size`` when there is a ``pos_embed``, and
    ``decoder_embed_dim`` and ``decoder_depth`` when there are decoder weights (heads do not show in shapes)."""
    embed_dim, in_chans, patch_size, _ = (int(n) for n in state["patch_embed.proj.weight"].shape)
    arch: dict[str, Any] = {
        "patch_size": patch_size,
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depth": len({key.split(".")[1] for key in state if key.startswith("blocks.")}),
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
    }
    if "pos_embed" in state:
        arch["img_size"] = int(round((state["pos_embed"].shape[1] - 1) ** 0.5)) * patch_size
    if "decoder_embed.weight" in state:
        arch["decoder_embed_dim"] = int(state["decoder_embed.weight"].shape[0])
        arch["decoder_depth"] = len({key.split(".")[1] for key in state if key.startswith("decoder_blocks.")})
    return arch


def architecture_from_weights(
    state: Mapping[str, torch.Tensor], source: str, given: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The constructor arguments that weights in the reference layout imply, ``given`` ones kept (heads from
    :data:`HEADS_BY_WIDTH` unless given); without decoder weights, the decoder is the paper's (512 wide, 8 deep)."""
    check_has_encoder(state, source)
    given = given or {}
    arch = shape_architecture(state)
    arch.setdefault("img_size", 224 // arch["patch_size"] * arch["patch_size"])
    if "decoder_embed_dim" in arch:
        if "decoder_num_heads" not in given:
            arch["decoder_num_heads"] = _heads(arch["decoder_embed_dim"], "decoder_num_heads", source)
    else:
        arch.update(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
    if "num_heads" not in given:
        arch["num_heads"] = _heads(arch["embed_dim"], "num_heads", source)
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
        content = read_config_file(run_config)
        node = content.get("model") if isinstance(content, DictConfig) else None
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
        from mae.model_files.transformers_format import from_transformers

        model = from_transformers(path)
        return Source(model.state_dict(), model_architecture(model), str(path / "config.json"))
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sidecar = path.with_suffix(CONFIG_SUFFIX)
        config = read_config_file(sidecar) if sidecar.is_file() else {}
        config = config if isinstance(config, Mapping) else {}
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


SINCOS_ATOL = 1e-5
"""How close a stored position table must be to the 2-D sin-cos table of its grid to count as that table."""

MATCHING_NUMBERS = (
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "mlp_ratio",
    "num_heads",
    "decoder_embed_dim",
    "decoder_depth",
    "decoder_num_heads",
)
"""The architecture numbers a file must share with the model it continues (all but the image size)."""


@dataclass
class LoadedWeights:
    """What :func:`load_mae_weights` took from a file."""

    decoder: bool
    """Whether the decoder came from the file; when not, it keeps the model's own initialisation."""
    resized_from: tuple[int, int] | None
    """The file's patch grid when its position tables were resized to the model's; None when the grids agree."""
    unused: list[str]
    """Keys of the file the MAE has no use for (a classifier's head)."""


def check_same_architecture(
    state: Mapping[str, torch.Tensor],
    stated: DictConfig | Mapping[str, Any] | None,
    model: MaskedAutoencoderViT,
    source: str,
    model_name: str,
) -> None:
    """One line naming every number (file's and model's) where the weights' shapes, or the heads the file states,
    differ from ``model``; decoder numbers only count when the file has a decoder, the image size never does."""
    found = shape_architecture(state)
    for name in ("num_heads", "decoder_num_heads"):
        heads = stated.get(name) if stated is not None else None
        if isinstance(heads, int) and (name == "num_heads" or "decoder_embed_dim" in found):
            found[name] = heads
    built = model_architecture(model)
    differing = [name for name in MATCHING_NUMBERS if name in found and found[name] != built[name]]
    if differing:
        raise CheckpointError(
            f"{source} has {', '.join(f'{name}={found[name]}' for name in differing)} but {model_name} builds "
            f"{', '.join(f'{name}={built[name]}' for name in differing)}; choose the model group that matches the "
            "file (or set those numbers, e.g. model.embed_dim=...)"
        )


def _is_sincos(table: torch.Tensor, side: int) -> bool:
    return torch.allclose(table[0].float(), sincos_2d(table.shape[-1], side), atol=SINCOS_ATOL)


def position_tables_on_grid(
    state: Mapping[str, torch.Tensor], grid: tuple[int, int], source: str
) -> tuple[dict[str, torch.Tensor], tuple[int, int] | None]:
    """``state`` with ``pos_embed`` and ``decoder_pos_embed`` on ``grid``, and the file's grid if it was another.

    A table that is the fixed sin-cos one of its own grid is replaced by the exact sin-cos table of ``grid``;
    another (trained or perturbed) is resized bicubically (:func:`~mae.model_files.checkpoint.interpolate_pos_embed`). One log
    line says which tables were resized, from which grid to which.
    """
    state, resized_from, how = dict(state), None, []
    for name in ("pos_embed", "decoder_pos_embed"):
        table = state.get(name)
        side = int(round((table.shape[1] - 1) ** 0.5)) if table is not None else 0
        if table is None or (side, side) == tuple(grid):
            continue
        if side * side == table.shape[1] - 1 and _is_sincos(table, side):
            state[name] = sincos_2d(table.shape[-1], grid).unsqueeze(0).to(table.dtype)
            how.append(f"{name}: the sin-cos table of the new grid")
        else:
            state[name] = interpolate_pos_embed(table, grid)  # a non-square table is a one-line error there
            how.append(f"{name}: interpolated bicubically")
        resized_from = (side, side)
    if resized_from is not None:
        log.info(
            "%s: position tables resized from the file's %dx%d patch grid to the model's %dx%d (%s)",
            source,
            *resized_from,
            *grid,
            "; ".join(how),
        )
    return state, resized_from


def load_mae_weights(model: MaskedAutoencoderViT, path: str | Path, model_name: str = "the model") -> LoadedWeights:
    """Start ``model``'s encoder and decoder from ``path`` (continued pre-training), in place.

    ``path`` is any source :func:`read_source` reads. The file must have the model's patch size, channels, widths,
    depths and MLP ratio (its decoder's too, when it has one), read from its weights' shapes; heads where the file
    states them: else one :class:`CheckpointError` line naming every differing number, the file's and
    ``model_name``'s. Another image size is fine: both position tables go to the model's grid
    (:func:`position_tables_on_grid`). A file without a decoder (an encoder export or ``.pth``, a fine-tuned
    classifier) leaves the decoder at the model's own initialisation, said in one warning line.
    """
    source = f"pretrained={path}"
    if not Path(path).exists():
        raise CheckpointError(
            f"{source} does not exist; give this project's checkpoint or export, a reference MAE "
            ".pth or a transformers ViTMAE directory, or pretrained=null for random weights"
        )
    found = read_source(path)
    check_has_encoder(found.state, source)
    check_same_architecture(found.state, found.architecture, model, source, model_name)
    state, resized_from = position_tables_on_grid(found.state, model.grid_size, source)
    expected = model.state_dict()
    check_shapes(state, expected, source)
    missing, decoder = sorted(set(expected) - set(state)), has_decoder(state)
    # A reference fine-tuned classifier pools the patch tokens and normalises them with fc_norm instead.
    classifier = "fc_norm.weight" in state and {"norm.weight", "norm.bias"} <= set(missing)
    lacking = [
        key
        for key in missing
        if (decoder or not key.startswith(DECODER_PREFIXES)) and not (classifier and key.startswith("norm."))
    ]
    if lacking:
        raise CheckpointError(f"{source} lacks weights {lacking[:8]}{' ...' if len(lacking) > 8 else ''}")
    if not decoder:
        kept = (
            "the decoder and the final norm (a fine-tuned classifier has fc_norm instead) keep"
            if classifier
            else "the decoder keeps"
        )
        log.warning("%s holds an encoder only: %s the model's initialisation", source, kept)
    unused = sorted(set(state) - set(expected))
    if unused:
        log.info("%s: keys the MAE does not use: %s", source, ", ".join(unused[:8]))
    model.load_state_dict({key: value for key, value in state.items() if key in expected}, strict=False)
    return LoadedWeights(decoder, resized_from, unused)


def _listed(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_pretrained(model: torch.nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Initialise the encoder of an MAE ``model`` from any checkpoint this project reads, in place.

    Accepted: whatever :func:`mae.model_files.loading.load_model` reads (this project's Lightning checkpoints and
    ``.safetensors`` exports, a reference MAE ``.pth``, a timm ViT state_dict, a ``transformers`` directory). Position
    embeddings are resized to the model's grid. Encoder weights the file lacks, and keys the encoder has no use
    for, are logged by name and returned; a checkpoint none of whose weights fit is a :class:`CheckpointError`.
    """
    state = read_source(path).state
    missing, unexpected = load_encoder_weights(model, state, f"checkpoint {path}", model.grid_size)
    encoder_keys = set(model.encoder_state_dict())
    missing_encoder = sorted(key for key in missing if key in encoder_keys)
    if len(missing_encoder) == len(encoder_keys):
        raise CheckpointError(
            f"checkpoint {path} holds none of the encoder's weights (it has keys "
            f"{_listed(sorted(state))}); expected e.g. patch_embed.proj.weight, blocks.0.*"
        )
    if missing_encoder:
        log.warning(
            "checkpoint %s lacks encoder weights %s; they keep their initialisation", path, _listed(missing_encoder)
        )
    if unexpected:
        log.info("checkpoint %s: keys the encoder does not use: %s", path, _listed(unexpected))
    return {"missing": missing_encoder, "unexpected": unexpected}


def build(architecture: DictConfig | Mapping[str, Any], overrides: Mapping[str, Any]) -> MaskedAutoencoderViT:
    if isinstance(architecture, DictConfig):
        return instantiate_node(architecture, **overrides)
    return MaskedAutoencoderViT(**{**architecture, **overrides})


@dataclass
class LoadedModel:
    """A model :func:`load` built, and where its architecture came from."""

    model: MaskedAutoencoderViT
    architecture_from: str


def load(
    path: str | Path,
    *,
    fallback: DictConfig | None = None,
    use_stated: bool = True,
    require_decoder: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """:func:`load_model` for the commands: the architecture is the one ``path`` states (unless ``use_stated`` is
    false), else the ``fallback`` model node (a Hydra model group), else the one the weights imply; then
    ``overrides``. ``require_decoder`` refuses a file without decoder weights (:class:`NoDecoderError`) or one
    whose decoder does not fill the model's."""
    source = f"checkpoint {path}"
    found = read_source(path)
    state, overrides = found.state, dict(overrides or {})
    check_has_encoder(state, source)
    if require_decoder and not has_decoder(state):
        raise NoDecoderError(
            f"{source} has no decoder weights (an encoder-only or fine-tuned file): "
            "reconstructions need a pre-training checkpoint or a full MAE export"
        )
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
        log.warning(
            "%s is a fine-tuned classifier (fc_norm, no final norm): the final norm keeps its initialisation", source
        )
        missing_encoder = []
    if missing_encoder:
        raise CheckpointError(
            f"{source} lacks encoder weights {missing_encoder[:8]}"
            f"{' ...' if len(missing_encoder) > 8 else ''} (architecture from {architecture_from})"
        )
    if missing and require_decoder:
        raise CheckpointError(
            f"{source} lacks decoder weights {missing[:8]}{' ...' if len(missing) > 8 else ''} "
            f"(architecture from {architecture_from})"
        )
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
