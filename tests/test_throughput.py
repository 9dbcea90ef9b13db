"""Throughput logging: Lightning's ThroughputMonitor with the analytic FLOPs of the run's model (callbacks.throughput)."""

import csv
from pathlib import Path

import lightning as L
import lightning.pytorch.callbacks.throughput_monitor as throughput_monitor
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mae.benchmarking.flops import MAEShape, block_flops, linear_flops, mae_forward_flops
from mae.callbacks import AnalyticThroughputMonitor
from mae.callbacks.throughput import encoder_forward_flops, flops_per_batch, head_flops, image_flops
from mae.jobs.downstream import build as build_downstream
from mae.jobs.harness import fit
from mae.jobs.pretrain import pretrain
from mae.models import MaskedAutoencoderViT
from mae.models.classifier import vit_classifier_from_mae
from mae.training import FinetuneModule, LinearProbeModule, MAEPretrainModule

# The small runs of test_train.py, cut to 2 training steps, the rates over a window of 2 batches.
SMALL = [
    "data.train_samples=64",
    "schedule.batch_size=16",
    "schedule.epochs=1",
    "schedule.warmup_epochs=0",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=2",
    "+trainer.limit_train_batches=2",
    "callbacks.progress_bar.refresh_rate=0",
    "callbacks.throughput.window_size=2",
]
PRETRAIN = SMALL + ["callbacks.knn_evaluation=null", "callbacks.reconstruction_grid=null"]


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


def metric_rows(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return [{key: float(value) for key, value in row.items() if value} for row in csv.DictReader(handle)]


def last(rows: list[dict[str, float]], key: str) -> float:
    values = [row[key] for row in rows if key in row]
    assert values, f"{key} was never logged"
    return values[-1]


# -- the FLOP count per batch ------------------------------------------------------------------------------------
def test_pretraining_batch_is_three_forwards_of_the_flops_module_per_image():
    module = MAEPretrainModule(tiny_mae(), warmup_epochs=0, epochs=1)
    forward = mae_forward_flops(MAEShape.from_model(module.model))
    assert forward > 0
    assert flops_per_batch(module, 8) == 3 * forward * 8
    assert flops_per_batch(module, 8, training=False) == forward * 8  # validation: the forward alone


def test_flops_follow_the_model_size_and_mask_ratio():
    def per_image(**kwargs) -> int:
        return flops_per_batch(MAEPretrainModule(tiny_mae(**kwargs), warmup_epochs=0, epochs=1), 1)

    assert per_image(mask_ratio=0.5) > per_image(mask_ratio=0.75)  # the encoder sees more patches
    assert per_image(embed_dim=32) > per_image()
    assert per_image(decoder_depth=2) > per_image()
    assert per_image(mask_ratio=0.5) == 3 * mae_forward_flops(MAEShape.from_model(tiny_mae(mask_ratio=0.5)))


def test_downstream_flops_count_the_encoder_on_all_patches():
    mae = tiny_mae()
    width, patches = 16, 4
    encoder = linear_flops(patches, 4 * 4, width) + block_flops(patches + 1, width)  # patch embedding, 1 block
    assert encoder_forward_flops(mae) == encoder
    classifier = vit_classifier_from_mae(mae, num_classes=10)
    assert encoder_forward_flops(classifier) == encoder  # the same encoder as a timm ViT
    head = linear_flops(1, width, 10)
    finetune = FinetuneModule(classifier, num_classes=10, warmup_epochs=0, epochs=1)
    assert flops_per_batch(finetune, 4) == 3 * (encoder + head) * 4
    probe = LinearProbeModule(mae, num_classes=10, warmup_epochs=0, epochs=1)
    assert head_flops(probe.head) == head
    # The frozen encoder runs forward only; the head trains (3x).
    assert flops_per_batch(probe, 4) == (encoder + 3 * head) * 4
    assert flops_per_batch(probe, 4, training=False) == (encoder + head) * 4


def test_a_module_without_a_vit_has_no_count():
    assert image_flops(L.LightningModule()) is None
    with pytest.raises(ValueError, match="window_size=1"):
        AnalyticThroughputMonitor(window_size=1)


# -- logged through a real fit -----------------------------------------------------------------------------------
def test_a_two_step_pretraining_logs_images_flops_and_the_progress_bar_rate(config_factory):
    cfg = config_factory(PRETRAIN)
    pretrain(cfg)
    rows = metric_rows(Path(cfg.paths.output_dir))
    assert last(rows, "train/samples") == 32 and last(rows, "train/batches") == 2
    images_per_s = last(rows, "train/device/samples_per_sec")
    assert images_per_s > 0
    assert last(rows, "train/img_per_s") == pytest.approx(images_per_s, rel=1e-5)  # the key the hand timing wrote
    # Both rates cover the same window: their ratio is the FLOPs of one trained image, for this run's model.
    model = MaskedAutoencoderViT(
        img_size=28,
        patch_size=7,
        in_chans=1,
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    expected = 3 * mae_forward_flops(MAEShape.from_model(model))
    assert last(rows, "train/device/flops_per_sec") / images_per_s == pytest.approx(expected, rel=1e-6)
    assert last(rows, "validate/device/flops_per_sec") / last(rows, "validate/device/samples_per_sec") == (
        pytest.approx(expected / 3, rel=1e-6)
    )
    assert not any("train/device/mfu" in row for row in rows)  # the CPU has no known peak


def test_a_known_peak_gives_mfu(config_factory, monkeypatch):
    """What a GPU run logs: Lightning looks the device's peak up (here: 1 TFLOP/s for the CPU) and divides."""
    monkeypatch.setattr(throughput_monitor, "get_available_flops", lambda device, dtype: 10**12)
    cfg = config_factory(PRETRAIN)
    pretrain(cfg)
    rows = metric_rows(Path(cfg.paths.output_dir))
    assert last(rows, "train/device/mfu") == pytest.approx(last(rows, "train/device/flops_per_sec") / 1e12)


def test_linear_probing_logs_throughput_too(config_factory):
    cfg = config_factory(["task=linprobe", "pretrained=null", *SMALL])
    run = build_downstream(cfg)
    fit(cfg, run.trainer, run.module, run.datamodule)
    rows = metric_rows(Path(cfg.paths.output_dir))
    expected = flops_per_batch(run.module, 1)
    assert last(rows, "train/device/flops_per_sec") / last(rows, "train/device/samples_per_sec") == (
        pytest.approx(expected, rel=1e-6)
    )


def test_null_drops_the_monitor(config_factory):
    cfg = config_factory(PRETRAIN + ["callbacks.throughput=null"])
    pretrain(cfg)
    rows = metric_rows(Path(cfg.paths.output_dir))
    assert not any(key.startswith(("train/device", "train/img_per_s")) for row in rows for key in row)


def test_monitor_in_a_plain_trainer_sets_flops_per_batch():
    module = MAEPretrainModule(tiny_mae(), lr=0.01, warmup_epochs=0, epochs=1)
    data = TensorDataset(torch.randn(12, 1, 8, 8), torch.zeros(12))

    class Data(L.LightningDataModule):
        batch_size = 4

        def train_dataloader(self):
            return DataLoader(data, batch_size=4)

    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[AnalyticThroughputMonitor(window_size=2)],
    )
    trainer.fit(module, datamodule=Data())
    assert module.flops_per_batch == flops_per_batch(module, 4)


def test_a_probe_on_an_encoder_that_is_not_a_vit_logs_rates_without_flops():
    """The raw-pixel baseline probes an identity encoder: no ViT to count, so no FLOPs (and no error)."""
    probe = L.LightningModule()
    probe.encoder, probe.head = torch.nn.Flatten(), torch.nn.Linear(784, 10)
    assert image_flops(probe) is None
