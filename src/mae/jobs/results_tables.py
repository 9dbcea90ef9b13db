"""The result tables of the README and the documentation site, rendered from the runs' own ``results.json`` files
(copied into ``docs/results/``).

Each table is a list of rows; a row names the results files it aggregates (one per seed) and the label it gets.
``python -m mae.jobs.results_tables`` rewrites the text between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``
in every file that holds such markers (``README.md`` and ``docs/**/*.md``; or the files given); ``--check`` only
reports whether they are up to date (a test runs that), so a number in those tables is always one a run wrote.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mae.runs.atomic_files import write_text_atomically
from mae.runs.config import REPO_DIR
from mae.runs.run_directory import read_json_object
from mae.sweeps.summary import mean_std

RESULTS_DIR = REPO_DIR / "docs" / "results"
MARKER = re.compile(r"^<!-- (/?)table:([^ ]*) -->$", re.M)


@dataclass(frozen=True)
class Row:
    """One line of a table: ``label``, the results files it aggregates (names in the results directory, one per
    seed) and, for tables whose rows read different keys of one file, the row's ``key``."""

    label: str
    files: tuple[str, ...]
    key: str | None = None


Reader = Callable[[dict[str, Any], Row], "float | None"]


@dataclass(frozen=True)
class Column:
    """A column: its header and how to read its value from one results object (None: not recorded)."""

    header: str
    value: Reader
    digits: int = 2


def recorded(key: str) -> Reader:
    """The value under ``key``."""
    return lambda results, row: results.get(key)


def percent(key: str) -> Reader:
    """The fraction in [0, 1] under ``key`` (the kNN callback's), as a percentage."""
    return lambda results, row: None if results.get(key) is None else 100.0 * results[key]


def row_key_percent(results: dict[str, Any], row: Row) -> float | None:
    """The row's own key, a fraction in [0, 1] (the kNN callback's), as a percentage."""
    return percent(row.key)(results, row)


@dataclass(frozen=True)
class Table:
    name: str
    first_header: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]


def seeds(stem: str, count: int) -> tuple[str, ...]:
    """``<stem>_seed0.json`` ... : the results files of seeds ``0 .. count - 1``."""
    return tuple(f"{stem}_seed{seed}.json" for seed in range(count))


FINETUNE_SEEDS = 2  # runs of each fine-tuning row (seeds 0 .. N-1); a further seed adds a file per row
SWEEP_SEEDS = 3  # seeds of each point of the mask-ratio sweep (its config's seed: 0,1,2)
MASK_RATIOS = ("0.1", "0.3", "0.5", "0.75", "0.9")  # the points of conf/experiment/sweep_mask_ratio.yaml


PRETRAIN = ("pretrain.json",)
FOLDER = ("pretrain_folder.json",)  # experiment=fashion_mnist_folder: the main job on PNG folders, data=unlabeled
MEMORY = ("pretrain_memory.json",)  # the main job in memory, same session and machine as FOLDER
CONTINUED = ("pretrain_continued.json",)  # continued pre-training from MEMORY's checkpoint, exported
EARLIER = ("pretrain_per_sample_masks.json", "pretrain_per_sample_masks_rerun.json")
KNN_BESIDE_BASELINES = (
    Column("kNN top-1, pre-trained (%)", percent("knn_top1_pretrained")),
    Column("random init (%)", percent("knn_top1_random_init")),
    Column("raw pixels, the better (%)", percent("knn_top1_pixels")),
)
ACCURACY = (
    Column("top-1 (%)", recorded("top1")),
    Column("top-5 (%)", recorded("top5")),
    Column("training (s)", recorded("train_seconds"), digits=0),
)
TABLES = (
    Table(
        "pretrain_run",
        "run",
        (
            Column("epochs", recorded("epochs_trained"), digits=0),
            Column("optimizer steps", recorded("optimizer_steps"), digits=0),
            Column("last epoch's train loss", recorded("train_loss_last_epoch"), digits=4),
            Column("training + kNN evaluation (s)", recorded("train_seconds"), digits=0),
        ),
        (Row("`make pretrain`", PRETRAIN),),
    ),
    Table(
        "pretrain_knn",
        "features (the same bank, queries, k and temperature)",
        (Column("kNN top-1 (%)", row_key_percent),),
        (
            Row("MAE pre-trained encoder (`make pretrain`)", PRETRAIN, "knn_top1_pretrained"),
            Row("the same encoder at random initialisation", PRETRAIN, "knn_top1_random_init"),
            Row("raw pixels in [0, 1]", PRETRAIN, "knn_top1_pixels_raw"),
            Row("raw pixels, standardised per pixel (bank statistics)", PRETRAIN, "knn_top1_pixels_standardized"),
        ),
    ),
    Table(
        "own_images",
        "run (12 epochs of the main job's recipe; kNN on the same bank and queries)",
        (
            *KNN_BESIDE_BASELINES,
            Column("held-out loss, last epoch", recorded("val_loss"), digits=4),
            Column("training + kNN (s)", recorded("train_seconds"), digits=0),
        ),
        (
            Row("Fashion-MNIST as PNG folders, `data=unlabeled` (`make pretrain-folder`)", FOLDER),
            Row("Fashion-MNIST in memory (`make pretrain`), the same session", MEMORY),
            Row("`make pretrain`, the two earlier re-runs (earlier sessions, other CPUs)", EARLIER),
        ),
    ),
    Table(
        "continued_pretraining",
        "encoder",
        (
            *KNN_BESIDE_BASELINES,
            Column("epochs", recorded("epochs_trained"), digits=0),
        ),
        (
            Row("before: `make pretrain`'s (the row above), exported as a transformers directory", MEMORY),
            Row("after: 3 more epochs from that directory (`pretrained=<dir>`, blr 5e-4)", CONTINUED),
        ),
    ),
    Table(
        "finetune",
        "initialisation",
        ACCURACY,
        (
            Row("MAE pre-trained (`make finetune`)", seeds("finetune_pretrained", FINETUNE_SEEDS)),
            Row(
                "the same recipe from scratch (`pretrained=null`), equal budget",
                seeds("finetune_scratch", FINETUNE_SEEDS),
            ),
            Row(
                "one epoch fewer (`schedule.epochs=15`), MAE pre-trained",
                seeds("finetune_15_epochs_pretrained", FINETUNE_SEEDS),
            ),
            Row(
                "previous recipe (12 epochs, blr 1e-3, layer decay 0.75, drop path 0.1), MAE pre-trained",
                ("finetune_previous_recipe_pretrained.json",),
            ),
            Row("previous recipe, from scratch (`pretrained=null`)", ("finetune_previous_recipe_scratch.json",)),
        ),
    ),
    Table(
        "linprobe",
        "features",
        ACCURACY,
        (
            Row("MAE pre-trained, mean of the patch tokens (`make linprobe`)", ("linprobe_pretrained_mean.json",)),
            Row("MAE pre-trained, cls token (`schedule.pool=cls`, the paper's)", ("linprobe_pretrained_cls.json",)),
            Row("random initialisation, mean of the patch tokens (`pretrained=null`)", ("linprobe_random_mean.json",)),
            Row("raw pixels (`experiment=linprobe_pixels`)", ("linprobe_pixels.json",)),
        ),
    ),
    Table(
        "sweep_mask_ratio",
        "mask ratio",
        (
            Column("kNN top-1 (%)", percent("knn_top1_pretrained")),
            Column("pre-training + kNN (s)", recorded("pretrain_seconds"), digits=0),
        ),
        tuple(Row(ratio, seeds(f"sweep_mask_ratio_{ratio}", SWEEP_SEEDS)) for ratio in MASK_RATIOS),
    ),
)


def mean_and_spread(values: Sequence[float], digits: int) -> str:
    """``mean ± sample std (n seeds)`` for several values, the value alone for one, blank for none."""
    if not values:
        return ""
    mean, std = mean_std(list(values))
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f} (n={len(values)})"


def load(results_dir: Path, name: str) -> dict[str, Any]:
    path = results_dir / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: copy the run's results.json there (docs/results/README.md)")
    return read_json_object(path)


def render(table: Table, results_dir: Path = RESULTS_DIR) -> str:
    """The markdown of ``table`` from the files in ``results_dir``; several files make ``mean ± std (n=..)``."""
    headers = [table.first_header, *(column.header for column in table.columns)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in table.rows:
        runs = [load(results_dir, name) for name in row.files]
        cells = [
            mean_and_spread([v for v in (column.value(run, row) for run in runs) if v is not None], column.digits)
            for column in table.columns
        ]
        lines.append("| " + " | ".join([row.label, *cells]) + " |")
    return "\n".join(lines)


def marker_pattern(name: str) -> re.Pattern[str]:
    """The marked block of table ``name``: the opening line, the lines between (maybe none), the closing line."""
    return re.compile(rf"(^<!-- table:{name} -->\n)(.*?)(^<!-- /table:{name} -->$)", re.S | re.M)


def update(text: str, results_dir: Path = RESULTS_DIR) -> str:
    """``text`` with every marked table replaced by its rendering; tables without markers are left out."""
    for table in TABLES:
        pattern = marker_pattern(table.name)
        if pattern.search(text):
            rendered = render(table, results_dir)
            text = pattern.sub(lambda match, rendered=rendered: match.group(1) + rendered + "\n" + match.group(3), text)
    return text


def marked_files(root: Path = REPO_DIR) -> list[Path]:
    """The files that hold table markers: ``README.md`` and the pages under ``docs/``, in a stable order."""
    candidates = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return [path for path in candidates if path.is_file() and MARKER.search(path.read_text())]


def check_markers(text: str) -> None:
    """Raise ValueError for a marker that names no table of ``TABLES`` or that has no partner."""
    names = {table.name for table in TABLES}
    opened: list[str] = []
    for match in MARKER.finditer(text):
        closing, name = match.group(1) == "/", match.group(2)
        if name not in names:
            raise ValueError(f"the marker {match.group(0)} names no table (tables: {', '.join(sorted(names))})")
        if closing:
            if not opened or opened.pop() != name:
                raise ValueError(f"the marker {match.group(0)} closes a table that was not opened just before it")
        else:
            if opened:
                raise ValueError(f"the marker {match.group(0)} opens a table inside table {opened[-1]}")
            opened.append(name)
    if opened:
        raise ValueError(f"the marker <!-- table:{opened[-1]} --> is never closed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mae.jobs.results_tables",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "files",
        type=Path,
        nargs="*",
        help="the markdown files to render (default: README.md and docs/**/*.md with markers)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is not up to date")
    args = parser.parse_args(argv)
    files = args.files or marked_files()
    stale = []
    for path in files:
        try:
            text = path.read_text()
            check_markers(text)
            updated = update(text, args.results_dir)
        except (OSError, ValueError, KeyError) as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            return 2
        if updated == text:
            continue
        if args.check:
            stale.append(path)
        else:
            write_text_atomically(path, updated)
            print(f"updated {path}")
    if stale:
        names = " ".join(str(path) for path in stale)
        print(f"out of date: {names}; run python -m mae.jobs.results_tables", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
