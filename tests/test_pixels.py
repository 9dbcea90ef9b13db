"""The raw-pixel baselines: kNN on pixels under the encoder's protocol, and the pixel "encoder" for the probe."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mae.evaluation.knn import knn_top1
from mae.evaluation.pixels import PixelEncoder, pixel_knn_top1, raw_pixels, standardize
from mae.training.linprobe_module import LinearProbeModule

MEAN, STD = (0.25,), (0.5,)


def normalised_loader(pixels: torch.Tensor, labels: torch.Tensor, batch_size: int = 7) -> DataLoader:
    """Serve ``pixels`` (in [0, 1]) as the data modules do: ``(pixel - mean) / std``."""
    return DataLoader(TensorDataset((pixels - MEAN[0]) / STD[0], labels), batch_size=batch_size)


def test_raw_pixels_undo_the_normalisation_and_flatten():
    pixels = torch.randint(0, 256, (10, 1, 4, 4)).float() / 255
    features, labels = raw_pixels(normalised_loader(pixels, torch.arange(10)), MEAN, STD)
    assert features.shape == (10, 16)
    torch.testing.assert_close(features, pixels.flatten(1))
    assert labels.tolist() == list(range(10))


def test_standardisation_uses_the_bank_statistics_only():
    generator = torch.Generator().manual_seed(0)
    bank = torch.rand(50, 6, generator=generator) * 3 + 1
    queries = torch.rand(5, 6, generator=generator)
    bank_std, query_std = standardize(bank, queries)
    torch.testing.assert_close(bank_std.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(bank_std.std(0), torch.ones(6))
    torch.testing.assert_close(query_std, (queries - bank.mean(0)) / bank.std(0))
    # Other queries change nothing about how the bank is scaled.
    torch.testing.assert_close(standardize(bank, queries * 10)[0], bank_std)


def test_constant_pixels_stay_finite():
    bank = torch.zeros(4, 3)
    bank[:, 1] = torch.tensor([0.0, 1.0, 0.0, 1.0])
    standardized, _ = standardize(bank, bank[:1])
    assert torch.isfinite(standardized).all() and standardized[:, 0].abs().max() == 0


def test_standardised_pixels_win_where_bright_uninformative_pixels_dominate_the_raw_cosine():
    # Pixels 0-19 are bright noise that carries nothing; pixels 20-39 hold the class in small contrasts. Raw cosine
    # similarity follows the noise; per-pixel standardisation gives the informative pixels their weight back.
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 2
    pixels = torch.zeros(400, 1, 1, 40)
    pixels[:, 0, 0, :20] = 0.5 + 0.5 * torch.rand(400, 20, generator=generator)
    pixels[:, 0, 0, 20:] = 0.05 * labels.view(-1, 1) + 0.01 * torch.rand(400, 20, generator=generator)
    train, val = normalised_loader(pixels[:300], labels[:300]), normalised_loader(pixels[300:], labels[300:])
    scores = pixel_knn_top1(train, val, num_classes=2, mean=MEAN, std=STD, k=5, temperature=0.07)
    assert set(scores) == {"raw", "standardized"}
    assert scores["standardized"] > 0.95 and scores["raw"] < 0.8


def test_pixel_knn_is_knn_on_the_normalised_raw_pixels():
    generator = torch.Generator().manual_seed(1)
    pixels, labels = torch.rand(40, 1, 3, 3, generator=generator), torch.randint(0, 3, (40,), generator=generator)
    train, val = normalised_loader(pixels[:30], labels[:30]), normalised_loader(pixels[30:], labels[30:])
    expected = knn_top1(
        torch.nn.functional.normalize(pixels[:30].flatten(1), dim=1),
        labels[:30],
        torch.nn.functional.normalize(pixels[30:].flatten(1), dim=1),
        labels[30:],
        3,
        k=4,
        temperature=0.5,
    )
    assert pixel_knn_top1(train, val, 3, MEAN, STD, k=4, temperature=0.5)["raw"] == pytest.approx(expected)


def test_pixel_encoder_gives_the_image_as_cls_and_patch_token():
    imgs = torch.randn(3, 1, 4, 4)
    tokens = PixelEncoder(img_size=4, in_chans=1).forward_features(imgs)
    assert tokens.shape == (3, 2, 16)
    torch.testing.assert_close(tokens[:, 0], imgs.flatten(1))
    torch.testing.assert_close(tokens[:, 1], imgs.flatten(1))
    with pytest.raises(ValueError, match="img_size=0"):
        PixelEncoder(img_size=0, in_chans=1)


def test_the_probe_takes_the_pixel_encoder_and_sees_every_pixel():
    module = LinearProbeModule(PixelEncoder(img_size=4, in_chans=1), num_classes=3, lr=1.0, epochs=1, warmup_epochs=0)
    assert module.head[1].in_features == 16
    assert list(module.encoder.parameters()) == []
