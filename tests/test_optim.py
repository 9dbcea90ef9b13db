import math

import pytest

from mae.models import MaskedAutoencoderViT
from mae.training.optim import param_groups_weight_decay, scaled_lr, warmup_cosine_lr


def test_linear_scaling_rule():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    assert scaled_lr(1e-3, 256) == pytest.approx(1e-3)


def test_warmup_is_linear_from_zero():
    assert warmup_cosine_lr(0.0, 1.0, 0.1, 4, 20) == 0.0
    assert warmup_cosine_lr(1.0, 1.0, 0.1, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine_lr(4.0, 1.0, 0.1, 4, 20) == pytest.approx(1.0)


def test_half_cycle_cosine_to_min_lr():
    assert warmup_cosine_lr(12.0, 1.0, 0.1, 4, 20) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine_lr(20.0, 1.0, 0.1, 4, 20) == pytest.approx(0.1)
    epoch = 9.3
    expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (epoch - 4) / 16))
    assert warmup_cosine_lr(epoch, 1.0, 0.1, 4, 20) == pytest.approx(expected)


def test_no_weight_decay_on_biases_and_1d_params_and_frozen_left_out():
    model = MaskedAutoencoderViT(
        img_size=8,
        patch_size=4,
        embed_dim=16,
        depth=1,
        num_heads=2,
        decoder_embed_dim=8,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    no_decay, decay = param_groups_weight_decay(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {"cls_token", "mask_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"} <= decay_names
    assert {"patch_embed.proj.bias", "blocks.0.norm1.weight", "norm.bias", "decoder_pred.bias"} <= no_decay_names
    assert "pos_embed" not in decay_names | no_decay_names
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for p in decay["params"] + no_decay["params"]) == trainable
