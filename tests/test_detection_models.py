"""Detection on the MAE encoder (mae.models.dense.vitdet, .detector): ViTDet's backbone against the plain encoder,
its window and relative-position options, the simple feature pyramid's shapes and strides, the exact anchors and
RoI scales, ViTDet's optimiser rules and schedule, and a ViT-B forward and backward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mae.models import MaskedAutoencoderViT, mae_vit_base_patch16
from mae.models.dense.detector import StrideAnchorGenerator, detector_from_mae, exact_roi_align
from mae.models.dense.vitdet import (
    LAST_FEATURE,
    ChannelLayerNorm,
    SimpleFeaturePyramid,
    ViTDetBackbone,
    vitdet_backbone_from_mae,
)
from mae.training.detection_module import DetectionModule
from mae.training.optim import warmup_step_lr

PATCH, WIDTH, HEADS, DEPTH = 4, 32, 2, 4


def tiny_mae(patch: int = PATCH) -> MaskedAutoencoderViT:
    """A 16 px MAE (4 x 4 patches); a random position table so that nothing is symmetric."""
    torch.manual_seed(0)
    mae = MaskedAutoencoderViT(
        img_size=4 * patch,
        patch_size=patch,
        in_chans=3,
        embed_dim=WIDTH,
        depth=DEPTH,
        num_heads=HEADS,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    with torch.no_grad():
        mae.pos_embed.normal_()
    return mae


def plain_encoder_features(mae: MaskedAutoencoderViT, images: torch.Tensor) -> torch.Tensor:
    """The MAE encoder's blocks on the patch tokens alone (no cls token, no final norm, no masking), the position
    table interpolated as Detectron2's get_abs_pos does: ``(N, D, h, w)``."""
    tokens = mae.patch_embed.proj(images).flatten(2).transpose(1, 2)  # (N, L, D), any grid
    n, _, dim = tokens.shape
    rows, cols = images.shape[-2] // mae.patch_size, images.shape[-1] // mae.patch_size
    table = mae.pos_embed[:, 1:].reshape(1, *mae.grid_size, dim).permute(0, 3, 1, 2)
    if (rows, cols) != tuple(mae.grid_size):
        table = F.interpolate(table, size=(rows, cols), mode="bicubic", align_corners=False)
    x = tokens + table.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    for block in mae.blocks:
        x = block(x)
    return x.transpose(1, 2).reshape(n, dim, rows, cols)


@pytest.mark.parametrize("size", [16, 24])
def test_backbone_with_options_off_is_the_plain_encoder(size):
    mae = tiny_mae()
    backbone = vitdet_backbone_from_mae(mae, size, 0.0, window_size=0, global_blocks=(), rel_pos=False).eval()
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = backbone(images)
        expected = plain_encoder_features(mae.eval(), images)
    assert list(features) == [LAST_FEATURE]
    torch.testing.assert_close(features[LAST_FEATURE], expected, rtol=1e-5, atol=1e-5)


def test_weights_load_unchanged_and_the_new_tables_start_at_zero():
    mae = tiny_mae()
    backbone = vitdet_backbone_from_mae(mae, 32, 0.1, window_size=4, global_blocks=(1, 3), rel_pos=True)
    encoder = mae.encoder_state_dict()
    state = backbone.state_dict()
    for name in (
        "patch_embed.proj.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.3.mlp.fc2.bias",
        "blocks.2.norm1.weight",
    ):
        torch.testing.assert_close(state[name], encoder[name])
    torch.testing.assert_close(state["pos_embed"], encoder["pos_embed"][:, 1:])
    assert "cls_token" not in state and not any(name.startswith("norm.") for name in state)
    tables = [name for name in state if name.endswith((".rel_pos_h", ".rel_pos_w"))]
    assert len(tables) == 2 * DEPTH and all(not state[name].any() for name in tables)
    # Windowed blocks' tables are for the window (2 x 4 - 1 offsets), global blocks' for the 8 x 8 grid.
    assert state["blocks.0.attn.rel_pos_h"].shape[0] == 7 and state["blocks.1.attn.rel_pos_h"].shape[0] == 15
    assert [block.window_size for block in backbone.blocks] == [4, 0, 4, 0]


def test_windows_and_relative_positions_change_the_features_only_where_they_should():
    mae = tiny_mae()
    images = torch.randn(1, 3, 32, 32)
    plain = vitdet_backbone_from_mae(mae, 32, 0.0, 0, (), False).eval()
    zero_tables = vitdet_backbone_from_mae(mae, 32, 0.0, 0, (), True).eval()
    windowed = vitdet_backbone_from_mae(mae, 32, 0.0, 4, (3,), False).eval()
    with torch.no_grad():
        base = plain(images)[LAST_FEATURE]
        torch.testing.assert_close(zero_tables(images)[LAST_FEATURE], base, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(windowed(images)[LAST_FEATURE], base, atol=1e-3)
        zero_tables.blocks[0].attn.rel_pos_h.normal_()
        assert not torch.allclose(zero_tables(images)[LAST_FEATURE], base, atol=1e-3)


def test_a_windowed_block_sees_nothing_outside_its_window():
    mae = tiny_mae()
    backbone = ViTDetBackbone(32, PATCH, 3, WIDTH, 1, HEADS, 4.0, (4, 4), 0.0, 4, (), False, 1e-6).eval()
    images = torch.randn(1, 3, 32, 32)
    changed = images.clone()
    changed[..., 16:, 16:] += 1.0  # the bottom-right window of 4 x 4 patches only
    with torch.no_grad():
        before, after = backbone(images)[LAST_FEATURE], backbone(changed)[LAST_FEATURE]
    assert torch.equal(before[..., :4, :], after[..., :4, :]) and torch.equal(before[..., :, :4], after[..., :, :4])
    assert not torch.equal(before[..., 4:, 4:], after[..., 4:, 4:])
    del mae


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"window_size": -1}, "window_size=-1"),
        ({"global_blocks": (4,)}, r"global_blocks=\[4\] must be distinct block indices in \[0, 4\)"),
        ({"drop_path_rate": 1.0}, "drop_path_rate=1.0"),
    ],
)
def test_backbone_refuses_bad_arguments_in_one_line(kwargs, message):
    arguments = {"drop_path_rate": 0.0, "window_size": 0, "global_blocks": (), "rel_pos": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        vitdet_backbone_from_mae(tiny_mae(), 16, **arguments)


@pytest.mark.parametrize("patch, strides", [(16, [4, 8, 16, 32, 64]), (7, [1.75, 3.5, 7, 14, 28])])
def test_pyramid_levels_have_vitdet_shapes_and_exact_strides(patch, strides):
    backbone = ViTDetBackbone(8 * patch, patch, 3, WIDTH, 1, HEADS, 4.0, (4, 4), 0.0, 0, (), False, 1e-6)
    pyramid = SimpleFeaturePyramid(backbone, 16, (4, 2, 1, 0.5), extra_level=True)
    assert dict(pyramid.strides) == dict(zip(["p2", "p3", "p4", "p5", "p6"], strides))
    maps = pyramid(torch.randn(2, 3, 8 * patch, 8 * patch))
    assert list(maps) == ["p2", "p3", "p4", "p5", "p6"]
    assert [tuple(m.shape) for m in maps.values()] == [(2, 16, side, side) for side in (32, 16, 8, 4, 2)]
    assert pyramid.out_channels == 16


def test_pyramid_stages_are_vitdet_layers():
    backbone = ViTDetBackbone(64, 16, 3, WIDTH, 1, HEADS, 4.0, (4, 4), 0.0, 0, (), False, 1e-6)
    pyramid = SimpleFeaturePyramid(backbone, 16, (4, 2, 1, 0.5), extra_level=False)
    up4, up2, same, down = pyramid.stages
    assert [type(layer) for layer in up4[:4]] == [nn.ConvTranspose2d, ChannelLayerNorm, nn.GELU, nn.ConvTranspose2d]
    assert up4[0].out_channels == WIDTH // 2 and up4[3].out_channels == WIDTH // 4
    assert up2[0].out_channels == WIDTH // 2 and isinstance(down[0], nn.MaxPool2d)
    # Every level ends with 1x1 conv, LN, 3x3 conv, LN; the convolutions have no bias (a norm follows).
    for stage in pyramid.stages:
        conv1, norm1, conv3, norm3 = stage[-4:]
        assert conv1.kernel_size == (1, 1) and conv3.kernel_size == (3, 3) and conv1.bias is None
        assert isinstance(norm1, ChannelLayerNorm) and isinstance(norm3, ChannelLayerNorm)
    assert len(same) == 4


def test_channel_layer_norm_normalises_each_position_over_channels():
    norm = ChannelLayerNorm(6)
    x = torch.randn(2, 6, 3, 5)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,)).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), expected)


def test_pyramid_refuses_other_scale_factors():
    backbone = ViTDetBackbone(32, PATCH, 3, WIDTH, 1, HEADS, 4.0, (4, 4), 0.0, 0, (), False, 1e-6)
    with pytest.raises(ValueError, match=r"scale_factors=\[4.0, 1.0\] must be consecutive halvings"):
        SimpleFeaturePyramid(backbone, 8, (4, 1), extra_level=True)


def test_anchors_sit_at_the_exact_fractional_strides():
    generator = StrideAnchorGenerator((8.0,), (1.0,), (1.75,))
    maps = [torch.zeros(1, 1, 4, 4)]
    images = type("Images", (), {"image_sizes": [(7, 7)], "tensors": torch.zeros(1, 1, 7, 7)})()
    anchors = generator(images, maps)[0]
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    expected = torch.tensor([[1.75 * x, 1.75 * y] for y in range(4) for x in range(4)])
    torch.testing.assert_close(centres, expected)
    torch.testing.assert_close(anchors[:, 2] - anchors[:, 0], torch.full((16,), 8.0))


def test_roi_pooling_uses_exact_scales_and_fpn_levels():
    pooler = exact_roi_align(["p2", "p3", "p4", "p5"], [1.75, 3.5, 7.0, 14.0], 7, canonical_scale=98)
    assert pooler.scales == [1 / 1.75, 1 / 3.5, 1 / 7, 1 / 14]
    # FPN's rule: floor(4 + log2(side / 98)), clamped to levels 2-5, as indices from 0.
    boxes = [torch.tensor([[0.0, 0, 20, 20], [0, 0, 98, 98], [0, 0, 200, 200], [0, 0, 49, 49]])]
    assert pooler.map_levels(boxes).tolist() == [0, 2, 3, 1]


def test_detector_trains_and_predicts_at_original_sizes():
    mae = tiny_mae()
    detector = detector_from_mae(
        mae,
        3,
        32,
        0.1,
        4,
        (3,),
        True,
        16,
        (4, 2, 1, 0.5),
        (8, 16, 32, 64, 128),
        56,
        2,
        (16,) * 2,
        (32,),
        (16,) * 2,
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        {"rpn_pre_nms_top_n_train": 50, "rpn_post_nms_top_n_train": 20},
    )
    masks = torch.zeros(2, 32, 32, dtype=torch.uint8)
    masks[0, 2:12, 3:15], masks[1, 16:30, 10:28] = 1, 1
    target = {
        "boxes": torch.tensor([[3.0, 2, 15, 12], [10, 16, 28, 30]]),
        "labels": torch.tensor([1, 3]),
        "masks": masks,
    }
    detector.train()
    losses = detector([torch.rand(3, 32, 32)] * 2, [target] * 2)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert detector.backbone.net.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    detector.eval()
    with torch.no_grad():
        output = detector([torch.rand(3, 20, 28)])[0]
    assert output["masks"].shape[-2:] == (20, 28) and output["boxes"].shape[1] == 4
    assert output["labels"].lt(4).all()


def test_optimizer_follows_vitdet_layer_decay_and_decay_rule():
    mae = tiny_mae()
    module = DetectionModule.from_encoder(
        mae,
        num_classes=2,
        image_size=32,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        drop_path_rate=0.0,
        window_size=0,
        global_blocks=[],
        rel_pos=True,
        out_channels=8,
        scale_factors=[4, 2, 1, 0.5],
        anchor_sizes=[8, 16, 32, 64, 128],
        canonical_scale=56,
        rpn_conv_depth=1,
        box_convs=[8],
        box_fc=[16],
        mask_convs=[8],
        detector_settings={},
        lr=1e-4,
        weight_decay=0.1,
        layer_decay=0.7,
        betas=(0.9, 0.999),
        warmup_steps=2,
        warmup_factor=0.001,
        total_steps=10,
        milestones=[0.5, 0.8],
        gamma=0.1,
        cosine=False,
        min_lr=0.0,
        seed=0,
        fused=False,
        compile=False,
    )
    optimizer = module.configure_optimizers()["optimizer"]
    by_param = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    vit = module.vit
    num_layers = DEPTH + 1

    def scale(param):
        return by_param[id(param)]["initial_lr"] / 1e-4

    # Detectron2's get_vit_lr_decay_rate: embeddings layer 0, block i layer i + 1, the rest (pyramid, heads) 1.
    assert math.isclose(scale(vit.pos_embed), 0.7**num_layers)
    assert math.isclose(scale(vit.patch_embed.proj.weight), 0.7**num_layers)
    assert math.isclose(scale(vit.blocks[2].attn.qkv.weight), 0.7 ** (num_layers - 3))
    assert math.isclose(scale(module.model.rpn.head.cls_logits.weight), 1.0)
    # Weight decay on weights and biases, none on norm layers and the position embedding.
    assert by_param[id(vit.blocks[0].attn.qkv.bias)]["weight_decay"] == 0.1
    assert by_param[id(vit.blocks[0].attn.rel_pos_h)]["weight_decay"] == 0.1
    assert by_param[id(vit.blocks[0].norm1.weight)]["weight_decay"] == 0.0
    assert by_param[id(vit.pos_embed)]["weight_decay"] == 0.0
    stage_norm = module.model.backbone.stages[0][-1]
    assert by_param[id(stage_norm.weight)]["weight_decay"] == 0.0
    assert len(by_param) == sum(1 for p in module.model.parameters() if p.requires_grad)


def test_schedule_is_detectron2_warmup_then_steps():
    lr = 1e-4
    values = [
        warmup_step_lr(s, lr, 250, 0.001, 184375, [163889 / 184375, 177546 / 184375], 0.1, False, 0.0)
        for s in (0, 125, 250, 163888, 163889, 177546)
    ]
    assert values[0] == pytest.approx(lr * 0.001)
    assert values[1] == pytest.approx(lr * (0.001 + 0.999 * 0.5))
    assert values[2:] == pytest.approx([lr, lr, lr * 0.1, lr * 0.01])
    cosine = [warmup_step_lr(s, lr, 10, 0.001, 100, [], 0.1, True, 0.0) for s in (0, 10, 50, 100)]
    assert cosine[0] == pytest.approx(0.001 * lr)
    assert cosine[1:] == pytest.approx([lr * 0.5 * (1 + math.cos(math.pi * 0.1)), lr * 0.5, 0.0])


@pytest.mark.slow
def test_vit_base_mask_rcnn_trains_at_a_reduced_size():
    """ViTDet's ViT-B Mask R-CNN (windows 14, global blocks 2, 5, 8, 11, relative positions, 256 channels) on two
    448 px images: a forward and backward on the CPU (1024 px needs more memory than tests should take)."""
    torch.manual_seed(0)
    mae = mae_vit_base_patch16(img_size=224)
    detector = detector_from_mae(
        mae,
        80,
        448,
        0.1,
        14,
        (2, 5, 8, 11),
        True,
        256,
        (4, 2, 1, 0.5),
        (32, 64, 128, 256, 512),
        224,
        2,
        (256,) * 4,
        (1024,),
        (256,) * 4,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        {"rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100, "box_batch_size_per_image": 64},
    ).train()
    masks = torch.zeros(1, 448, 448, dtype=torch.uint8)
    masks[0, 100:300, 50:250] = 1
    target = {"boxes": torch.tensor([[50.0, 100, 250, 300]]), "labels": torch.tensor([7]), "masks": masks}
    losses = detector([torch.rand(3, 448, 448)] * 2, [target] * 2)
    sum(losses.values()).backward()
    assert all(torch.isfinite(value) for value in losses.values())
    assert detector.backbone.net.blocks[0].attn.rel_pos_h.grad is not None
    assert detector.backbone.net.blocks[0].attn.rel_pos_h.shape == (27, 64)  # window 14: 2 x 14 - 1 offsets
    assert detector.backbone.net.blocks[2].attn.rel_pos_h.shape == (55, 64)  # global at 28 x 28 patches
