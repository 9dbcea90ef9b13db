"""``python -m mae.jobs.reproduce`` (``make reproduce``): every run behind the README's and the documentation's result
tables, with the committed defaults, then the tables re-rendered from what they wrote.

Each run is a ``train.py`` command in its own directory, ``outputs/reproduce/<name>/``; its ``results.json`` is
copied to ``docs/results/<name>.json`` when it finishes. Resumable, as the sweeps are: a run whose results file in
``docs/results/`` says ``"status": "finished"`` is skipped, and one interrupted half-way continues from its last
checkpoint. Runs that start from another run's encoder (fine-tuning, probing, continued pre-training) name it and
run after it. ``--list`` prints the plan with what is done; ``--only NAME ...`` runs a subset (and what it needs).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mae.jobs.results_tables import RESULTS_DIR
from mae.jobs.results_tables import main as render_tables
from mae.runs.config import REPO_DIR
from mae.runs.run_directory import read_json_object

RUNS_DIR = REPO_DIR / "outputs" / "reproduce"
CHECKPOINT = Path("checkpoints") / "last.ckpt"


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
    name: str, seeds: Sequence[int], overrides: Sequence[str] = (), encoder_from: str | None = None
) -> list[Run]:
    """``<name>_seed<S>`` for each seed; ``encoder_from`` (if any) is the same seed's ``<encoder_from>_seed<S>``."""
    return [
        Run(
            f"{name}_seed{seed}",
            (*overrides, f"seed={seed}"),
            None if encoder_from is None else f"{encoder_from}_seed{seed}",
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
)


def finished(name: str, results_dir: Path = RESULTS_DIR) -> bool:
    """Whether ``<name>.json`` in the results directory is a finished run's."""
    path = results_dir / f"{name}.json"
    return path.is_file() and read_json_object(path).get("status") == "finished"


def plan(runs: Sequence[Run], only: Sequence[str] = ()) -> list[Run]:
    """``runs`` in order, restricted to ``only`` and the runs they take their encoder from; unknown names raise a
    one-line ValueError listing the known ones."""
    by_name = {run.name: run for run in runs}
    unknown = [name for name in only if name not in by_name]
    if unknown:
        raise ValueError(f"unknown run {unknown[0]!r}; the runs are: {', '.join(by_name)}")
    if not only:
        return list(runs)
    wanted: set[str] = set()
    for name in only:
        while name is not None and name not in wanted:
            wanted.add(name)
            name = by_name[name].encoder_from  # type: ignore[assignment]
    return [run for run in runs if run.name in wanted]


def command(run: Run, runs_dir: Path = RUNS_DIR) -> list[str]:
    """The ``train.py`` command of ``run``: its directory, its overrides, its encoder, and ``ckpt_path`` when an
    earlier attempt left a checkpoint to continue from."""
    run_dir = runs_dir / run.name
    overrides = [override.replace("{dir}", str(run_dir)) for override in run.overrides]
    if run.encoder_from is not None and not any(o.startswith("pretrained=") for o in overrides):
        overrides.append(f"pretrained={runs_dir / run.encoder_from / CHECKPOINT}")
    if run.resume == "ckpt_path" and (run_dir / CHECKPOINT).is_file():
        overrides.append(f"ckpt_path={run_dir / CHECKPOINT}")
    return [sys.executable, str(REPO_DIR / "train.py"), f"hydra.run.dir={run_dir}", *overrides]


def prerequisites(run: Run, runs_dir: Path = RUNS_DIR) -> list[tuple[Path, list[str]]]:
    """``(path, the command that makes it)`` for each of ``run.before``, placeholders filled in."""
    run_dir = runs_dir / run.name
    encoder = "" if run.encoder_from is None else str(runs_dir / run.encoder_from / CHECKPOINT)

    def filled(text: str) -> str:
        return text.replace("{encoder}", encoder).replace("{dir}", str(run_dir))

    return [
        (REPO_DIR / filled(item.creates), [sys.executable, "-m", *map(filled, item.module_args)]) for item in run.before
    ]


def execute(run: Run, runs_dir: Path = RUNS_DIR, results_dir: Path = RESULTS_DIR) -> None:
    """Run ``run`` (what it needs first, unless made already) and copy its finished results."""
    run_dir = runs_dir / run.name
    if run.resume == "restart" and run_dir.exists():
        aside = run_dir.with_name(f"{run.name}.incomplete")
        shutil.rmtree(aside, ignore_errors=True)
        run_dir.rename(aside)
    for path, make in prerequisites(run, runs_dir):
        if not path.exists():
            subprocess.run(make, cwd=REPO_DIR, check=True)
    subprocess.run(command(run, runs_dir), cwd=REPO_DIR, check=True)
    results = run_dir / "results.json"
    if read_json_object(results).get("status") != "finished":
        raise RuntimeError(f"{results} does not say finished; run make reproduce again to continue it")
    results_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results, results_dir / f"{run.name}.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mae.jobs.reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="these runs (and their encoders' runs)")
    parser.add_argument("--list", action="store_true", help="print the runs and which are done, run nothing")
    args = parser.parse_args(argv)
    try:
        runs = plan(RUNS, args.only)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for index, run in enumerate(runs, 1):
        done = finished(run.name)
        if args.list:
            print(f"{'done' if done else 'todo'}  {run.name}: {' '.join(command(run)[2:])}")
            continue
        if done:
            print(f"[{index}/{len(runs)}] {run.name}: finished, skipped", flush=True)
            continue
        print(f"[{index}/{len(runs)}] {run.name}", flush=True)
        try:
            execute(run)
        except (subprocess.CalledProcessError, RuntimeError) as error:
            print(f"error: {run.name}: {error}", file=sys.stderr)
            return 1
    return 0 if args.list else render_tables([])


if __name__ == "__main__":
    raise SystemExit(main())
