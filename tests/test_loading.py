"""mae.load_model from every supported source, and the safetensors exports (python -m mae.model_files.export)."""

import argparse
import json
import logging

import pytest
import timm
import torch
from extras import needs_extra

from mae.model_files.checkpoint import CheckpointError
from mae.model_files.export import main as export_main
from mae.model_files.export import save_mae, save_timm_classifier, save_timm_encoder
from mae.model_files.loading import architecture_from_weights, load_model, load_pretrained, model_architecture
from mae.model_files.stored_config import RUN_CONFIG_KEY
from mae.models import MaskedAutoencoderViT, mae_vit_tiny_patch7
from mae.models.classifier import vit_classifier_from_mae

IMAGES = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
NOISE = torch.rand(3, 16, generator=torch.Generator().manual_seed(1))


def trained_like(**kwargs) -> MaskedAutoencoderViT:
    """A 28 px, 1-channel tiny MAE whose weights differ from any fresh initialisation."""
    model = mae_vit_tiny_patch7(in_chans=1, **kwargs)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    return model.eval()


def assert_same_outputs(loaded: MaskedAutoencoderViT, source: MaskedAutoencoderViT) -> None:
    expected, got = source(IMAGES, noise=NOISE), loaded(IMAGES, noise=NOISE)
    assert torch.equal(got.pred, expected.pred) and torch.equal(got.loss, expected.loss)
    assert not loaded.training


def test_a_lightning_checkpoint_rebuilds_the_architecture_it_stores(tmp_path):
    source = trained_like(norm_pix_loss=True)
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
        RUN_CONFIG_KEY: {"model": {"_target_": "mae.models.mae_vit_tiny_patch7", "in_chans": 1, "norm_pix_loss": True}},
    }
    torch.save(checkpoint, tmp_path / "last.ckpt")
    loaded = load_model(tmp_path / "last.ckpt")
    assert loaded.norm_pix_loss  # from the file, not inferable from weights
    assert_same_outputs(loaded, source)
    assert not load_model(tmp_path / "last.ckpt", norm_pix_loss=False).norm_pix_loss  # overrides win


def test_a_reference_pretraining_file_names_its_preset(tmp_path):
    source = mae_vit_tiny_patch7(norm_pix_loss=True).eval()  # the preset's own 3 channels
    args = argparse.Namespace(model="mae_vit_tiny_patch7", norm_pix_loss=True, input_size=28)
    torch.save({"model": source.state_dict(), "args": args, "epoch": 799}, tmp_path / "checkpoint-799.pth")
    loaded = load_model(tmp_path / "checkpoint-799.pth")
    assert loaded.norm_pix_loss
    images = torch.randn(2, 3, 28, 28)
    assert torch.equal(loaded(images, noise=NOISE[:2]).loss, source(images, noise=NOISE[:2]).loss)


def test_weights_alone_imply_the_architecture_and_an_encoder_only_file_keeps_a_fresh_decoder(tmp_path, caplog):
    source = trained_like()
    assert architecture_from_weights(source.state_dict(), "x") == {
        key: value
        for key, value in model_architecture(source).items()
        if key not in ("mask_ratio", "norm_pix_loss", "layer_norm_eps")
    }
    torch.save({"model": source.encoder_state_dict()}, tmp_path / "encoder.pth")
    with caplog.at_level(logging.INFO, logger="mae.model_files.loading"):
        loaded = load_model(tmp_path / "encoder.pth", decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)
    assert "has no decoder weights" in caplog.text
    assert torch.equal(loaded.forward_features(IMAGES), source.forward_features(IMAGES))
    assert not torch.equal(loaded.decoder_pred.weight, source.decoder_pred.weight)


def test_a_fine_tuned_classifier_gives_its_encoder(tmp_path, caplog):
    source = trained_like()
    classifier = vit_classifier_from_mae(source, num_classes=5)  # the reference's fine-tuned layout: fc_norm, head
    torch.save({"model": classifier.state_dict()}, tmp_path / "finetuned.pth")
    loaded = load_model(tmp_path / "finetuned.pth", decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)
    assert torch.equal(loaded.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert "fine-tuned classifier" in caplog.text


def test_mae_export_is_safetensors_with_its_architecture_and_loads_without_unpickling(tmp_path, monkeypatch):
    source = trained_like(norm_pix_loss=True)
    path = save_mae(source, tmp_path / "mae.safetensors")
    config = json.loads((tmp_path / "mae.json").read_text())
    assert config["kind"] == "mae" and config["architecture"] == model_architecture(source)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a safetensors export was unpickled"))
    assert_same_outputs(load_model(path), source)


def test_timm_encoder_export_loads_in_timm_and_back(tmp_path):
    source = trained_like()
    path = save_timm_encoder(source, tmp_path / "encoder.safetensors")
    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=28, patch_size=7, in_chans=1, depth=6, num_classes=0, checkpoint_path=str(path)
    )
    torch.testing.assert_close(
        vit.eval().forward_features(IMAGES), source.forward_features(IMAGES), rtol=1e-5, atol=1e-5
    )
    (tmp_path / "encoder.json").unlink()  # without its config: the architecture comes from the weights
    loaded = load_model(path, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)
    assert torch.equal(loaded.forward_features(IMAGES), source.forward_features(IMAGES))


def test_bad_sources_are_one_line(tmp_path):
    torch.save({"model": trained_like().state_dict()}, tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path / "tiny.pth", embed_dim=96)
    assert str(error.value) == (
        f"checkpoint {tmp_path / 'tiny.pth'} (architecture from its weights): cls_token has "
        "shape (1, 1, 192), this model expects (1, 1, 96)"
    )
    odd = MaskedAutoencoderViT(
        img_size=28,
        patch_size=7,
        in_chans=1,
        embed_dim=40,
        depth=1,
        num_heads=5,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    torch.save(odd.state_dict(), tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="width 40 has no usual head count; pass num_heads=<heads>"):
        load_model(tmp_path / "odd.pth", decoder_num_heads=2)
    assert load_model(tmp_path / "odd.pth", num_heads=5, decoder_num_heads=2).blocks[0].attn.num_heads == 5
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pth")


def test_export_command(tmp_path, capsys):
    source = trained_like()
    torch.save({"model": source.state_dict()}, tmp_path / "full.pth")
    assert export_main(["mae", str(tmp_path / "full.pth"), str(tmp_path / "out.safetensors")]) == 0
    assert_same_outputs(load_model(tmp_path / "out.safetensors"), source)
    assert export_main(["timm", str(tmp_path / "full.pth"), str(tmp_path / "enc.pth"), "norm_pix_loss=true"]) == 0
    assert set(torch.load(tmp_path / "enc.pth", weights_only=True)) == set(source.encoder_state_dict())
    capsys.readouterr()
    assert export_main(["mae", str(tmp_path / "full.pth"), str(tmp_path / "out.bin")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'out.bin'} must end in .safetensors\n"
    assert export_main(["mae", str(tmp_path / "nothing.pth"), str(tmp_path / "x.safetensors")]) == 2


def test_a_transformers_directory_and_the_export_command_to_it(tmp_path):
    needs_extra("transformers", "hf")
    source = trained_like(norm_pix_loss=True)
    torch.save({"model": source.state_dict()}, tmp_path / "full.pth")
    assert export_main(["transformers", str(tmp_path / "full.pth"), str(tmp_path / "hf"), "norm_pix_loss=true"]) == 0
    assert {p.name for p in (tmp_path / "hf").iterdir()} >= {"config.json", "model.safetensors"}
    loaded = load_model(tmp_path / "hf")
    assert loaded.norm_pix_loss  # from config.json
    expected, got = source(IMAGES, noise=NOISE), loaded(IMAGES, noise=NOISE)
    torch.testing.assert_close(got.pred, expected.pred, rtol=0, atol=1e-5)


def test_a_classifier_export_gives_its_encoder_and_pretrained_reads_exports(tmp_path):
    source = trained_like()
    save_timm_classifier(vit_classifier_from_mae(source, num_classes=5), tmp_path / "classifier.safetensors")
    loaded = load_model(
        tmp_path / "classifier.safetensors", decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4
    )  # its JSON describes timm's ViT: the encoder comes from the weights
    assert torch.equal(loaded.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    save_mae(source, tmp_path / "mae.safetensors")
    fresh = mae_vit_tiny_patch7(in_chans=1)
    assert load_pretrained(fresh, tmp_path / "mae.safetensors") == {"missing": [], "unexpected": []}
    assert torch.equal(fresh.forward_features(IMAGES), source.forward_features(IMAGES))
