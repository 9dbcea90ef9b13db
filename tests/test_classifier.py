"""Classifiers built from an MAE encoder, and timm's layer-wise lr decay against the reference rule."""

import pytest
import torch

from mae.models import MaskedAutoencoderViT
from mae.models.classifier import vit_classifier_from_mae
from mae.training.optim import layer_decay_param_groups


def small_mae() -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(
        img_size=16,
        patch_size=4,
        in_chans=1,
        embed_dim=32,
        depth=3,
        num_heads=4,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )


def reference_layer_id(name: str, depth: int) -> int:
    """The reference: cls/pos/patch-embed at 0, block i at i + 1, everything else (norms, head) at depth + 1."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def test_token_classifier_sees_the_mae_encoder_features():
    mae = small_mae()
    vit = vit_classifier_from_mae(mae, num_classes=5, global_pool="token")
    imgs = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(vit.forward_features(imgs), mae.forward_features(imgs), atol=1e-6)
    assert vit.head.out_features == 5 and torch.count_nonzero(vit.head.bias) == 0
    assert 0 < vit.head.weight.std().item() < 1e-4  # trunc_normal std 2e-5


def test_avg_pool_classifier_uses_fc_norm_on_mean_patch_tokens():
    mae = small_mae()
    vit = vit_classifier_from_mae(mae, num_classes=3, global_pool="avg")
    assert isinstance(vit.norm, torch.nn.Identity) and isinstance(vit.fc_norm, torch.nn.LayerNorm)
    imgs = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        tokens = vit.forward_features(imgs)
        pooled = vit.fc_norm(tokens[:, 1:].mean(dim=1))
        assert torch.allclose(vit.forward_head(tokens, pre_logits=True), pooled, atol=1e-6)


@pytest.mark.parametrize("decay", [0.65, 0.75])
def test_layer_decay_scales_equal_the_reference_rule(decay):
    vit = vit_classifier_from_mae(small_mae(), num_classes=4)
    groups = layer_decay_param_groups(vit, weight_decay=0.05, layer_decay=decay)
    names = {id(p): n for n, p in vit.named_parameters()}
    seen = set()
    for group in groups:
        for param in group["params"]:
            name = names[id(param)]
            seen.add(name)
            assert group["lr_scale"] == pytest.approx(decay ** (3 + 1 - reference_layer_id(name, 3))), name
            no_decay = param.ndim == 1 or name in ("cls_token", "pos_embed")
            assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert seen == {n for n, p in vit.named_parameters() if p.requires_grad}


def test_invalid_pool_is_refused():
    with pytest.raises(ValueError, match="global_pool='max' must be 'avg'"):
        vit_classifier_from_mae(small_mae(), num_classes=2, global_pool="max")
