"""Runs the learning tests' procedure (``learning_procedure``) over several seeds and writes what it measured to
``tests/learning_floors.json``, from which ``tests/test_learning.py`` derives its floors. ``make learning-floors``;
about 10 minutes a seed on 2 cores of an AVX-512 Xeon."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import learning_procedure as procedure

from mae.runs.provenance import provenance

FLOORS_FILE = Path(__file__).with_name("learning_floors.json")


def measure(seed: int, work_dir: Path) -> dict[str, float]:
    cfg, results = procedure.pretraining(seed, work_dir / "pretrain")
    measured = {
        "knn_pretrained": results["knn_top1_pretrained"],
        "knn_random": results["knn_top1_random_init"],
    }
    checkpoint = procedure.checkpoint_of(cfg)
    for features in procedure.PROBED_FEATURES:
        probed = procedure.probe(features, checkpoint, seed, work_dir / f"probe_{features}")
        measured[f"probe_{features}"] = probed["top1"]
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    seeds = parser.parse_args().seeds
    by_seed = {}
    for seed in seeds:
        with tempfile.TemporaryDirectory() as work_dir:
            by_seed[str(seed)] = measure(seed, Path(work_dir))
        print(f"seed {seed}: {by_seed[str(seed)]}", flush=True)
    record = {
        "pretrain_overrides": procedure.PRETRAIN_OVERRIDES,
        "probe_overrides": procedure.PROBE_OVERRIDES,
        "by_seed": by_seed,
        "provenance": provenance(),
    }
    FLOORS_FILE.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
