"""Checkpoints in and out: reference layouts, position-embedding interpolation, export to timm."""

import pytest
import timm
import torch

from mae.model_files.checkpoint import (
    CheckpointError,
    export_timm_encoder,
    interpolate_pos_embed,
    load_checkpoint_file,
    load_encoder_weights,
    model_state_dict,
)
from mae.model_files.loading import load_pretrained
from mae.models import MaskedAutoencoderViT, mae_vit_base_patch16
from mae.models.classifier import vit_classifier_from_mae
from mae.models.pos_embed import sincos_2d


def small(img_size: int = 16, **kwargs) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(
        img_size=img_size,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=4,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        **kwargs,
    )


def test_interpolation_keeps_cls_row_and_the_original_grid_at_the_original_size():
    table = torch.randn(1, 1 + 16, 8)
    assert interpolate_pos_embed(table, (4, 4)) is table
    resized = interpolate_pos_embed(table, (6, 6))
    assert resized.shape == (1, 1 + 36, 8)
    assert torch.equal(resized[:, 0], table[:, 0])
    # A smooth table (sin-cos) resized up and back down is close to the original.
    smooth = sincos_2d(8, 4).unsqueeze(0)
    back = interpolate_pos_embed(interpolate_pos_embed(smooth, (8, 8)), (4, 4))
    assert torch.allclose(back, smooth, atol=0.1)


def test_reference_pth_layouts_are_read(tmp_path):
    model = small()
    full = {"model": model.state_dict(), "optimizer": {}, "epoch": 3, "scaler": {}}
    encoder_only = {"model": model.encoder_state_dict()}
    lightning = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    for name, checkpoint in [("full", full), ("encoder", encoder_only), ("lightning", lightning)]:
        path = tmp_path / f"{name}.pth"
        torch.save(checkpoint, path)
        state = model_state_dict(load_checkpoint_file(path))
        target = small()
        missing, unexpected = load_encoder_weights(target, state, name, target.grid_size)
        assert unexpected == []
        assert torch.equal(target.blocks[1].mlp.fc2.weight, model.blocks[1].mlp.fc2.weight)
        if name == "encoder":
            assert "decoder_embed.weight" in missing and "mask_token" in missing
        else:
            assert missing == []


def test_unexpected_keys_are_reported_and_pos_embed_is_resized():
    source = small(img_size=16)
    state = dict(source.state_dict(), **{"head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10)})
    target = small(img_size=24)
    missing, unexpected = load_encoder_weights(target, state, "ft.pth", target.grid_size)
    assert unexpected == ["head.bias", "head.weight"]
    assert "decoder_pos_embed" in missing  # a different grid: the decoder table is not taken from the file
    assert target.pos_embed.shape == (1, 1 + 36, 32)
    assert torch.equal(target.pos_embed[:, 0], source.pos_embed[:, 0])


def test_shape_mismatch_names_key_and_both_shapes():
    wide = MaskedAutoencoderViT(
        img_size=16,
        patch_size=4,
        embed_dim=48,
        depth=2,
        num_heads=4,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    with pytest.raises(
        CheckpointError, match=r"wide.pth: cls_token has shape \(1, 1, 48\), this model expects \(1, 1, 32\)"
    ):
        load_encoder_weights(small(), wide.state_dict(), "wide.pth", (4, 4))


def test_unreadable_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {bad}") as info:
        load_checkpoint_file(bad)
    assert "\n" not in str(info.value)


def test_exported_encoder_loads_into_timm_with_equal_features(tmp_path):
    model = mae_vit_base_patch16(img_size=64)
    path = export_timm_encoder(model, tmp_path / "encoder.pth")
    vit = timm.create_model("vit_base_patch16_224", img_size=64, num_classes=0, checkpoint_path=str(path))
    imgs = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(vit.forward_features(imgs), model.forward_features(imgs), atol=1e-5)


def encoder_equal(a: MaskedAutoencoderViT, b: MaskedAutoencoderViT, skip: tuple[str, ...] = ()) -> bool:
    sa, sb = a.encoder_state_dict(), b.encoder_state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith(skip))


def test_pretrained_weights_load_from_every_supported_layout(tmp_path, caplog):
    source = small()
    torch.nn.init.normal_(source.blocks[0].attn.qkv.weight)  # distinct from any fresh initialisation
    timm_vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=0
    )
    timm_vit.load_state_dict(source.encoder_state_dict())
    classifier = vit_classifier_from_mae(source, num_classes=5)  # the reference's fine-tuned layout: fc_norm, head
    layouts = {
        "full.pth": {"model": source.state_dict(), "epoch": 799},
        "encoder.pth": {"model": source.encoder_state_dict()},
        "timm.pth": timm_vit.state_dict(),
        "lightning_pretrain.ckpt": {"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}},
        "lightning_linprobe.ckpt": {
            "state_dict": {
                **{f"encoder.{k}": v for k, v in source.state_dict().items()},
                "head.1.weight": torch.zeros(5, 32),
            }
        },
        "finetuned.pth": {"model": classifier.state_dict()},
    }
    for name, checkpoint in layouts.items():
        torch.save(checkpoint, tmp_path / name)
        target = small()
        with caplog.at_level("WARNING", logger="mae.model_files.checkpoint"):
            caplog.clear()
            report = load_pretrained(target, tmp_path / name)
        if name == "finetuned.pth":  # global pooling replaced the final norm by fc_norm: reported by name
            assert report["missing"] == ["norm.bias", "norm.weight"] and "norm.bias" in caplog.text
            assert "head.weight" in report["unexpected"] and "fc_norm.weight" in report["unexpected"]
            assert encoder_equal(target, source, skip=("norm.",))
        else:
            assert report["missing"] == [], name
            assert encoder_equal(target, source), name


def test_a_checkpoint_without_encoder_weights_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(3)}}, path)
    with pytest.raises(
        CheckpointError, match=r"holds none of the encoder's weights \(it has keys backbone.conv1.weight\)"
    ):
        load_pretrained(small(), path)
