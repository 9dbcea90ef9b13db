"""The runs behind the result tables, in the order ``make reproduce`` runs them (:mod:`mae.jobs.reproduce`): each a
``train.py`` command, its results file ``docs/results/<name>.json``, and what it starts from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CHECKPOINT = Path("checkpoints") / "last.ckpt"
"""Where a run's directory holds the checkpoint a later run starts from."""


@dataclass(frozen=True)
class Prerequisite:
    """A path a run needs (relative to the repository or absolute; ``{dir}``: the run's directory, ``{encoder}``:
    its encoder's checkpoint) and the ``python -m`` arguments that make it."""

    creates: str
    module_args: tuple[str, ...]


@dataclass(frozen=True)
class Run:
    """One run: ``train.py`` with ``overrides`` in ``outputs/reproduce/<name>/``, its results as ``<name>.json``.

    ``encoder_from`` names the run whose last checkpoint is this one's ``pretrained=`` (unless an override sets
    it); ``before`` holds what must exist first, each made by a ``python -m`` command when it does not."""

    name: str
    overrides: tuple[str, ...]
    encoder_from: str | None = None
    before: tuple[Prerequisite, ...] = field(default=())
    resume: str = "ckpt_path"
    """How an interrupted attempt continues: ``ckpt_path`` (from its last checkpoint), ``itself`` (the task resumes
    from its own directory: ``task=ablation``) or ``restart`` (moved aside to ``<name>.incomplete``, run anew: a
    continued pre-training, whose ``pretrained=`` a resume may not repeat)."""


def seeded(
    name: str,
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    encoder_from: str | None = None,
    before: tuple[Prerequisite, ...] = (),
) -> list[Run]:
    """``<name>_seed<S>`` for each seed; ``encoder_from`` (if any) is the same seed's ``<encoder_from>_seed<S>``."""
    return [
        Run(
            f"{name}_seed{seed}",
            (*overrides, f"seed={seed}"),
            None if encoder_from is None else f"{encoder_from}_seed{seed}",
            before,
        )
        for seed in seeds
    ]


def sweep_points(sweep: str, parameter: str, values: Sequence[str], seeds: Sequence[int]) -> list[Run]:
    """The points of ``experiment=<sweep>`` as single runs (``task=ablation``), ``<sweep>_<value>_seed<S>``."""
    return [
        Run(
            f"{sweep}_{value}_seed{seed}",
            (f"experiment={sweep}", f"{parameter}={value}", f"seed={seed}"),
            resume="itself",
        )
        for seed in seeds
        for value in values
    ]


MAIN_SEEDS = (0, 1, 2)
DOWNSTREAM_SEEDS = (0, 1)
SWEEP_SEEDS = (0, 1, 2)
MASK_RATIOS = ("0.1", "0.3", "0.5", "0.75", "0.9")
DECODER_DEPTHS = ("1", "2", "4", "8")
HF_EXPORT = "encoder_hf"
SCENES = (
    Prerequisite(
        "data/fashion_mnist_scenes/annotations/instances_test.json",
        ("mae.data.dense.scenes", "data/fashion_mnist_scenes"),
    ),
)
"""The segmentation and detection runs' data (``make scenes``: both layouts). A folder written before the scenes had the COCO
layout lacks the checked file, so it is reported (the generator refuses to write over it) rather than read."""

# In the order they run: the first seed of everything first, so that a partial run fills every table.
RUNS: tuple[Run, ...] = (
    *seeded("pretrain", MAIN_SEEDS[:1]),
    *seeded("linprobe_pretrained_mean", DOWNSTREAM_SEEDS[:1], ("task=linprobe",), "pretrain"),
    *seeded("linprobe_pixels", DOWNSTREAM_SEEDS, ("task=linprobe", "experiment=linprobe_pixels")),
    *seeded("linprobe_random_mean", DOWNSTREAM_SEEDS[:1], ("task=linprobe", "pretrained=null")),
    *sweep_points("sweep_mask_ratio", "model.mask_ratio", MASK_RATIOS, SWEEP_SEEDS),
    *sweep_points("sweep_decoder_depth", "model.decoder_depth", DECODER_DEPTHS, SWEEP_SEEDS),
    *seeded("pretrain", MAIN_SEEDS[1:]),
    *seeded("linprobe_pretrained_mean", DOWNSTREAM_SEEDS[1:], ("task=linprobe",), "pretrain"),
    *seeded("linprobe_random_mean", DOWNSTREAM_SEEDS[1:], ("task=linprobe", "pretrained=null")),
    *seeded("linprobe_pretrained_cls", DOWNSTREAM_SEEDS[:1], ("task=linprobe", "schedule.pool=cls"), "pretrain"),
    *seeded("finetune_pretrained", DOWNSTREAM_SEEDS[:1], ("task=finetune",), "pretrain"),
    *seeded("finetune_scratch", DOWNSTREAM_SEEDS[:1], ("task=finetune", "pretrained=null")),
    *seeded("finetune_pretrained", DOWNSTREAM_SEEDS[1:], ("task=finetune",), "pretrain"),
    *seeded("finetune_scratch", DOWNSTREAM_SEEDS[1:], ("task=finetune", "pretrained=null")),
    # Your own images: the main job's recipe on Fashion-MNIST written as PNG folders (make fashion-mnist-png).
    Run(
        "pretrain_folder_seed0",
        ("experiment=fashion_mnist_folder", "seed=0"),
        before=tuple(
            Prerequisite(
                f"data/fashion_mnist_png{suffix}", ("mae.data.png_folder", f"data/fashion_mnist_png{suffix}", *split)
            )
            for suffix, split in (("", ()), ("_val", ("--split", "val")))
        ),
    ),
    # Continued pre-training from seed 0's encoder, exported as a transformers directory first.
    Run(
        "pretrain_continued_seed0",
        (f"pretrained={{dir}}/{HF_EXPORT}", "schedule.epochs=3", "schedule.warmup_epochs=0.5", "schedule.blr=5e-4"),
        "pretrain_seed0",
        (
            Prerequisite(
                f"{{dir}}/{HF_EXPORT}", ("mae.model_files.export", "transformers", "{encoder}", f"{{dir}}/{HF_EXPORT}")
            ),
        ),
        resume="restart",
    ),
    # Semantic segmentation on the Fashion-MNIST scenes: the main job's encoder against the same network from
    # scratch and against a frozen random encoder. Both seeds start from the encoder ``make pretrain`` makes (seed 0),
    # so that the spread is the transfer's alone, as it is for the from-scratch runs.
    *(
        Run(f"segment_pretrained_seed{seed}", ("task=segment", f"seed={seed}"), "pretrain_seed0", SCENES)
        for seed in DOWNSTREAM_SEEDS
    ),
    *seeded("segment_scratch", DOWNSTREAM_SEEDS, ("task=segment", "pretrained=null"), before=SCENES),
    *seeded(
        "segment_frozen_random",
        DOWNSTREAM_SEEDS,
        ("task=segment", "pretrained=null", "module.freeze_backbone=true"),
        before=SCENES,
    ),
    # The main job's encoder frozen too: what its features carry with only the neck and heads trained.
    *(
        Run(
            f"segment_frozen_pretrained_seed{seed}",
            ("task=segment", "module.freeze_backbone=true", f"seed={seed}"),
            "pretrain_seed0",
            SCENES,
        )
        for seed in DOWNSTREAM_SEEDS
    ),
    # Why pre-training helps the segmentation little: the scenes' items classified by kNN on the encoder's features,
    # alone (as in pre-training) and in their scene (nothing trained; the random encoder over two seeds).
    Run("item_knn_pretrained_seed0", ("task=item_knn", "seed=0"), "pretrain_seed0", SCENES),
    *seeded("item_knn_random", DOWNSTREAM_SEEDS, ("task=item_knn", "pretrained=null"), before=SCENES),
    # Detection and instance segmentation on the same scenes (COCO layout): the main job's encoder against the same
    # Mask R-CNN from scratch.
    *(
        Run(f"detect_pretrained_seed{seed}", ("task=detect", f"seed={seed}"), "pretrain_seed0", SCENES)
        for seed in DOWNSTREAM_SEEDS
    ),
    *seeded("detect_scratch", DOWNSTREAM_SEEDS, ("task=detect", "pretrained=null"), before=SCENES),
)
