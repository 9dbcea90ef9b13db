"""Reconstruction views and grids: pixel-exact checks with a model whose prediction is known."""

import numpy as np
import pytest
import torch
from PIL import Image

from mae.evaluation.reconstruction_grid import (
    COLUMN_LABELS,
    COLUMNS,
    DEFAULT_MIN_CELL_SIZE,
    denormalize_images,
    header_row,
    make_grid_image,
    reconstruct,
    save_reconstruction_grid,
    upscale_factor,
)
from mae.models import MaskedAutoencoderViT
from mae.models.loss import normalize_patches

PATCH = 4


def tiny_mae(in_chans: int = 1, **kwargs) -> MaskedAutoencoderViT:
    args = dict(
        img_size=8,
        patch_size=PATCH,
        in_chans=in_chans,
        embed_dim=16,
        depth=1,
        num_heads=2,
        decoder_embed_dim=8,
        decoder_depth=1,
        decoder_num_heads=2,
    )
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
    grid = make_grid_image(views, mean, std, padding=2, min_cell_size=0, labels=False)
    assert grid.shape == (3, 3 * (8 + 2) + 2, len(COLUMNS) * (8 + 2) + 2)
    assert grid.min() >= 0.0 and grid.max() <= 1.0
    # Row 1 (second image), column 1 (masked view): its tile starts after one tile and two paddings.
    tile = grid[:, 12:20, 12:20]
    expected = views.masked[1].clamp(0, 1).expand(3, -1, -1)
    assert torch.allclose(tile, expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_is_written_with_the_grid_size(tmp_path, channels):
    model = tiny_mae(in_chans=channels).train()
    path = save_reconstruction_grid(
        model,
        images(n=3, channels=channels),
        tmp_path / "sub" / "grid.png",
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        min_cell_size=0,
        labels=False,
    )
    assert path == tmp_path / "sub" / "grid.png" and path.is_file()
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == (4 * (8 + 2) + 2, 3 * (8 + 2) + 2)  # (width: 4 views, height: 3 images)
    assert model.training


# -- readable grids: enlarged small images, labelled columns ---------------------------------------------------------
def header_height(cell: int, padding: int = 2) -> int:
    width = len(COLUMNS) * (cell + padding) + padding
    return header_row([COLUMN_LABELS[name] for name in COLUMNS], cell, padding, width).shape[1]


@pytest.mark.parametrize(
    ("height", "width", "min_cell_size", "factor"),
    [
        (28, 28, 112, 4),  # Fashion-MNIST: 112-pixel cells
        (32, 32, 112, 4),  # CIFAR: 128
        (8, 8, 112, 14),
        (30, 30, 112, 4),  # 120: the smallest whole factor reaching the minimum
        (28, 56, 112, 4),  # the shorter side counts
        (112, 112, 112, 1),
        (224, 224, 112, 1),  # large images are never shrunk or enlarged
        (28, 28, 0, 1),
    ],
)
def test_upscale_factor_is_the_smallest_whole_factor_reaching_the_minimum(height, width, min_cell_size, factor):
    assert upscale_factor(height, width, min_cell_size) == factor
    with pytest.raises(ValueError, match="min_cell_size=-1"):
        upscale_factor(height, width, -1)


def test_default_png_size_follows_the_upscale_rule(tmp_path):
    model = tiny_mae()
    path = save_reconstruction_grid(model, images(n=3), tmp_path / "grid.png", mean=(0.5,), std=(0.25,))
    cell = 8 * upscale_factor(8, 8, DEFAULT_MIN_CELL_SIZE)
    assert cell == 112
    with Image.open(path) as png:
        assert png.size == (4 * (cell + 2) + 2, header_height(cell) + 3 * (cell + 2) + 2)


def test_upscaling_is_nearest_neighbour_each_pixel_an_exact_block():
    model = tiny_mae()
    imgs = images(n=2) - 0.5
    views = reconstruct(model, imgs, noise=torch.rand(2, model.num_patches))
    native = make_grid_image(views, (0.0,), (1.0,), min_cell_size=0, labels=False)
    big = make_grid_image(views, (0.0,), (1.0,), min_cell_size=40, labels=False)  # 8 px -> 5x, 40-pixel cells
    k, pad = 5, 2
    for row in range(2):
        for column in range(len(COLUMNS)):
            tile = native[:, pad + row * (8 + pad) :][:, :8, pad + column * (8 + pad) :][:, :, :8]
            block = big[:, pad + row * (8 * k + pad) :][:, : 8 * k, pad + column * (8 * k + pad) :][:, :, : 8 * k]
            # Every k x k block is one source pixel: no smoothing, no shift.
            assert torch.equal(block, tile.repeat_interleave(k, dim=1).repeat_interleave(k, dim=2))
            assert torch.equal(block[:, ::k, ::k], tile)


def test_png_pixels_are_exact_blocks_after_saving(tmp_path):
    model = tiny_mae()
    path = save_reconstruction_grid(
        model, images(n=1), tmp_path / "grid.png", mean=(0.5,), std=(0.25,), min_cell_size=32, labels=False
    )  # 8 px -> 4x
    with Image.open(path) as png:
        pixels = torch.from_numpy(np.array(png.convert("L"))).long()
    original = pixels[2 : 2 + 32, 2 : 2 + 32]
    assert torch.equal(original, original[::4, ::4].repeat_interleave(4, 0).repeat_interleave(4, 1))
    assert len(original.unique()) > 1


def test_header_names_the_columns_above_the_grid():
    model = tiny_mae()
    views = reconstruct(model, images(n=2), noise=torch.rand(2, model.num_patches))
    plain = make_grid_image(views, (0.5,), (0.25,), labels=False)
    labelled = make_grid_image(views, (0.5,), (0.25,))
    height = header_height(112)
    assert height >= 10
    assert labelled.shape[1:] == (plain.shape[1] + height, plain.shape[2])
    assert torch.equal(labelled[:, height:], plain)  # the grid itself is untouched
    header = labelled[0, :height]
    assert header.max() == 1.0  # a white background...
    for column in range(len(COLUMNS)):  # ...with dark text over every column
        cell = header[:, 2 + column * (112 + 2) :][:, :112]
        assert (cell < 0.5).sum() > 20, COLUMNS[column]
    # The labels are what PIL draws for the column names: another text gives another header.
    other = header_row(["a", "b", "c", "d"], 112, 2, labelled.shape[2])
    assert not torch.equal(other[0], header)


def test_large_images_are_not_upscaled():
    model = tiny_mae(img_size=128, patch_size=32)
    imgs = torch.rand(2, 1, 128, 128)
    views = reconstruct(model, imgs, noise=torch.rand(2, model.num_patches))
    grid = make_grid_image(views, (0.0,), (1.0,), labels=False)  # the default minimum, 112 pixels
    assert grid.shape == (3, 2 * (128 + 2) + 2, len(COLUMNS) * (128 + 2) + 2)
    labelled = make_grid_image(views, (0.0,), (1.0,))
    assert labelled.shape[1] == grid.shape[1] + header_height(128)
