import math

import torch

from mae.models.loss import denormalize_patches, masked_mse_loss, normalize_patches
from mae.models.pos_embed import sincos_2d


def test_cls_row_is_zero_and_table_shape():
    table = sincos_2d(16, 3)
    assert table.shape == (1 + 9, 16)
    assert torch.count_nonzero(table[0]) == 0


def test_first_half_encodes_column_second_half_row():
    dim, grid = 8, 4
    table = sincos_2d(dim, grid, cls_token=False).reshape(grid, grid, dim)
    # Along a row (fixed row index) only the first half changes; down a column only the second half.
    assert torch.equal(table[2, :, 4:], table[2, :1, 4:].expand(grid, -1))
    assert not torch.equal(table[2, 0, :4], table[2, 1, :4])
    assert torch.equal(table[:, 1, :4], table[:1, 1, :4].expand(grid, -1))


def test_values_follow_the_sincos_formula():
    dim, grid = 16, 5
    table = sincos_2d(dim, grid, cls_token=False)
    half = dim // 2
    row, col = 3, 2
    token = table[row * grid + col]
    for i in range(half // 2):
        omega = 1.0 / 10000 ** (2 * i / half)
        assert math.isclose(token[i].item(), math.sin(col * omega), abs_tol=1e-6)
        assert math.isclose(token[half // 2 + i].item(), math.cos(col * omega), abs_tol=1e-6)
        assert math.isclose(token[half + i].item(), math.sin(row * omega), abs_tol=1e-6)
        assert math.isclose(token[half + half // 2 + i].item(), math.cos(row * omega), abs_tol=1e-6)


def test_norm_pix_uses_unbiased_variance_and_eps():
    patch = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])
    mean, var = patch.mean(), patch.var(unbiased=True)
    expected = (patch - mean) / torch.sqrt(var + 1e-6)
    assert torch.allclose(normalize_patches(patch), expected)
    assert torch.allclose(denormalize_patches(normalize_patches(patch), patch), patch, atol=1e-6)


def test_loss_averages_over_patch_vector_then_removed_patches_only():
    pred = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 3.0], [2.0, 2.0], [10.0, 10.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the visible third patch must not count
    # patch errors: (1 + 9) / 2 = 5 and (4 + 4) / 2 = 4 -> mean over removed = 4.5
    assert masked_mse_loss(pred, target, mask).item() == 4.5
