"""Pre-training on real Fashion-MNIST learns: the loss falls, and the encoder's features beat a random encoder's
under kNN and under the paper's linear probe, each above a floor measured over several seeds; the same probe on
the raw pixels is the other baseline.

The procedure is ``learning_procedure``'s (seed 0 here); ``tests/learning_floors.json`` holds what it measured over
seeds 0, 1 and 2 (``make learning-floors`` re-measures them). Each floor is the lowest seed's value less
:data:`FLOOR_MARGIN`: room for another machine's arithmetic (AVX2 against AMX kernels) and library versions.

At this budget the probe on the pre-trained encoder does not beat the probe on the raw pixels: Fashion-MNIST's
pixels are a strong linear baseline. Measured on seed 0 (an AVX-512 Xeon), 12 pre-training epochs instead of 5 left
the probe 1.5 points behind the pixels' with 2 probe epochs, 0.6 behind with 8 and 0.8 behind with 3 epochs of 30000
images; only the main job's pre-training, about 4 times longer, beats them (the README's claims table tests that
over seeds). So the test asserts what does hold here, with a floor: the pre-trained encoder's probe stays within a
measured distance of the pixels' (a random encoder's is over 20 points below them)."""

import csv
import json
from pathlib import Path

import learning_procedure as procedure
import pytest
from measure_learning_floors import FLOORS_FILE

FLOOR_MARGIN = {"knn": 0.02, "probe": 2.0}
"""Below the lowest measured seed: 2 points (kNN top-1 is recorded as a fraction, the probe's in percent)."""

MEASURED = json.loads(FLOORS_FILE.read_text())


def floor(name: str) -> float:
    """The lowest measured seed's ``name`` less the margin of its kind (``knn_*`` or ``probe_*``)."""
    return min(seed[name] for seed in MEASURED["by_seed"].values()) - FLOOR_MARGIN[name.split("_")[0]]


def lowest_gap(better: str, worse: str) -> float:
    return min(seed[better] - seed[worse] for seed in MEASURED["by_seed"].values())


@pytest.fixture(scope="module")
def pretraining(tmp_path_factory):
    return procedure.pretraining(0, tmp_path_factory.mktemp("learning") / "pretrain")


def test_the_floors_were_measured_with_this_procedure_over_three_seeds():
    assert MEASURED["pretrain_overrides"] == procedure.PRETRAIN_OVERRIDES
    assert MEASURED["probe_overrides"] == procedure.PROBE_OVERRIDES
    assert sorted(MEASURED["by_seed"]) == ["0", "1", "2"]
    names = {"knn_pretrained", "knn_random"} | {f"probe_{features}" for features in procedure.PROBED_FEATURES}
    assert all(set(seed) == names for seed in MEASURED["by_seed"].values())
    # What the tests below rely on held for every seed, by more than the margin.
    assert lowest_gap("knn_pretrained", "knn_random") > FLOOR_MARGIN["knn"]
    assert lowest_gap("probe_pretrained", "probe_random") > FLOOR_MARGIN["probe"]
    assert lowest_gap("probe_pretrained", "probe_random") > lowest_gap("probe_pixels", "probe_random") / 2


@pytest.mark.slow
def test_pretraining_on_fashion_mnist_learns_useful_features(pretraining):
    cfg, results = pretraining
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as handle:
        losses = [float(row["train/loss_step"]) for row in csv.DictReader(handle) if row.get("train/loss_step")]
    assert len(losses) == cfg.schedule.epochs * (cfg.data.train_samples // cfg.schedule.batch_size)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)
    assert results["knn_top1_pretrained"] > floor("knn_pretrained"), results
    assert results["knn_top1_pretrained"] > results["knn_top1_random_init"] + FLOOR_MARGIN["knn"], results


@pytest.mark.slow
def test_linear_probe_of_the_pretrained_encoder_beats_a_random_one_and_nears_the_raw_pixels(pretraining, tmp_path):
    cfg, _ = pretraining
    checkpoint = procedure.checkpoint_of(cfg)
    top1 = {}
    for features in procedure.PROBED_FEATURES:
        results = procedure.probe(features, checkpoint, 0, tmp_path / features)
        assert results["num_images"] == 10000
        top1[features] = results["top1"]
    assert top1["pretrained"] > floor("probe_pretrained"), top1
    assert top1["pretrained"] > top1["random"] + FLOOR_MARGIN["probe"], top1
    assert top1["pretrained"] - top1["pixels"] > lowest_gap("probe_pretrained", "probe_pixels") - FLOOR_MARGIN["probe"]
