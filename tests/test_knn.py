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
)
from mae.evaluation.knn import random_init_model
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


FIXED_BY_CONSTRUCTION = {"pos_embed", "decoder_pos_embed"}
"""The MAE parameters that no seed changes: the sin-cos position tables, frozen (``requires_grad=False``) and
computed from the grid, so a trained model and its baseline rightly hold the same values."""


def trained_tiny_mae(**kwargs) -> MaskedAutoencoderViT:
    """A tiny MAE whose every learnable parameter, the patch projection's bias included, has moved off its
    initial value, as training would move it; the frozen tables stay as they are, as training leaves them."""
    model = tiny_mae(**kwargs)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.5)
    return model


def tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters()) | dict(model.named_buffers())


def test_the_frozen_parameters_are_exactly_the_ones_fixed_by_construction():
    frozen = {name for name, param in tiny_mae().named_parameters() if not param.requires_grad}
    assert frozen == FIXED_BY_CONSTRUCTION


def test_random_init_baseline_shares_and_keeps_nothing_of_the_trained_model():
    model = trained_tiny_mae().train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    baseline = random_init_model(model, seed=3)
    assert type(baseline) is MaskedAutoencoderViT and baseline is not model
    assert not any(module.training for module in baseline.modules())
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    trained, fresh = tensors(model), tensors(baseline)
    assert fresh.keys() == trained.keys()
    trained_storages = {tensor.untyped_storage().data_ptr() for tensor in trained.values()}
    assert not trained_storages & {tensor.untyped_storage().data_ptr() for tensor in fresh.values()}
    for name, param in baseline.named_parameters():
        assert torch.equal(param, trained[name]) == (name in FIXED_BY_CONSTRUCTION), name
    # What the old re-initialisation in place missed: the projection's bias is the Conv2d default again.
    bound = 1 / (model.patch_size**2 * model.in_chans) ** 0.5
    assert baseline.patch_embed.proj.bias.abs().max() <= bound < model.patch_embed.proj.bias.abs().min()


def test_random_init_baseline_is_the_architecture_built_from_the_seed():
    model = trained_tiny_mae(mlp_ratio=2.0, mask_ratio=0.5, norm_pix_loss=True, layer_norm_eps=1e-5)
    baseline = random_init_model(model, seed=3)
    assert baseline.init_kwargs == model.init_kwargs and baseline.norm_pix_loss and baseline.norm.eps == 1e-5
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        expected = tiny_mae(mlp_ratio=2.0, mask_ratio=0.5, norm_pix_loss=True, layer_norm_eps=1e-5)
    assert all(torch.equal(tensor, tensors(expected)[name]) for name, tensor in tensors(baseline).items())


def test_random_init_baseline_depends_on_the_seed_alone():
    model = trained_tiny_mae()
    baseline = tensors(random_init_model(model, seed=3))
    again = tensors(random_init_model(trained_tiny_mae(), seed=3))  # another trained model, the same seed
    other = tensors(random_init_model(model, seed=4))
    assert all(torch.equal(tensor, again[name]) for name, tensor in baseline.items())
    for name, tensor in baseline.items():
        if name not in FIXED_BY_CONSTRUCTION and tensor.unique().numel() > 1:  # not a constant (ones, zeros)
            assert not torch.equal(tensor, other[name]), name


def test_random_init_baseline_leaves_every_random_stream_alone(monkeypatch):
    def reseeds_a_gpu(*args, **kwargs):
        raise AssertionError("the baseline reseeded the GPU generators (torch.manual_seed does)")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeds_a_gpu)
    monkeypatch.setattr(torch.cuda, "manual_seed", reseeds_a_gpu)
    model = trained_tiny_mae()
    state = torch.get_rng_state()
    gpu_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    random_init_model(model, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(map(torch.equal, torch.cuda.get_rng_state_all() if gpu_states else [], gpu_states))


def test_random_init_baseline_of_a_compiled_model_is_a_plain_one():
    model = trained_tiny_mae()
    expected = tensors(random_init_model(model, seed=3))
    wrapped = torch.compile(model)  # an OptimizedModule around the model; nothing is compiled until called
    assert wrapped is not model
    baseline = random_init_model(wrapped, seed=3)
    assert type(baseline) is MaskedAutoencoderViT
    assert all(torch.equal(tensor, expected[name]) for name, tensor in tensors(baseline).items())
    model.compile()  # in place, as the pre-training module compiles: the same class, a compiled __call__
    in_place = random_init_model(model, seed=3)
    assert in_place._compiled_call_impl is None
    assert all(torch.equal(tensor, expected[name]) for name, tensor in tensors(in_place).items())


def test_random_init_baseline_takes_each_tensors_dtype_from_the_trained_model():
    model = trained_tiny_mae().to(torch.bfloat16)
    model.norm.float()  # a mixed-precision model: one module kept in float32
    reference = tensors(random_init_model(trained_tiny_mae(), seed=3))
    for name, tensor in tensors(random_init_model(model, seed=3)).items():
        assert tensor.dtype == (torch.float32 if name.startswith("norm.") else torch.bfloat16), name
        assert torch.equal(tensor, reference[name].to(tensor.dtype)), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_random_init_baseline_is_built_on_the_cpu_and_moved_to_the_models_gpu():
    reference = tensors(random_init_model(trained_tiny_mae(), seed=3))
    gpu_states = torch.cuda.get_rng_state_all()
    baseline = random_init_model(trained_tiny_mae().cuda(), seed=3)
    assert all(map(torch.equal, torch.cuda.get_rng_state_all(), gpu_states))
    for name, tensor in tensors(baseline).items():
        assert tensor.device.type == "cuda" and torch.equal(tensor.cpu(), reference[name]), name


def test_a_model_without_its_constructor_arguments_has_no_random_init_baseline():
    with pytest.raises(TypeError, match="Linear keeps no init_kwargs"):
        random_init_model(torch.nn.Linear(2, 2))
