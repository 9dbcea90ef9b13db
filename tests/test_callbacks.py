"""The reconstruction-grid and kNN callbacks, driven by a real tiny Trainer on synthetic two-class images."""

import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import mae.callbacks.knn as knn_callback_module
from mae.callbacks import KNNEvaluationCallback, ReconstructionGridCallback
from mae.callbacks.reconstruction import epoch_is_due
from mae.evaluation import random_init_model
from mae.evaluation.reconstruction_grid import COLUMN_LABELS, COLUMNS, header_row
from mae.models import MaskedAutoencoderViT

MEAN, STD = (0.5,), (0.5,)


def tiny_mae() -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(
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


def two_class_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 is bright on top, class 1 bright at the bottom, with a little noise; normalised like MEAN/STD."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    pixels = torch.zeros(n, 1, 8, 8)
    pixels[labels == 0, :, :4] = 1.0
    pixels[labels == 1, :, 4:] = 1.0
    pixels = (pixels + 0.1 * torch.randn(pixels.shape, generator=generator)).clamp(0, 1)
    return (pixels - MEAN[0]) / STD[0], labels


class FakeDataModule(L.LightningDataModule):
    """The datamodule interface the callbacks rely on, over in-memory synthetic images."""

    mean, std, num_classes = MEAN, STD, 2

    def __init__(self) -> None:
        super().__init__()
        self.train = TensorDataset(*two_class_images(32, seed=0))
        self.val = TensorDataset(*two_class_images(16, seed=1))
        self.test = TensorDataset(*two_class_images(16, seed=2))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=8, shuffle=True)

    def knn_dataloaders(self, split: str = "val") -> tuple[DataLoader, DataLoader]:
        queries = self.val if split == "val" else self.test
        return DataLoader(self.train, batch_size=16), DataLoader(queries, batch_size=16)

    def sample_images(self, n: int) -> torch.Tensor:
        return self.val.tensors[0][:n]


class TinyModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = tiny_mae()

    def training_step(self, batch, batch_idx):
        return self.model(batch[0]).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[dict, int | None]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.records.append((dict(metrics), step))


def fit(tmp_path, callbacks, max_epochs: int = 1, logger=False) -> tuple[L.Trainer, TinyModule]:
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )
    torch.manual_seed(0)  # the same tiny model whatever ran before (the kNN bound below depends on it)
    module = TinyModule()
    trainer.fit(module, datamodule=FakeDataModule())
    return trainer, module


def grid_size(rows: int) -> tuple[int, int]:
    """(width, height) of a PNG grid of 8x8 tiles enlarged 14x (to 112 pixels), 4 columns, padding 2, under a
    header row."""
    width = 4 * (112 + 2) + 2
    header = header_row([COLUMN_LABELS[name] for name in COLUMNS], 112, 2, width).shape[1]
    return width, header + rows * (112 + 2) + 2


# -- reconstruction grid -----------------------------------------------------------------------------------
def test_grid_written_every_n_epochs_and_at_the_end(tmp_path):
    callback = ReconstructionGridCallback(num_images=3, every_n_epochs=1, filename="recon")
    fit(tmp_path, [callback], max_epochs=2)
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == ["recon.png", "recon_epoch000.png", "recon_epoch001.png"]
    for name in written:
        with Image.open(tmp_path / name) as png:
            assert png.size == grid_size(3)
    assert callback.last_path == tmp_path / "recon.png"


def test_grid_only_at_the_end_by_default(tmp_path):
    fit(tmp_path, [ReconstructionGridCallback(num_images=2)])
    assert [p.name for p in tmp_path.glob("*.png")] == ["reconstruction.png"]
    with Image.open(tmp_path / "reconstruction.png") as png:
        assert png.size == grid_size(2)


def test_grid_at_the_images_own_size_without_labels(tmp_path):
    fit(tmp_path, [ReconstructionGridCallback(num_images=2, min_cell_size=0, labels=False)])
    with Image.open(tmp_path / "reconstruction.png") as png:
        assert png.size == (4 * (8 + 2) + 2, 2 * (8 + 2) + 2)


def test_epochs_due():
    assert [epoch for epoch in range(6) if epoch_is_due(3, epoch)] == [2, 5]
    assert not any(epoch_is_due(None, epoch) for epoch in range(6))


def fake_trainer(tmp_path, loggers=(), is_global_zero=True) -> SimpleNamespace:
    """One process, or rank 1 of two whose gather returns its own share twice (the values do not matter there)."""
    world = (
        SimpleNamespace(world_size=1, global_rank=0)
        if is_global_zero
        else SimpleNamespace(
            world_size=2, global_rank=1, strategy=SimpleNamespace(all_gather=lambda share: torch.stack([share, share]))
        )
    )
    return SimpleNamespace(
        is_global_zero=is_global_zero,
        datamodule=FakeDataModule(),
        default_root_dir=str(tmp_path),
        loggers=list(loggers),
        global_step=7,
        current_epoch=3,
        **vars(world),
    )


def test_grid_goes_to_wandb_and_leaves_the_global_rng_alone(tmp_path, monkeypatch):
    wandb = WandbLogger.__new__(WandbLogger)  # no run is started: only log_image is used
    calls = []
    monkeypatch.setattr(wandb, "log_image", lambda **kwargs: calls.append(kwargs), raising=False)
    trainer, module = fake_trainer(tmp_path, loggers=[RecordingLogger(), wandb]), TinyModule()
    state = torch.get_rng_state()
    ReconstructionGridCallback(num_images=2).on_train_end(trainer, module)
    assert torch.equal(torch.get_rng_state(), state)
    assert calls == [dict(key="reconstruction", images=[str(tmp_path / "reconstruction.png")], step=7)]


def test_only_rank_zero_writes(tmp_path):
    trainer = fake_trainer(tmp_path, is_global_zero=False)
    ReconstructionGridCallback().on_train_end(trainer, TinyModule())
    KNNEvaluationCallback().on_train_end(trainer, TinyModule())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ReconstructionGridCallback(num_images=0), "num_images=0"),
        (lambda: ReconstructionGridCallback(every_n_epochs=0), "every_n_epochs=0"),
        (lambda: ReconstructionGridCallback(filename="a/b"), "file stem"),
        (lambda: ReconstructionGridCallback(min_cell_size=-1), "min_cell_size=-1"),
        (lambda: KNNEvaluationCallback(pool="max"), "pool='max'"),
        (lambda: KNNEvaluationCallback(k=0), "k=0"),
        (lambda: KNNEvaluationCallback(temperature=-1.0), "temperature"),
    ],
)
def test_bad_settings_fail_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# -- kNN evaluation ----------------------------------------------------------------------------------------
def test_knn_results_are_printed_and_merged_into_results_json(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"kept": "yes", "knn_k": -1}))
    callback = KNNEvaluationCallback(k=5, pool="mean")
    fit(tmp_path, [callback])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["kept"] == "yes"
    assert results["knn_k"] == 5 and results["knn_pool"] == "mean" and results["epochs_trained"] == 1
    for key in ("knn_top1_pretrained", "knn_top1_random_init", "knn_top1_pixels_raw", "knn_top1_pixels_standardized"):
        assert 0.0 <= results[key] <= 1.0
    assert results["knn_top1_pixels"] == max(results["knn_top1_pixels_raw"], results["knn_top1_pixels_standardized"])
    assert results["knn_bank_size"] == 32 and results["knn_num_queries"] == 16 and results["knn_temperature"] == 0.07
    # Top and bottom brightness are easy to tell apart even for an encoder trained this little.
    assert results["knn_top1_pretrained"] >= 0.9
    assert {k: results[k] for k in callback.last_results} == callback.last_results
    out = capsys.readouterr().out
    assert f"kNN top-1 (k=5, mean features): pretrained {results['knn_top1_pretrained']:.2%} | random init" in out
    assert f"| raw pixels {results['knn_top1_pixels']:.2%} (raw {results['knn_top1_pixels_raw']:.2%}, " in out


def test_knn_without_baselines(tmp_path):
    callback = KNNEvaluationCallback(k=3, compare_random_init=False, compare_pixels=False, results_file="eval/knn.json")
    fit(tmp_path, [callback])
    results = json.loads((tmp_path / "eval" / "knn.json").read_text())
    assert "knn_top1_random_init" not in results and 0.0 <= results["knn_top1_pretrained"] <= 1.0
    assert not any(key.startswith("knn_top1_pixels") for key in results)


def test_knn_scores_a_random_copy_and_leaves_the_model_and_rng_alone(tmp_path, monkeypatch):
    callback = KNNEvaluationCallback(k=5)
    trainer, module = fit(tmp_path, [])
    scored = []
    real = knn_callback_module.sharded_features

    def spy(trainer, model, loader, *args, **kwargs):
        if loader.dataset is trainer.datamodule.train:  # the bank: once per scored model
            scored.append({k: v.clone() for k, v in model.state_dict().items()})
            scored[-1]["is_training_model"] = model is module.model
        return real(trainer, model, loader, *args, **kwargs)

    monkeypatch.setattr(knn_callback_module, "sharded_features", spy)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    module.model.train()
    state = torch.get_rng_state()
    callback.on_train_end(trainer, module)
    assert torch.equal(torch.get_rng_state(), state)
    assert module.model.training
    assert all(torch.equal(v, module.model.state_dict()[k]) for k, v in before.items())
    pretrained, baseline = scored
    assert pretrained.pop("is_training_model") and not baseline.pop("is_training_model")
    assert torch.equal(pretrained["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])
    assert not torch.equal(baseline["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])
    # The baseline is the architecture's initialisation drawn from the callback's seed.
    expected = random_init_model(module.model, seed=callback.seed).state_dict()
    assert all(torch.equal(baseline[k], v) for k, v in expected.items())
    assert set(callback.last_results) >= {"knn_top1_pretrained", "knn_top1_random_init"}


def test_knn_every_n_epochs_logs_to_every_logger(tmp_path):
    loggers = [RecordingLogger(), RecordingLogger()]
    trainer, _ = fit(tmp_path, [KNNEvaluationCallback(every_n_epochs=1, k=5)], max_epochs=2, logger=loggers)
    for logger in loggers:
        per_epoch = [(m["knn/top1"], step) for m, step in logger.records if "knn/top1" in m]
        assert [step for _, step in per_epoch] == [4, 8]  # 32 images / batch 8 = 4 steps an epoch
        assert all(0.0 <= value <= 1.0 for value, _ in per_epoch)
        final = [(m, step) for m, step in logger.records if "knn/top1_pretrained" in m]
        assert len(final) == 1 and final[0][1] == trainer.global_step
        assert 0.0 <= final[0][0]["knn/top1_random_init"] <= 1.0


def test_the_pixel_baseline_is_the_variant_better_on_validation_not_on_test(monkeypatch):
    """Raw pixels win on validation, standardised ones on test: the baseline's test number is the raw pixels'."""
    scores = {"val": {"raw": 0.80, "standardized": 0.70}, "test": {"raw": 0.60, "standardized": 0.90}}
    datamodule = FakeDataModule()
    calls = []

    def fake_pixel_knn(bank, queries, *args, **kwargs):
        split = "val" if queries.dataset is datamodule.val else "test"
        calls.append(split)
        return scores[split]

    monkeypatch.setattr(knn_callback_module, "pixel_knn_top1", fake_pixel_knn)
    found = KNNEvaluationCallback(data=datamodule).pixel_scores(SimpleNamespace(), ("val", "test"))
    assert calls == ["val", "test"]
    assert found["pixels"] == {"val": 0.80, "test": 0.60}
    assert found["pixels_standardized"] == {"val": 0.70, "test": 0.90}
