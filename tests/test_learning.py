"""Pre-training on real Fashion-MNIST learns: the loss falls and the encoder's features beat a random encoder's."""

import csv
from pathlib import Path

import pytest

from mae.pretrain import pretrain


@pytest.mark.slow
def test_pretraining_on_fashion_mnist_learns_useful_features(config_factory):
    cfg = config_factory([
        "data.train_samples=30000", "data.knn_train_samples=5000", "data.knn_val_samples=2000",
        "schedule.epochs=5", "schedule.warmup_epochs=1", "trainer.log_every_n_steps=1",
        "callbacks.progress_bar.refresh_rate=0",
    ])
    results = pretrain(cfg)
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as handle:
        losses = [float(row["train/loss_step"]) for row in csv.DictReader(handle) if row.get("train/loss_step")]
    assert len(losses) == 5 * (30000 // 256)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    # The random encoder is the baseline; pre-training must add clearly more than noise between runs.
    assert results["knn_top1_pretrained"] > results["knn_top1_random_init"] + 0.03, results
