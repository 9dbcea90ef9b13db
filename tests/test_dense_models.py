"""Segmentation on the MAE encoder (mae.models.dense) against hand computations and MMSegmentation's definitions."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mae.models import MaskedAutoencoderViT, mae_vit_base_patch16
from mae.models.dense import (
    ConvBNReLU,
    FCNHead,
    FeatureToPyramid,
    RelativePositionAttention,
    UPerHead,
    segmenter_from_mae,
    slide_inference,
    vit_backbone_from_mae,
    window_spans,
)

PATCH, WIDTH, HEADS = 4, 32, 2


def tiny_mae() -> MaskedAutoencoderViT:
    """A 16 px MAE (4x4 grid of 4 px patches); random cls token and position table so that nothing is symmetric."""
    torch.manual_seed(0)
    mae = MaskedAutoencoderViT(
        img_size=16,
        patch_size=PATCH,
        in_chans=3,
        embed_dim=WIDTH,
        depth=4,
        num_heads=HEADS,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    with torch.no_grad():
        mae.cls_token.normal_()
        mae.pos_embed.normal_()
    return mae


def tiny_backbone(mae, crop=16, out_indices=(0, 2, 3), rel_pos_bias=False, layer_scale=None, drop_path_rate=0.0):
    return vit_backbone_from_mae(mae, crop, out_indices, drop_path_rate, rel_pos_bias, layer_scale).eval()


def tiny_segmenter(mae, rel_pos_bias=True, aux_channels=8):
    return segmenter_from_mae(
        mae,
        num_classes=5,
        crop_size=24,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        rel_pos_bias=rel_pos_bias,
        layer_scale_init_value=1.0,
        rescales=(4, 2, 1, 0.5),
        channels=16,
        pool_scales=(1, 2, 3, 6),
        dropout=0.1,
        aux_channels=aux_channels,
        aux_in_index=2,
    )


def grid_part_resized(pos_embed: torch.Tensor, old: tuple[int, int], new: tuple[int, int], antialias: bool):
    """The reference's ``interpolate_pos_embed`` by hand: cls row kept, the grid resized bicubic."""
    grid = pos_embed[:, 1:].reshape(1, *old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False, antialias=antialias)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], -1)], dim=1)


@torch.no_grad()
def mae_block_outputs(mae: MaskedAutoencoderViT, images: torch.Tensor, pos_embed: torch.Tensor) -> list[torch.Tensor]:
    """The MAE's own blocks run by hand on all patches: each block's output without cls token, ``(N, D, h, w)``."""
    n, _, height, width = images.shape
    x = mae.patch_embed.proj(images).flatten(2).transpose(1, 2)
    x = torch.cat([mae.cls_token.expand(n, -1, -1), x], dim=1) + pos_embed
    outputs = []
    for block in mae.blocks:
        x = block(x)
        outputs.append(x[:, 1:].transpose(1, 2).reshape(n, WIDTH, height // PATCH, width // PATCH))
    return outputs


# -- backbone ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("crop", [16, (24, 32)])
def test_features_are_the_encoder_blocks_without_cls_token_or_final_norm(crop):
    mae = tiny_mae()
    backbone = tiny_backbone(mae, crop=crop, drop_path_rate=0.1)  # eval: no stochastic depth
    height, width = (crop, crop) if isinstance(crop, int) else crop
    grid = (height // PATCH, width // PATCH)
    images = torch.randn(2, 3, height, width)
    expected = mae_block_outputs(mae, images, grid_part_resized(mae.pos_embed, (4, 4), grid, antialias=False))
    with torch.no_grad():
        features = backbone(images)
    assert list(features) == ["block0", "block2", "block3"]
    for name, index in zip(features, (0, 2, 3)):
        assert features[name].shape == (2, WIDTH, *grid)
        torch.testing.assert_close(features[name], expected[index], atol=1e-5, rtol=1e-5)
    assert backbone.output_shape() == dict.fromkeys(features, (WIDTH, PATCH))


def test_position_embedding_is_resized_like_the_reference_and_becomes_trainable():
    mae = tiny_mae()
    backbone = tiny_backbone(mae, crop=(24, 32))
    expected = grid_part_resized(mae.pos_embed, (4, 4), (6, 8), antialias=False)
    assert torch.equal(backbone.vit.pos_embed.detach(), expected)
    assert backbone.vit.pos_embed.requires_grad and not mae.pos_embed.requires_grad
    # Not timm's default resample: antialiased bicubic gives other values.
    assert not torch.allclose(expected, grid_part_resized(mae.pos_embed, (4, 4), (6, 8), antialias=True))


def test_other_input_sizes_resample_the_crop_position_embedding_at_forward_time():
    mae = tiny_mae()
    backbone = tiny_backbone(mae, crop=16)
    images = torch.randn(1, 3, 24, 32)
    # timm's dynamic_img_size: bicubic with antialiasing, from the crop's table to the input's 6x8 grid.
    expected = mae_block_outputs(mae, images, grid_part_resized(mae.pos_embed, (4, 4), (6, 8), antialias=True))
    with torch.no_grad():
        features = backbone(images)
    torch.testing.assert_close(features["block3"], expected[3], atol=1e-5, rtol=1e-5)
    assert features["block0"].shape == (1, WIDTH, 6, 8)


def test_zero_relative_position_bias_changes_nothing_and_a_learned_one_does():
    mae = tiny_mae()
    plain, biased = tiny_backbone(mae), tiny_backbone(mae, rel_pos_bias=True)
    tables = [block.attn.relative_position_bias_table for block in biased.vit.blocks]
    assert all(t.shape == ((2 * 4 - 1) * (2 * 4 - 1) + 3, HEADS) and not t.any() and t.requires_grad for t in tables)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        reference, zero = plain(images), biased(images)
        for table in tables:
            table.normal_()
        learned = biased(images)
    for name in reference:
        torch.testing.assert_close(zero[name], reference[name], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(learned[name], reference[name], atol=1e-3)


def beit_relative_position_index(rows: int, cols: int) -> torch.Tensor:
    """BEiT's index written out pair by pair: 2-D offset of query minus key, then cls-to-patch, patch-to-cls and
    cls-to-cls as the last three entries."""
    size = (2 * rows - 1) * (2 * cols - 1) + 3
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    index = torch.empty(len(cells) + 1, len(cells) + 1, dtype=torch.long)
    index[0, :], index[:, 0], index[0, 0] = size - 3, size - 2, size - 1
    for i, (ri, ci) in enumerate(cells, start=1):
        for j, (rj, cj) in enumerate(cells, start=1):
            index[i, j] = (ri - rj + rows - 1) * (2 * cols - 1) + (ci - cj + cols - 1)
    return index


def test_relative_position_attention_adds_the_beit_bias_to_the_logits():
    torch.manual_seed(1)
    attn = RelativePositionAttention(8, 2, (2, 3), qkv_bias=True, attn_drop=0.0, proj_drop=0.0).eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    assert torch.equal(attn.relative_position_index, beit_relative_position_index(2, 3))
    x = torch.randn(2, 7, 8)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 2, 4).permute(2, 0, 3, 1, 4)
    bias = attn.relative_position_bias_table[beit_relative_position_index(2, 3)].permute(2, 0, 1)  # (heads, q, k)
    weights = (q @ k.transpose(-2, -1) * 4**-0.5 + bias).softmax(dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 7, 8))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_mae_weights_and_layer_scales_load_unchanged():
    mae = tiny_mae()
    backbone = tiny_backbone(mae, rel_pos_bias=True, layer_scale=1.0)
    state = backbone.vit.state_dict()
    for name, value in mae.encoder_state_dict().items():
        if not name.startswith("norm."):
            assert torch.equal(state[name], value), name
    gammas = [p for n, p in backbone.vit.named_parameters() if n.endswith("gamma")]
    assert len(gammas) == 2 * 4 and all(torch.equal(g, torch.ones(WIDTH)) and g.requires_grad for g in gammas)
    images = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(backbone(images)["block3"], tiny_backbone(mae)(images)["block3"])


def test_blocks_after_the_last_output_are_pruned():
    backbone = tiny_backbone(tiny_mae(), out_indices=(0, 1))
    assert len(backbone.vit.blocks) == 2


@pytest.mark.parametrize(
    ("kwargs", "images", "message"),
    [
        (dict(crop=18), None, "crop_size=18x18 is not divisible by the patch size 4"),
        (dict(out_indices=(2, 1)), None, r"out_indices=\[2, 1\] must be increasing block indices in \[0, 4\)"),
        (dict(out_indices=(0, 4)), None, r"out_indices=\[0, 4\] must be increasing"),
        (dict(drop_path_rate=1.0), None, r"drop_path_rate=1.0 is outside \[0, 1\)"),
        (dict(layer_scale=0.0), None, "layer_scale_init_value=0.0 must be positive"),
        ({}, torch.zeros(1, 3, 18, 16), "image size 18x16 is not divisible by the patch size 4"),
        ({}, torch.zeros(1, 1, 16, 16), r"images have shape \(1, 1, 16, 16\), expected \(N, 3, H, W\)"),
        (
            dict(rel_pos_bias=True),
            torch.zeros(1, 3, 24, 24),
            "image size 24x24 gives a 6x6 grid; the relative position bias is for the crop's 4x4 grid",
        ),
    ],
)
def test_backbone_refuses_bad_arguments_in_one_line(kwargs, images, message):
    with pytest.raises(ValueError, match=message) as error:
        tiny_backbone(tiny_mae(), **kwargs)(images)
    assert "\n" not in str(error.value)


# -- neck ----------------------------------------------------------------------------------------------------


def test_pyramid_has_strides_4_8_16_32_for_patch_16():
    torch.manual_seed(0)
    neck = FeatureToPyramid(8, (4, 2, 1, 0.5)).eval()
    maps = [torch.randn(2, 8, 4, 4) for _ in range(4)]  # a 64 px image in 16 px patches
    with torch.no_grad():
        levels = neck(maps)
    assert [tuple(level.shape) for level in levels] == [(2, 8, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4), (2, 8, 2, 2)]
    assert [64 // level.shape[-1] for level in levels] == [4, 8, 16, 32]
    up = neck.upsample_2x[0]
    torch.testing.assert_close(levels[1], F.conv_transpose2d(maps[1], up.weight, up.bias, stride=2))
    assert levels[2] is maps[2]
    assert torch.equal(levels[3], F.max_pool2d(maps[3], 2))
    first, bn, _, last = neck.upsample_4x  # mmseg's layout and names: upsample_4x.{0,1,3}, upsample_2x.0
    expected = F.conv_transpose2d(
        F.gelu(bn(F.conv_transpose2d(maps[0], first.weight, first.bias, stride=2))), last.weight, last.bias, stride=2
    )
    torch.testing.assert_close(levels[0], expected)


def test_pyramid_refuses_unknown_factors_and_wrong_input_counts():
    with pytest.raises(ValueError, match=r"rescales=\[4, 3\] must be distinct factors from \[4, 2, 1, 0.5, 0.25\]"):
        FeatureToPyramid(8, (4, 3))
    with pytest.raises(ValueError, match="got 1 feature maps for 2 rescale factors"):
        FeatureToPyramid(8, (2, 1))([torch.zeros(1, 8, 2, 2)])


# -- heads ---------------------------------------------------------------------------------------------------


def randomise_batchnorms(module: nn.Module) -> None:
    """Non-trivial eval-mode BatchNorms, so that a wrong wiring cannot hide behind identity normalisation."""
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.normal_()
                bn.bias.normal_()


def test_conv_bn_relu_is_mmcv_conv_module():
    torch.manual_seed(0)
    module = ConvBNReLU(64, 64, 3).eval()
    assert module.conv.bias is None and module.conv.padding == (1, 1)
    std = module.conv.weight.std().item()
    assert std == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)  # kaiming normal, fan_out, ReLU gain
    randomise_batchnorms(module)
    x = torch.randn(2, 64, 5, 5)
    bn = module.bn
    scaled = (F.conv2d(x, module.conv.weight, padding=1) - bn.running_mean[:, None, None]) / torch.sqrt(
        bn.running_var[:, None, None] + bn.eps
    )
    expected = torch.relu(scaled * bn.weight[:, None, None] + bn.bias[:, None, None])
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-5)


def mmseg_uper_forward(head: UPerHead, inputs: list[torch.Tensor]) -> torch.Tensor:
    """mmseg's ``UPerHead.forward`` (psp_forward, in-place top-down, fpn concat) transcribed over ``head``'s modules,
    in eval mode (no dropout)."""

    def resize(x, size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    laterals = [lateral_conv(inputs[i]) for i, lateral_conv in enumerate(head.lateral_convs)]
    x = inputs[-1]
    psp_outs = [x] + [resize(ppm(x), x.shape[2:]) for ppm in head.psp_modules]
    laterals.append(head.bottleneck(torch.cat(psp_outs, dim=1)))
    used_backbone_levels = len(laterals)
    for i in range(used_backbone_levels - 1, 0, -1):
        laterals[i - 1] += resize(laterals[i], laterals[i - 1].shape[2:])
    fpn_outs = [head.fpn_convs[i](laterals[i]) for i in range(used_backbone_levels - 1)]
    fpn_outs.append(laterals[-1])
    for i in range(used_backbone_levels - 1, 0, -1):
        fpn_outs[i] = resize(fpn_outs[i], fpn_outs[0].shape[2:])
    return head.conv_seg(head.fpn_bottleneck(torch.cat(fpn_outs, dim=1)))


def test_uper_head_computes_mmseg_uper_head():
    torch.manual_seed(0)
    head = UPerHead([3, 4, 5, 6], channels=8, num_classes=3, pool_scales=(1, 2, 3), dropout=0.1).eval()
    randomise_batchnorms(head)
    inputs = [torch.randn(2, c, s, s) for c, s in zip((3, 4, 5, 6), (16, 8, 4, 2))]
    with torch.no_grad():
        logits = head(inputs)
        torch.testing.assert_close(logits, mmseg_uper_forward(head, inputs), atol=1e-5, rtol=1e-5)
    assert logits.shape == (2, 3, 16, 16)
    names = set(head.state_dict())
    for name in (
        "psp_modules.2.1.conv.weight",
        "psp_modules.0.1.bn.running_var",
        "bottleneck.conv.weight",
        "lateral_convs.2.conv.weight",
        "fpn_convs.0.bn.weight",
        "fpn_bottleneck.conv.weight",
        "conv_seg.bias",
    ):
        assert name in names  # mmseg's parameter names
    assert head.bottleneck.conv.in_channels == 6 + 3 * 8 and head.fpn_bottleneck.conv.in_channels == 4 * 8
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1


def test_classifier_starts_normal_with_std_0_01_and_zero_bias():
    torch.manual_seed(0)
    head = UPerHead([64, 64], channels=64, num_classes=150, pool_scales=(1,), dropout=0.0)
    assert head.dropout is None and not head.conv_seg.bias.any()
    assert head.conv_seg.weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_fcn_head_classifies_its_pyramid_level():
    torch.manual_seed(0)
    head = FCNHead(6, 4, 3, num_convs=1, kernel_size=3, concat_input=False, dropout=0.1, in_index=2).eval()
    randomise_batchnorms(head)
    pyramid = [torch.randn(2, 6, s, s) for s in (16, 8, 4, 2)]
    with torch.no_grad():
        logits = head(pyramid)
        torch.testing.assert_close(logits, head.conv_seg(head.convs[0](pyramid[2])))
    assert logits.shape == (2, 3, 4, 4) and head.conv_cat is None and len(head.convs) == 1
    concat = FCNHead(6, 4, 3, num_convs=2, kernel_size=3, concat_input=True, dropout=0.0, in_index=-1).eval()
    assert concat(pyramid).shape == (2, 3, 2, 2) and concat.conv_cat.conv.in_channels == 6 + 4


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: UPerHead([4, 4], 4, 3, (1,), 1.0), r"dropout=1.0 is outside \[0, 1\)"),
        (lambda: UPerHead([4, 4], 4, 0, (1,), 0.1), "channels=4 and num_classes=0 must both be at least 1"),
        (lambda: UPerHead([4, 4], 4, 3, (), 0.1), r"pool_scales=\[\] must be a non-empty list"),
        (lambda: UPerHead([4], 4, 3, (1,), 0.1), r"in_channels=\[4\] must list at least two levels"),
        (lambda: FCNHead(4, 4, 3, 1, 2, False, 0.1, 2), "num_convs=1 must be at least 1 and kernel_size=2 odd"),
    ],
)
def test_heads_refuse_bad_arguments_in_one_line(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# -- segmenter -----------------------------------------------------------------------------------------------


def test_segmenter_logits_are_upsampled_to_the_input_and_aux_only_in_training():
    model = tiny_segmenter(tiny_mae())
    images = torch.randn(2, 3, 24, 24)
    out = model.train()(images)
    assert out.logits.shape == out.aux_logits.shape == (2, 5, 24, 24)
    with torch.no_grad():
        out = model.eval()(images)
        pyramid = model.neck(list(model.backbone(images).values()))
        expected = F.interpolate(model.decode_head(pyramid), size=(24, 24), mode="bilinear", align_corners=False)
    assert out.aux_logits is None
    torch.testing.assert_close(out.logits, expected)
    assert model.auxiliary_head.in_index == 2 and model.auxiliary_head.channels == 8
    assert tiny_segmenter(tiny_mae(), aux_channels=None).auxiliary_head is None


def test_segmenter_builder_refuses_mismatched_outputs_and_rescales():
    with pytest.raises(ValueError, match=r"out_indices=\[0, 1\] and rescales=\[4, 2, 1, 0.5\] must have equal"):
        segmenter_from_mae(tiny_mae(), 5, 24, (0, 1), 0.1, False, None, (4, 2, 1, 0.5), 16, (1,), 0.1, 8, 2)


# -- sliding-window inference --------------------------------------------------------------------------------


def position_dependent(crops: torch.Tensor) -> torch.Tensor:
    """Three logits per pixel that depend on where the pixel sits in its crop, not only on its value."""
    _, _, height, width = crops.shape
    rows = torch.arange(height, dtype=crops.dtype)[:, None]
    cols = torch.arange(width, dtype=crops.dtype)[None, :]
    ramp = 10 * rows + cols
    return torch.stack([crops[:, 0] + 100 * k + ramp for k in range(3)], dim=1)


@pytest.mark.parametrize("window", [(7, 10), (8, 16), 32])
def test_a_window_covering_the_image_is_one_forward_pass(window):
    images = torch.randn(2, 1, 7, 10)
    result = slide_inference(position_dependent, images, 3, window, stride=4, size_divisor=1)
    assert torch.equal(result, position_dependent(images))


def test_overlapping_windows_are_averaged_as_mmseg_places_them():
    images = torch.randn(1, 1, 7, 10)
    rows, cols = [(0, 4), (2, 6), (3, 7)], [(0, 4), (3, 7), (6, 10)]  # the last window moved back to the edge
    assert window_spans(7, 4, 2) == rows and window_spans(10, 4, 3) == cols
    expected = torch.empty(1, 3, 7, 10)
    for y in range(7):
        for x in range(10):
            for k in range(3):
                values = [
                    images[0, 0, y, x] + 100 * k + 10 * (y - top) + (x - left)
                    for top, bottom in rows
                    for left, right in cols
                    if top <= y < bottom and left <= x < right
                ]
                expected[0, k, y, x] = sum(values) / len(values)
    result = slide_inference(position_dependent, images, 3, window=4, stride=(2, 3), size_divisor=1)
    torch.testing.assert_close(result, expected)


@pytest.mark.parametrize(("size", "window", "stride"), [((5, 9), 3, 2), ((12, 7), (4, 8), (3, 5)), ((6, 6), 4, 1)])
def test_windows_cover_every_pixel(size, window, stride):
    images = torch.randn(1, 1, *size)
    result = slide_inference(lambda crops: torch.ones(1, 2, *crops.shape[2:]), images, 2, window, stride, 1)
    assert torch.equal(result, torch.ones(1, 2, *size))


def test_window_larger_than_the_image_takes_the_whole_side():
    assert window_spans(6, 8, 4) == [(0, 6)]
    seen = []
    images = torch.randn(1, 1, 6, 20)
    slide_inference(
        lambda crops: seen.append(crops.shape[2:]) or torch.zeros(1, 1, *crops.shape[2:]), images, 1, 8, 6, 2
    )
    assert seen == [(6, 8), (6, 8), (6, 8)]  # columns (0, 8), (6, 14), (12, 20)


def test_slide_inference_with_the_segmenter_feeds_crop_sized_windows():
    model = tiny_segmenter(tiny_mae()).eval()  # relative position bias on: only crop-sized inputs are taken
    images = torch.randn(1, 3, 24, 40)
    result = slide_inference(lambda crops: model(crops).logits, images, 5, window=24, stride=16, size_divisor=PATCH)
    assert result.shape == (1, 5, 24, 40)
    with torch.no_grad():
        torch.testing.assert_close(result[..., :16], model(images[..., :24]).logits[..., :16])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(stride=0), "stride=0 must be a positive side"),
        (dict(window=6), "window 6x6 over images of 8x8 gives crops whose sides are not all divisible by 4"),
        (dict(images=torch.zeros(1, 1, 6, 8)), "window 8x8 over images of 6x8 gives crops whose sides are not"),
        (dict(num_classes=3), r"model_fn returned logits of shape \(1, 2, 8, 8\), expected \(1, 3, 8, 8\)"),
    ],
)
def test_slide_inference_refuses_bad_arguments_in_one_line(kwargs, message):
    arguments = dict(images=torch.zeros(1, 1, 8, 8), num_classes=2, window=8, stride=4, size_divisor=4) | kwargs
    with pytest.raises(ValueError, match=message):
        slide_inference(lambda crops: torch.zeros(1, 2, *crops.shape[2:]), **arguments)


# -- ViT-B at the recipe's size ------------------------------------------------------------------------------


@pytest.mark.slow
def test_vit_base_upernet_trains_on_a_512_crop():
    """Forward and backward of the ADE20K recipe's model (ViT-B/16, 150 classes, relative position bias) at 512 px:
    1024 tokens per image. BatchNorms in eval mode: in training the 1x1 pooled map of one image has one value per
    channel (the recipe trains 2 images per GPU with SyncBN over 8)."""
    torch.manual_seed(0)
    model = segmenter_from_mae(
        mae_vit_base_patch16(), 150, 512, (3, 5, 7, 11), 0.1, True, 1.0, (4, 2, 1, 0.5), 768, (1, 2, 3, 6), 0.1, 256, 2
    ).train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    images, labels = torch.randn(1, 3, 512, 512), torch.randint(0, 150, (1, 512, 512))
    labels[:, :8] = 255
    start = time.perf_counter()
    out = model(images)
    loss = F.cross_entropy(out.logits, labels, ignore_index=255) + 0.4 * F.cross_entropy(
        out.aux_logits, labels, ignore_index=255
    )
    loss.backward()
    print(f"ViT-B UperNet forward + backward at 512x512, batch 1: {time.perf_counter() - start:.1f} s")
    assert out.logits.shape == out.aux_logits.shape == (1, 150, 512, 512) and torch.isfinite(loss)
    table = model.backbone.vit.blocks[0].attn.relative_position_bias_table
    assert table.shape == (63 * 63 + 3, 12) and table.grad is not None and table.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
