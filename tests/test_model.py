from pathlib import Path

import pytest
import timm
import torch

from mae.models import (
    MaskedAutoencoderViT,
    mae_vit_base_patch16,
    mae_vit_huge_patch14,
    mae_vit_large_patch16,
    mae_vit_small_patch4,
    mae_vit_tiny_patch4,
    mae_vit_tiny_patch7,
)
from mae.models.pos_embed import sincos_2d

FIXTURE = Path(__file__).parent / "fixtures" / "official_mae_tiny.pt"


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURE, weights_only=True)


def tiny(**kwargs) -> MaskedAutoencoderViT:
    args = dict(
        img_size=16,
        patch_size=4,
        in_chans=3,
        embed_dim=32,
        depth=2,
        num_heads=4,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    return MaskedAutoencoderViT(**{**args, **kwargs})


@pytest.mark.parametrize("norm_pix", [False, True])
def test_parity_with_reference_outputs(reference, norm_pix):
    model = MaskedAutoencoderViT(**reference["config"], norm_pix_loss=norm_pix)
    model.load_state_dict(reference["state_dict"], strict=True)
    key = "norm_pix" if norm_pix else "pix"
    with torch.no_grad():
        out = model(reference["imgs"], mask_ratio=0.75, noise=reference[f"{key}_noise"])
    assert torch.equal(out.mask, reference[f"{key}_mask"])
    assert torch.allclose(out.pred, reference[f"{key}_pred"], atol=1e-5, rtol=0)
    assert abs(out.loss.item() - reference[f"{key}_loss"].item()) < 1e-5


def test_reference_key_layout_of_vit_base():
    model = mae_vit_base_patch16()
    state = model.state_dict()
    assert len(state) == 254
    expected_shapes = {
        "cls_token": (1, 1, 768),
        "pos_embed": (1, 197, 768),
        "mask_token": (1, 1, 512),
        "decoder_pos_embed": (1, 197, 512),
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "decoder_embed.weight": (512, 768),
        "decoder_pred.weight": (768, 512),
        "blocks.11.mlp.fc2.weight": (768, 3072),
        "decoder_blocks.7.attn.qkv.weight": (1536, 512),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert sum(p.numel() for p in model.parameters()) == 111_907_840
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 111_655_680


def test_encoder_loads_into_timm_vision_transformer_with_equal_features():
    model = mae_vit_base_patch16(img_size=64)
    vit = timm.create_model("vit_base_patch16_224", img_size=64, num_classes=0, pretrained=False)
    vit.load_state_dict(model.encoder_state_dict(), strict=True)
    imgs = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(vit.forward_features(imgs), model.forward_features(imgs), atol=1e-5)


@pytest.mark.parametrize(
    ("factory", "patch", "width", "depth", "heads"),
    [
        (mae_vit_large_patch16, 16, 1024, 24, 16),
        (mae_vit_huge_patch14, 14, 1280, 32, 16),
        (mae_vit_tiny_patch4, 4, 192, 6, 3),
        (mae_vit_tiny_patch7, 7, 192, 6, 3),
        (mae_vit_small_patch4, 4, 384, 12, 6),
    ],
)
def test_presets(factory, patch, width, depth, heads):
    model = factory(img_size=patch * 2)  # tiny images keep the big presets cheap to build
    assert model.patch_size == patch and model.cls_token.shape[-1] == width
    assert len(model.blocks) == depth and model.blocks[0].attn.num_heads == heads
    if width >= 1024:
        assert (len(model.decoder_blocks), model.mask_token.shape[-1], model.decoder_blocks[0].attn.num_heads) == (
            8,
            512,
            16,
        )


def test_fixed_position_embeddings_are_frozen_sincos():
    model = tiny()
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    assert torch.equal(model.pos_embed[0], sincos_2d(32, 4))
    assert torch.equal(model.decoder_pos_embed[0], sincos_2d(16, 4))


def test_initialisation_matches_reference_rules():
    torch.manual_seed(0)
    model = mae_vit_base_patch16(img_size=32)
    linear = model.blocks[0].mlp.fc1
    bound = (6 / (linear.in_features + linear.out_features)) ** 0.5
    assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(linear.bias) == 0
    proj = model.patch_embed.proj.weight
    proj_bound = (6 / (768 + 3 * 16 * 16)) ** 0.5
    assert proj.abs().max() <= proj_bound and proj.abs().max() > 0.9 * proj_bound
    assert 0.015 < model.cls_token.std().item() < 0.025 and 0.015 < model.mask_token.std().item() < 0.025
    assert torch.equal(model.norm.weight, torch.ones(768)) and model.norm.eps == 1e-6


@pytest.mark.parametrize("in_chans", [1, 3])
def test_forward_shapes_and_deterministic_mask(in_chans):
    model = tiny(in_chans=in_chans, norm_pix_loss=True)
    imgs = torch.randn(3, in_chans, 16, 16)
    noise = torch.rand(3, 16)
    first, second = model(imgs, noise=noise), model(imgs, noise=noise)
    assert first.pred.shape == (3, 16, 16 * in_chans)
    assert first.mask.shape == (3, 16) and first.mask.sum().item() == 3 * 12
    assert torch.equal(first.mask, second.mask) and torch.equal(first.loss, second.loss)
    assert not torch.equal(model(imgs).mask, model(imgs).mask)


def test_mask_ratio_argument_overrides_default():
    model = tiny(mask_ratio=0.75)
    assert model(torch.randn(2, 3, 16, 16), mask_ratio=0.5).mask.sum().item() == 2 * 8


def test_loss_ignores_visible_patches():
    model = tiny()
    imgs = torch.randn(2, 3, 16, 16)
    noise = torch.rand(2, 16)
    out = model(imgs, noise=noise)
    visible = out.mask == 0
    changed = model.patchify(imgs).clone()
    changed[visible] += 5.0  # alter only what the encoder sees... and the target there
    target_only = model.forward_loss(model.unpatchify(changed), out.pred, out.mask)
    assert torch.allclose(target_only, out.loss)


def test_forward_features_returns_all_tokens():
    model = tiny()
    assert model.forward_features(torch.randn(2, 3, 16, 16)).shape == (2, 17, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(mask_ratio=1.0), r"mask_ratio=1.0 is outside \[0, 1\)"),
        (dict(mask_ratio=-0.1), r"mask_ratio=-0.1 is outside \[0, 1\)"),
        (dict(img_size=18), "img_size=18 is not divisible by patch_size=4"),
        (dict(embed_dim=30, num_heads=4), "embed_dim=30 is not divisible by its number of heads"),
        (dict(in_chans=0), "in_chans=0 must be at least 1"),
    ],
)
def test_invalid_configuration_is_a_one_line_error(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        tiny(**kwargs)
    assert "\n" not in str(info.value)


def test_wrong_input_shape_is_reported():
    with pytest.raises(ValueError, match=r"images have shape \(2, 1, 16, 16\), expected \(N, 3, 16, 16\)"):
        tiny()(torch.zeros(2, 1, 16, 16))


def counted(forward, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    return wrapper


def test_activation_checkpointing_gives_the_same_gradients_and_recomputes_blocks():
    torch.manual_seed(0)
    imgs = torch.randn(2, 3, 16, 16)
    noise = torch.rand(2, 16)
    grads, block_calls = {}, {}
    for enabled in (False, True):
        torch.manual_seed(1)
        model = tiny(grad_checkpointing=enabled).train()
        calls = []
        for block in [*model.blocks, *model.decoder_blocks]:
            block.forward = counted(block.forward, calls)  # hooks do not fire when checkpointing recomputes
        model(imgs, noise=noise).loss.backward()
        grads[enabled] = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        block_calls[enabled] = len(calls)
    assert grads[True].keys() == grads[False].keys()
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert block_calls[True] == 2 * block_calls[False]  # each block ran again in the backward pass
    model.eval()
    calls.clear()
    model(imgs, noise=noise)
    assert len(calls) == block_calls[False]  # evaluation runs every block once
