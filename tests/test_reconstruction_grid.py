"""Reconstruction views and grids: pixel-exact checks with a model whose prediction is known."""

import pytest
import torch
from PIL import Image

from mae.models import MaskedAutoencoderViT
from mae.models.loss import normalize_patches
from mae.evaluation.reconstruction_grid import (
    COLUMNS,
    denormalize_images,
    make_grid_image,
    reconstruct,
    save_reconstruction_grid,
)

PATCH = 4


def tiny_mae(in_chans: int = 1, **kwargs) -> MaskedAutoencoderViT:
    args = dict(img_size=8, patch_size=PATCH, in_chans=in_chans, embed_dim=16, depth=1, num_heads=2,
                decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2)
    return MaskedAutoencoderViT(**{**args, **kwargs})


def images(n: int = 3, channels: int = 1, seed: int = 0) -> torch.Tensor:
    # Offset away from 0, so that a zero pixel can only come from masking.
    return torch.rand(n, channels, 8, 8, generator=torch.Generator().manual_seed(seed)) + 0.5


def oracle(model: MaskedAutoencoderViT, imgs: torch.Tensor, monkeypatch) -> None:
    """Make the decoder predict exactly the model's training target for ``imgs`` (norm-pix or raw)."""
    monkeypatch.setattr(model, "forward_decoder", lambda latent, ids_restore: model.reconstruction_target(imgs))


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_a_perfect_prediction_reconstructs_the_original(monkeypatch, norm_pix_loss):
    model = tiny_mae(norm_pix_loss=norm_pix_loss)
    imgs = images()
    oracle(model, imgs, monkeypatch)
    views = reconstruct(model, imgs)
    assert torch.allclose(views.reconstruction, imgs, atol=1e-5)
    assert torch.allclose(views.pasted, imgs, atol=1e-5)
    if norm_pix_loss:
        # The raw prediction is far from the pixels: only the de-normalisation brings it back.
        raw = model.unpatchify(normalize_patches(model.patchify(imgs)))
        assert not torch.allclose(raw, imgs, atol=0.1)


def test_masked_view_zeroes_exactly_the_removed_patches():
    model = tiny_mae()
    imgs = images(n=5)
    noise = torch.rand(5, model.num_patches, generator=torch.Generator().manual_seed(1))
    views = reconstruct(model, imgs, noise=noise, mask_ratio=0.5)
    removed_patches = model.num_patches - int(model.num_patches * 0.5)
    assert int((views.masked == 0).sum()) == 5 * removed_patches * PATCH * PATCH
    patch_mask = model(imgs, mask_ratio=0.5, noise=noise).mask  # (N, L), 1 = removed
    zero_patches = (model.patchify(views.masked) == 0).all(dim=-1).float()
    assert torch.equal(zero_patches, patch_mask)
    assert torch.equal(views.mask.squeeze(1) == 1, views.masked.squeeze(1) == 0)


def test_pasted_keeps_visible_pixels_and_takes_the_rest_from_the_reconstruction():
    model = tiny_mae(in_chans=3)
    imgs = images(n=2, channels=3)
    views = reconstruct(model, imgs, noise=torch.rand(2, model.num_patches))
    removed = views.mask.expand_as(imgs).bool()
    assert removed.any() and (~removed).any()
    assert torch.equal(views.pasted[~removed], imgs[~removed])
    assert torch.equal(views.pasted[removed], views.reconstruction[removed])
    assert not torch.allclose(views.reconstruction, imgs, atol=0.1)  # an untrained decoder is far off


def test_same_noise_same_views_and_training_mode_is_restored():
    model = tiny_mae().train()
    imgs = images()
    noise = torch.rand(3, model.num_patches)
    first, second = reconstruct(model, imgs, noise=noise), reconstruct(model, imgs, noise=noise)
    assert all(torch.equal(a, b) for a, b in zip(first.columns(), second.columns()))
    assert model.training
    assert first.original.requires_grad is False and first.reconstruction.requires_grad is False


def test_denormalisation_inverts_the_dataset_normalisation_and_clamps():
    mean, std = (0.2, 0.5, 0.7), (0.3, 0.2, 0.1)
    pixels = torch.rand(2, 3, 4, 4)
    normalised = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(denormalize_images(normalised, mean, std), pixels, atol=1e-6)
    out_of_range = denormalize_images(torch.full((1, 3, 2, 2), 100.0), mean, std)
    assert out_of_range.max() == 1.0
    with pytest.raises(ValueError, match="3 channels"):
        denormalize_images(normalised, (0.5, 0.5), (0.5, 0.5))


@pytest.mark.parametrize("channels", [1, 3])
def test_grid_layout_rows_are_images_and_columns_are_views(channels):
    model = tiny_mae(in_chans=channels)
    imgs = images(n=3, channels=channels) - 0.5  # in [0, 1): mean 0, std 1 leaves them displayable as is
    views = reconstruct(model, imgs, noise=torch.rand(3, model.num_patches))
    mean, std = (0.0,) * channels, (1.0,) * channels
    grid = make_grid_image(views, mean, std, padding=2)
    assert grid.shape == (3, 3 * (8 + 2) + 2, len(COLUMNS) * (8 + 2) + 2)
    assert 0.0 <= grid.min() and grid.max() <= 1.0
    # Row 1 (second image), column 1 (masked view): its tile starts after one tile and two paddings.
    tile = grid[:, 12:20, 12:20]
    expected = views.masked[1].clamp(0, 1).expand(3, -1, -1)
    assert torch.allclose(tile, expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_is_written_with_the_grid_size(tmp_path, channels):
    model = tiny_mae(in_chans=channels).train()
    path = save_reconstruction_grid(model, images(n=3, channels=channels), tmp_path / "sub" / "grid.png",
                                    mean=(0.5,) * channels, std=(0.25,) * channels)
    assert path == tmp_path / "sub" / "grid.png" and path.is_file()
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == (4 * (8 + 2) + 2, 3 * (8 + 2) + 2)  # (width: 4 views, height: 3 images)
    assert model.training
