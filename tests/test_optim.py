import math

import pytest
import torch

from mae.models import MaskedAutoencoderViT
from mae.training.optim import (
    LARS,
    layer_decay_groups,
    param_groups_weight_decay,
    scaled_lr,
    warmup_cosine_lr,
    warmup_poly_lr,
)


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


def reference_lars_step(params, grads, buffers, lr, weight_decay, momentum, trust_coefficient):
    """The reference's ``util/lars.py`` update, written out (buffers start at zero)."""
    for p, grad, mu in zip(params, grads, buffers, strict=True):
        dp = grad
        if p.ndim > 1:
            dp = grad + weight_decay * p
            param_norm, update_norm = p.norm().item(), dp.norm().item()
            q = trust_coefficient * param_norm / update_norm if param_norm > 0 and update_norm > 0 else 1.0
            dp = dp * q
        mu.mul_(momentum).add_(dp)
        p.sub_(lr * mu)


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_lars_equals_the_reference_update(weight_decay):
    generator = torch.Generator().manual_seed(0)
    shapes = [(4, 6), (6,), (3, 2, 2)]
    params = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    params.append(torch.nn.Parameter(torch.zeros(3, 3)))  # zero norm: trust ratio 1
    expected = [p.detach().clone() for p in params]
    initial = [p.detach().clone() for p in params]
    buffers = [torch.zeros_like(p) for p in params]
    optimizer = LARS(params, lr=0.7, weight_decay=weight_decay, momentum=0.9, trust_coefficient=0.01)
    for step in range(5):
        grads = [torch.randn(p.shape, generator=generator) for p in params]
        if step == 2:
            grads[0].zero_()  # zero update norm without decay: trust ratio 1
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad.clone()
        optimizer.step()
        reference_lars_step(expected, grads, buffers, 0.7, weight_decay, 0.9, 0.01)
        for p, e in zip(params, expected, strict=True):
            torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-6)
    assert not any(torch.equal(p.detach(), i) for p, i in zip(params, initial, strict=True))  # the zero one too


def test_lars_decays_and_adapts_only_weights():
    bias = torch.nn.Parameter(torch.ones(5))
    bias.grad = torch.full((5,), 2.0)
    LARS([bias], lr=0.1, weight_decay=10.0, momentum=0.9, trust_coefficient=0.001).step()
    torch.testing.assert_close(bias.detach(), torch.full((5,), 1.0 - 0.1 * 2.0))  # plain SGD, no decay, no trust


def test_lars_closure_and_invalid_settings():
    weight = torch.nn.Parameter(torch.ones(2, 2))

    def closure():
        loss = (weight**2).sum()
        loss.backward()
        return loss

    assert LARS([weight], lr=0.1).step(closure).item() == 4.0
    with pytest.raises(ValueError, match="momentum=-0.1 must be non-negative"):
        LARS([weight], momentum=-0.1)
    with pytest.raises(ValueError, match="trust_coefficient=0.0 must be positive"):
        LARS([weight], trust_coefficient=0.0)


def _mmengine_linear_then_poly(step: int, lr: float, warmup: int, total: int, power: float, start: float) -> float:
    """mmengine's LinearLR(begin=0, end=warmup) then PolyLR(begin=warmup, end=total, eta_min=0) stepped one
    iteration at a time in their chained (recursive) forms, as the schedulers apply them."""
    value = lr * start
    for s in range(1, step + 1):
        if s < warmup:  # LinearLR's chained factor, total_iters = end - begin - 1
            t = warmup - 1
            value *= 1 + (1 - start) / (t * start + (s - 1) * (1 - start))
        elif s > warmup:  # PolyLR's chained factor from its second step on, total_iters = end - begin - 1
            t = total - warmup - 1
            value *= (1 - 1 / (t - (s - warmup) + 1)) ** power
    return value


@pytest.mark.parametrize("step", [0, 1, 7, 14, 15, 16, 40, 98, 99])
def test_warmup_poly_equals_mmsegmentations_chained_schedulers(step):
    expected = _mmengine_linear_then_poly(step, 1e-4, warmup=15, total=100, power=1.0, start=1e-6)
    assert warmup_poly_lr(step, 1e-4, 0.0, 15, 100, 1.0, 1e-6) == pytest.approx(expected, rel=1e-9, abs=1e-18)


def test_warmup_poly_reaches_the_peak_after_warmup_and_min_lr_at_the_last_step():
    assert warmup_poly_lr(14, 2.0, 0.1, 15, 100, 0.9, 1e-6) == pytest.approx(2.0)
    assert warmup_poly_lr(15, 2.0, 0.1, 15, 100, 0.9, 1e-6) == pytest.approx(2.0)
    assert warmup_poly_lr(99, 2.0, 0.1, 15, 100, 0.9, 1e-6) == pytest.approx(0.1)
    assert warmup_poly_lr(0, 2.0, 0.0, 0, 10, 1.0, 1e-6) == pytest.approx(2.0)  # no warmup


def test_layer_decay_puts_neck_and_heads_at_scale_one_and_skips_decay_of_named_tables():
    params = {
        "patch_embed.proj.weight": torch.nn.Parameter(torch.zeros(2, 2)),
        "blocks.0.attn.qkv.weight": torch.nn.Parameter(torch.zeros(2, 2)),
        "blocks.1.attn.relative_position_bias_table": torch.nn.Parameter(torch.zeros(3, 2)),
        "head.decode_head.conv_seg.weight": torch.nn.Parameter(torch.zeros(2, 2)),
    }
    groups = layer_decay_groups(params.items(), 2, 0.05, 0.5, ("relative_position_bias_table",))
    by_param = {id(p): g for g in groups for p in g["params"]}
    scale = {name: by_param[id(p)]["lr_scale"] for name, p in params.items()}
    decay = {name: by_param[id(p)]["weight_decay"] for name, p in params.items()}
    assert scale == {
        "patch_embed.proj.weight": 0.5**3,
        "blocks.0.attn.qkv.weight": 0.5**2,
        "blocks.1.attn.relative_position_bias_table": 0.5**1,
        "head.decode_head.conv_seg.weight": 1.0,
    }
    assert decay["blocks.1.attn.relative_position_bias_table"] == 0.0
    assert decay["head.decode_head.conv_seg.weight"] == 0.05
