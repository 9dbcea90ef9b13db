"""The learning tests' procedure, shared by ``tests/test_learning.py`` (seed 0, every CI run) and
``tests/measure_learning_floors.py`` (several seeds, once, to set the floors the tests assert): a short
pre-training on real Fashion-MNIST, then the same linear probe on three feature sources (the pre-trained encoder, a
freshly initialised one and the raw pixels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import compose_config
from omegaconf import DictConfig

from mae.jobs.downstream import downstream
from mae.jobs.pretrain import pretrain

PRETRAIN_OVERRIDES = [
    "data.train_samples=30000",
    "data.knn_train_samples=5000",
    "data.knn_val_samples=2000",
    "schedule.epochs=5",
    "schedule.warmup_epochs=1",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar.refresh_rate=0",
]
"""5 epochs of 30000 images (585 steps of 256), under a quarter of the main job's steps: enough for the encoder to
beat a random one by far, not enough for its probe to beat the raw pixels' (see ``tests/test_learning.py``)."""

PROBE_OVERRIDES = [
    "task=linprobe",
    "data.train_samples=10000",
    "schedule.epochs=2",
    "schedule.warmup_epochs=0.5",
    "callbacks.progress_bar.refresh_rate=0",
]

PROBED_FEATURES = {
    "pretrained": lambda checkpoint: [f"pretrained={checkpoint}"],
    "random": lambda checkpoint: ["pretrained=null"],
    "pixels": lambda checkpoint: ["experiment=linprobe_pixels"],
}
"""The probe's feature sources, each as the overrides that select it given the pre-training's checkpoint."""


def pretraining(seed: int, output_dir: Path) -> tuple[DictConfig, dict[str, Any]]:
    """(config, results) of the short pre-training with ``seed``, written under ``output_dir``."""
    cfg = compose_config([*PRETRAIN_OVERRIDES, f"seed={seed}"], output_dir=output_dir)
    return cfg, pretrain(cfg)


def checkpoint_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def probe(features: str, checkpoint: Path, seed: int, output_dir: Path) -> dict[str, Any]:
    """The results of the linear probe on ``features`` (a key of :data:`PROBED_FEATURES`) with ``seed``."""
    overrides = [*PROBE_OVERRIDES, *PROBED_FEATURES[features](checkpoint), f"seed={seed}"]
    return downstream(compose_config(overrides, output_dir=output_dir))
