"""Weighted kNN evaluation: the vote, its edge cases, feature extraction from the MAE encoder."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from mae.evaluation import (
    evaluate_encoder,
    extract_features,
    knn_predict,
    knn_top1,
    random_init_copy,
)
from mae.models import MaskedAutoencoderViT


def tiny_mae(**kwargs) -> MaskedAutoencoderViT:
    args = dict(
        img_size=8,
        patch_size=4,
        in_chans=1,
        embed_dim=16,
        depth=1,
        num_heads=2,
        decoder_embed_dim=8,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    return MaskedAutoencoderViT(**{**args, **kwargs})


def clusters(num_classes: int, per_class: int, dim: int = 32, spread: float = 0.05, seed: int = 0):
    """L2-normalised points scattered tightly around one random centre per class."""
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(num_classes, dim, generator=generator), dim=1)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    points = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return F.normalize(points, dim=1), labels


def image_loader(n: int = 12, batch_size: int = 5, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    imgs = torch.randn(n, 1, 8, 8, generator=generator)
    return DataLoader(TensorDataset(imgs, torch.arange(n) % 3), batch_size=batch_size)


def test_separable_clusters_are_classified_perfectly():
    train, train_labels = clusters(4, 25, seed=0)
    query, query_labels = clusters(4, 10, seed=0)
    query = F.normalize(query + 0.02 * torch.randn_like(query), dim=1)
    assert knn_top1(train, train_labels, query, query_labels, num_classes=4, k=10) == 1.0


def test_random_labels_score_near_chance():
    generator = torch.Generator().manual_seed(1)
    train = F.normalize(torch.randn(1000, 16, generator=generator), dim=1)
    query = F.normalize(torch.randn(2000, 16, generator=generator), dim=1)
    train_labels = torch.randint(0, 4, (1000,), generator=generator)
    query_labels = torch.randint(0, 4, (2000,), generator=generator)
    accuracy = knn_top1(train, train_labels, query, query_labels, num_classes=4, k=20)
    assert abs(accuracy - 0.25) < 0.05


def test_scores_follow_the_exponential_weighting():
    train = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    scores = knn_predict(train, labels, query, num_classes=3, k=3, temperature=0.5)
    sims = train @ query[0]
    weights = (sims / 0.5).exp()
    expected = torch.tensor([weights[0], weights[1] + weights[2], 0.0])
    # Scores are proportional to exp(sim / T) per query; only the ratios are fixed.
    assert torch.allclose(scores[0] / scores[0].sum(), expected / expected.sum(), atol=1e-6)


def _nearest_versus_majority():
    """A query whose nearest neighbour is class 0 while the two next nearest are class 1."""
    angles = torch.tensor([0.10, 0.30, -0.35, 2.0])
    train = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 1, 1, 0])
    return train, labels, torch.tensor([[1.0, 0.0]])


def test_tiny_temperature_is_the_nearest_neighbour_and_does_not_overflow():
    train, labels, query = _nearest_versus_majority()
    scores = knn_predict(train, labels, query, num_classes=2, k=3, temperature=1e-4)
    assert torch.isfinite(scores).all()
    assert scores.argmax(dim=1).item() == 0


def test_huge_temperature_is_the_majority_of_the_k_nearest():
    train, labels, query = _nearest_versus_majority()
    scores = knn_predict(train, labels, query, num_classes=2, k=3, temperature=1e4)
    assert scores.argmax(dim=1).item() == 1
    assert torch.allclose(scores[0], torch.tensor([1.0, 2.0]), atol=1e-3)  # one vote each, near-equal weights


def test_k_larger_than_the_training_set_is_clamped():
    train, train_labels = clusters(2, 3)
    query, _ = clusters(2, 4, seed=1)
    clamped = knn_predict(train, train_labels, query, num_classes=2, k=1000)
    assert torch.equal(clamped, knn_predict(train, train_labels, query, num_classes=2, k=6))


def test_chunking_does_not_change_the_scores():
    train, train_labels = clusters(3, 20)
    query, _ = clusters(3, 17, seed=2)
    whole = knn_predict(train, train_labels, query, num_classes=3, k=7)
    chunked = knn_predict(train, train_labels, query, num_classes=3, k=7, chunk_size=4)
    assert chunked.shape == (51, 3)
    # Equal up to float rounding: BLAS may sum a (4, D) @ (D, N) product in another order than a (51, D) one.
    assert torch.allclose(whole, chunked, rtol=1e-6, atol=1e-6)
    assert torch.equal(whole.argmax(dim=1), chunked.argmax(dim=1))


def test_top1_agrees_with_the_argmax_of_the_scores():
    train, train_labels = clusters(3, 10, spread=0.8)
    query, query_labels = clusters(3, 10, spread=0.8, seed=3)
    scores = knn_predict(train, train_labels, query, num_classes=3, k=5)
    expected = (scores.argmax(dim=1) == query_labels).float().mean().item()
    assert 0.0 < expected < 1.0  # a case where the two could disagree
    assert knn_top1(train, train_labels, query, query_labels, num_classes=3, k=5) == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=0), "k=0"),
        (dict(temperature=0.0), "temperature"),
        (dict(num_classes=2, labels_offset=5), "outside"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, message):
    train, train_labels = clusters(2, 3)
    train_labels = train_labels + kwargs.pop("labels_offset", 0)
    args = dict(num_classes=2, k=3, temperature=0.07) | kwargs
    with pytest.raises(ValueError, match=message) as error:
        knn_predict(train, train_labels, train, **args)
    assert "\n" not in str(error.value)


def test_features_pool_the_right_tokens_and_are_normalised():
    model = tiny_mae().eval()
    loader = image_loader()
    imgs, labels = loader.dataset.tensors
    with torch.no_grad():
        tokens = model.forward_features(imgs)
    cls, cls_labels = extract_features(model, loader, pool="cls")
    mean, _ = extract_features(model, loader, pool="mean")
    assert cls.shape == mean.shape == (12, 16) and cls.dtype == torch.float32
    assert torch.allclose(cls, F.normalize(tokens[:, 0], dim=1), atol=1e-6)
    assert torch.allclose(mean, F.normalize(tokens[:, 1:].mean(dim=1), dim=1), atol=1e-6)
    assert not torch.allclose(cls, mean, atol=1e-3)
    assert torch.equal(cls_labels, labels)
    assert torch.allclose(cls.norm(dim=1), torch.ones(12), atol=1e-6)


def test_invalid_pool_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"pool='max'.*'cls', 'mean'"):
        extract_features(tiny_mae(), image_loader(), pool="max")


def test_extraction_runs_in_eval_mode_and_restores_each_module_mode(monkeypatch):
    model = tiny_mae().train()
    model.blocks[0].eval()  # a submodule the caller froze on purpose must stay frozen
    seen = []
    original = model.forward_features
    monkeypatch.setattr(model, "forward_features", lambda imgs: (seen.append(model.training), original(imgs))[1])
    extract_features(model, image_loader())
    assert seen and not any(seen)
    assert model.training and model.decoder_blocks[0].training
    assert not model.blocks[0].training


def test_an_empty_loader_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        extract_features(tiny_mae(), [])


def test_evaluate_encoder_matches_the_pieces():
    model = tiny_mae()
    train, val = image_loader(seed=0), image_loader(n=9, seed=1)
    expected = knn_top1(
        *extract_features(model, train, "mean"),
        *extract_features(model, val, "mean"),
        num_classes=3,
        k=4,
        temperature=0.1,
    )
    accuracy = evaluate_encoder(model, train, val, num_classes=3, k=4, temperature=0.1, pool="mean")
    assert 0.0 <= accuracy <= 1.0 and accuracy == expected


def test_random_init_copy_is_a_seeded_fresh_model_that_leaves_everything_else_alone():
    model = tiny_mae()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)  # stands in for training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    baseline = random_init_copy(model, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(baseline.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert torch.equal(baseline.pos_embed, tiny_mae().pos_embed)  # the fixed sin-cos table, without the +1
    again = random_init_copy(model, seed=3)
    other = random_init_copy(model, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(baseline.parameters(), again.parameters()))
    assert not torch.equal(baseline.cls_token, other.cls_token)
