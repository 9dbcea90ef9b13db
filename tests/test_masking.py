import pytest
import torch

from mae.models.masking import num_kept, per_sample_noise, random_masking, seeded_noise
from mae.models.patches import patchify, unpatchify


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_unpatchify_inverts_patchify_for_any_channel_count(channels):
    imgs = torch.randn(2, channels, 12, 12)
    patches = patchify(imgs, 4)
    assert patches.shape == (2, 9, 4 * 4 * channels)
    assert torch.equal(unpatchify(patches, 4, channels), imgs)


def test_patch_vector_order_is_row_column_channel():
    imgs = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    first_patch = patchify(imgs, 2)[0, 0]
    # (row 0, col 0, c0), (row 0, col 0, c1), (row 0, col 1, c0), ...
    expected = torch.tensor([imgs[0, c, r, q] for r in range(2) for q in range(2) for c in range(2)])
    assert torch.equal(first_patch, expected)


def test_patches_are_in_raster_order():
    imgs = torch.zeros(1, 1, 4, 6)
    imgs[0, 0, 0:2, 2:4] = 1.0  # the second patch of the first row
    assert patchify(imgs, 2)[0].sum(dim=1).tolist() == [0, 4, 0, 0, 0, 0]


def test_patchify_rejects_indivisible_size():
    with pytest.raises(ValueError, match="not divisible by patch size 4"):
        patchify(torch.zeros(1, 3, 10, 10), 4)


@pytest.mark.parametrize(
    ("length", "ratio", "kept"),
    [(196, 0.75, 49), (49, 0.75, 12), (64, 0.75, 16), (256, 0.75, 64), (196, 0.5, 98), (196, 0.9, 19), (10, 0.0, 10)],
)
def test_number_of_kept_patches_truncates_like_the_reference(length, ratio, kept):
    assert num_kept(length, ratio) == kept


def test_mask_marks_removed_patches_and_keeps_smallest_noise():
    tokens = torch.arange(8, dtype=torch.float32).reshape(1, 8, 1).repeat(2, 1, 3)
    noise = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    kept, mask, ids_restore = random_masking(tokens, 0.75, noise)
    assert kept[0, :, 0].tolist() == [1.0, 3.0]  # the two smallest noise values, in ascending-noise order
    assert kept[1, :, 0].tolist() == [0.0, 1.0]
    assert mask.tolist() == [[1, 0, 1, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]]
    assert torch.equal(torch.gather(torch.argsort(noise, dim=1), 1, ids_restore), torch.arange(8).expand(2, 8))


def test_random_masking_draws_a_new_mask_without_noise():
    torch.manual_seed(0)
    tokens = torch.zeros(4, 196, 8)
    _, mask, _ = random_masking(tokens, 0.75)
    assert mask.sum(dim=1).tolist() == [147.0] * 4
    assert not torch.equal(mask[0], mask[1])


def test_random_masking_rejects_noise_of_wrong_shape():
    with pytest.raises(ValueError, match=r"noise has shape \(2, 5\), expected \(2, 8\)"):
        random_masking(torch.zeros(2, 8, 4), 0.5, torch.rand(2, 5))


def test_seeded_noise_is_fixed_by_the_seed_and_leaves_the_global_stream_alone():
    state = torch.get_rng_state()
    first, same, other = (seeded_noise(4, 16, seed) for seed in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), state)
    assert first.shape == (4, 16) and torch.equal(first, same) and not torch.equal(first, other)


def test_per_sample_noise_rows_depend_on_their_own_seed_only():
    together = per_sample_noise([11, 22, 33], 16)
    assert together.shape == (3, 16)
    assert torch.equal(per_sample_noise([33, 11], 16), together[[2, 0]])  # another batch, same rows
    assert not torch.equal(together[0], together[1])
    state = torch.get_rng_state()
    per_sample_noise([11], 16)
    assert torch.equal(torch.get_rng_state(), state)
    assert per_sample_noise([], 16).shape == (0, 16)
