"""``python -m mae.model_files.export FORMAT CKPT OUT``: write a checkpoint's MAE for other code, as files that load without
running anything (safetensors and JSON), except the ``.pth`` a user asks for.

Formats:
  mae               OUT.safetensors: the whole MAE (encoder and decoder, reference names) + OUT.json (architecture);
                    ``mae.load_model(OUT)`` rebuilds it.
  timm              the encoder as a timm ``VisionTransformer`` (``num_classes=0``) state_dict: OUT.safetensors
                    (+ OUT.json) or OUT.pth; ``timm.create_model(..., checkpoint_path=OUT)`` loads either.
  transformers      a ``transformers.ViTMAEForPreTraining`` directory (config.json + model.safetensors).
  transformers-vit  the encoder alone as a ``transformers.ViTModel`` directory.

CKPT is anything :func:`mae.model_files.loading.load_model` reads; ``key=value`` arguments after OUT are its overrides
(constructor arguments, e.g. ``num_heads=16`` for a file that does not state its architecture).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from mae.model_files.checkpoint import CheckpointError, export_timm_encoder
from mae.model_files.loading import CONFIG_SUFFIX, load_model, model_architecture
from mae.model_files.stored_config import StoredNormalization, stored_normalization
from mae.models import MaskedAutoencoderViT
from mae.runs.atomic_files import replaced_atomically, write_text_atomically

FORMAT_NAME = "mae-lightning"


def save_safetensors(
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    kind: str,
    architecture: Mapping[str, Any],
    normalization: StoredNormalization | None = None,
) -> Path:
    """``state`` as ``path`` (``.safetensors``) and, beside it, ``{"format", "kind", "architecture"}`` as JSON, with
    ``"normalization": {"mean", "std"}`` when the model's input normalisation is known."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path} must end in .safetensors")
    with replaced_atomically(path) as tmp:
        save_file({key: value.detach().cpu().contiguous() for key, value in state.items()}, str(tmp))
    config: dict[str, Any] = {"format": FORMAT_NAME, "kind": kind, "architecture": dict(architecture)}
    if normalization is not None:
        config["normalization"] = {"mean": list(normalization.mean), "std": list(normalization.std)}
    write_text_atomically(path.with_suffix(CONFIG_SUFFIX), json.dumps(config, indent=1) + "\n")
    return path


def save_mae(model: MaskedAutoencoderViT, path: str | Path, normalization: StoredNormalization | None = None) -> Path:
    """The whole MAE, decoder included, as safetensors + JSON architecture (and normalisation, when known)."""
    return save_safetensors(model.state_dict(), path, "mae", model_architecture(model), normalization)


def save_timm_encoder(
    model: MaskedAutoencoderViT, path: str | Path, normalization: StoredNormalization | None = None
) -> Path:
    """The encoder as a timm ViT state_dict: safetensors (+ JSON) for ``.safetensors``, else a ``.pth``."""
    if Path(path).suffix == ".safetensors":
        return save_safetensors(
            model.encoder_state_dict(), path, "timm_encoder", model_architecture(model), normalization
        )
    return export_timm_encoder(model, path)


def classifier_architecture(vit: VisionTransformer) -> dict[str, Any]:
    """The ``timm.models.vision_transformer.VisionTransformer`` arguments that rebuild a fine-tuned classifier."""
    block = vit.blocks[0]
    norm = vit.fc_norm if isinstance(vit.fc_norm, nn.LayerNorm) else vit.norm
    return {
        "img_size": list(vit.patch_embed.img_size),
        "patch_size": list(vit.patch_embed.patch_size),
        "in_chans": vit.patch_embed.proj.in_channels,
        "num_classes": vit.num_classes,
        "global_pool": vit.global_pool,
        "embed_dim": vit.embed_dim,
        "depth": len(vit.blocks),
        "num_heads": block.attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / vit.embed_dim,
        "qkv_bias": True,
        "layer_norm_eps": norm.eps,
    }


def save_timm_classifier(vit: VisionTransformer, path: str | Path) -> Path:
    """A fine-tuned classifier, head included, as safetensors + JSON (``kind: timm_classifier``): timm's
    ``VisionTransformer(**architecture, norm_layer=partial(nn.LayerNorm, eps=layer_norm_eps))`` loads it."""
    return save_safetensors(vit.state_dict(), path, "timm_classifier", classifier_architecture(vit))


def write(
    format_name: str, model: MaskedAutoencoderViT, out: Path, normalization: StoredNormalization | None = None
) -> Path:
    """``model`` in ``format_name`` at ``out``; the input normalisation, when known, goes with it (the ``.json``
    beside a safetensors file, a transformers directory's ``preprocessor_config.json``)."""
    if format_name == "mae":
        return save_mae(model, out, normalization)
    if format_name == "timm":
        return save_timm_encoder(model, out, normalization)
    from mae.model_files.transformers_format import save_transformers, save_transformers_vit, write_preprocessor_config

    save = save_transformers if format_name == "transformers" else save_transformers_vit
    save(model, out)
    if normalization is not None:
        write_preprocessor_config(out, model.img_size, normalization.mean, normalization.std)
    return out


def overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` arguments, values read as YAML scalars (``16``, ``true``, ``0.75``)."""
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{pair!r} is not key=value")
        parsed[key] = yaml.safe_load(value)
    return parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mae.model_files.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("format", choices=["mae", "timm", "transformers", "transformers-vit"])
    parser.add_argument("ckpt", type=Path, help="a checkpoint, .pth, .safetensors or transformers directory")
    parser.add_argument("out", type=Path, help="the file (mae, timm) or directory (transformers*) to write")
    parser.add_argument("overrides", nargs="*", help="architecture overrides for load_model, e.g. num_heads=16")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.ckpt, **overrides(args.overrides))
        written = write(args.format, model, args.out, stored_normalization(args.ckpt))
    except (CheckpointError, ValueError, TypeError, ImportError) as error:
        message = str(error).strip().splitlines()
        print(f"error: {message[0] if message else type(error).__name__}", file=sys.stderr)
        return 2
    print(f"wrote {written} ({args.format})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
