"""Downstream classifiers: timm's ``VisionTransformer`` with an MAE encoder's architecture and weights."""

from __future__ import annotations

from functools import partial

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from mae.models.mae import MaskedAutoencoderViT

HEAD_INIT_STD = 2e-5  # the reference's fine-tuning head initialisation


def vit_classifier_from_mae(
    mae: MaskedAutoencoderViT, num_classes: int, global_pool: str = "avg", drop_path_rate: float = 0.0
) -> VisionTransformer:
    """A timm ViT with ``mae``'s encoder weights and a new head, as the reference builds it for fine-tuning.

    ``global_pool="avg"`` averages the patch tokens and applies ``fc_norm`` (the encoder's final ``norm`` is then
    unused, as in the reference); ``"token"`` classifies the normalised cls token. The head is initialised
    trunc-normal with std 2e-5 and zero bias.
    """
    if global_pool not in ("avg", "token"):
        raise ValueError(f"global_pool={global_pool!r} must be 'avg' (patch tokens + fc_norm) or 'token' (cls)")
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be at least 1")
    width = mae.cls_token.shape[-1]
    vit = VisionTransformer(
        img_size=mae.img_size,
        patch_size=mae.patch_size,
        in_chans=mae.in_chans,
        num_classes=num_classes,
        global_pool=global_pool,
        embed_dim=width,
        depth=len(mae.blocks),
        num_heads=mae.blocks[0].attn.num_heads,
        mlp_ratio=mae.blocks[0].mlp.fc1.out_features / width,
        qkv_bias=True,
        drop_path_rate=drop_path_rate,
        norm_layer=partial(nn.LayerNorm, eps=mae.norm.eps),
    )
    encoder = mae.encoder_state_dict()
    if global_pool == "avg":
        encoder = {k: v for k, v in encoder.items() if not k.startswith("norm.")}
    result = vit.load_state_dict(encoder, strict=False)
    new = {k for k in result.missing_keys if k.startswith(("head.", "fc_norm."))}
    if set(result.missing_keys) != new or result.unexpected_keys:
        raise RuntimeError(
            f"encoder does not fit the classifier: missing {result.missing_keys}, unexpected {result.unexpected_keys}"
        )
    nn.init.trunc_normal_(vit.head.weight, std=HEAD_INIT_STD)
    nn.init.zeros_(vit.head.bias)
    return vit
