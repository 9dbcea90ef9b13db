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

from mae.data import fashion_mnist
from mae.jobs.reproduce_plan import RUNS
from mae.jobs.results_sources import Encoders, Sources
from mae.jobs.welch import welch
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


def validation(reader: Reader) -> Reader:
    """``reader`` on the validation split's numbers, which a run records under its test keys with ``val_`` in
    front (``val_top1``, ``val_knn_top1_pretrained``)."""

    def read(results: dict[str, Any], row: Row) -> float | None:
        shifted = {key.removeprefix("val_"): value for key, value in results.items() if key.startswith("val_")}
        return reader(shifted, row)

    return read


@dataclass(frozen=True)
class Difference:
    """A claim that one row beats another: the files of each side (one per seed) and how to read each side's
    number from them."""

    label: str
    better: tuple[str, ...]
    better_value: Reader
    worse: tuple[str, ...]
    worse_value: Reader


@dataclass(frozen=True)
class Comparisons:
    """Differences between rows of other tables, each with Welch's t-test over the seeds (two-sided p)."""

    name: str
    rows: tuple[Difference, ...]
    level: float = 0.05

    def render(self, results_dir: Path) -> str:
        lines = [
            f"| comparison (test split) | difference (points) | Welch's t | p (two-sided) | at p < {self.level:g} |",
            "|---|---|---|---|---|",
        ]
        for row in self.rows:
            sides = [
                [v for v in (value(run, Row(row.label, files)) for run in loaded(results_dir, files)) if v is not None]
                for files, value in ((row.better, row.better_value), (row.worse, row.worse_value))
            ]
            result = welch(*sides)
            if result is None:
                counts = f"n = {len(sides[0])} and {len(sides[1])} of {len(row.better)} and {len(row.worse)}"
                lines.append(f"| {row.label} | | | | not tested yet ({counts}; `make reproduce`) |")
                continue
            verdict = (
                ("above" if result.difference > 0 else "below")
                if result.p_value < self.level
                else "no difference shown"
            )
            lines.append(
                f"| {row.label} | {result.difference:+.2f} | {result.t:.2f} (df {result.degrees_of_freedom:.1f}) | "
                f"{result.p_value:.3g} | {verdict} |"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class Budget:
    """How many of ``make reproduce``'s runs have finished and the hours they trained (its cost here)."""

    name: str

    def render(self, results_dir: Path) -> str:
        runs = loaded(results_dir, [f"{run.name}.json" for run in RUNS])
        seconds = sum(run_seconds(run) for run in runs)
        return "\n".join(
            [
                "| `make reproduce` runs finished | their training and evaluation time (h) |",
                "|---|---|",
                f"| {len(runs)} of {len(RUNS)} | {seconds / 3600:.1f} |",
            ]
        )


def run_seconds(results: dict[str, Any]) -> float:
    """A run's training time: a pre-training's or a downstream run's ``train_seconds``; an ablation point's
    pre-training plus its downstream stages; a diagnostic's ``eval_seconds``."""
    first = results.get("pretrain_seconds", results.get("train_seconds", results.get("eval_seconds"))) or 0.0
    return float(first) + sum(float(results.get(f"{stage}_seconds") or 0.0) for stage in ("linprobe", "finetune"))


MAIN_SEEDS = 3  # seeds of the main job (make pretrain seed=0,1,2)
DOWNSTREAM_SEEDS = 2  # seeds of each fine-tuning and probing row
SWEEP_SEEDS = 3  # seeds of each sweep point (its config's seed: 0,1,2)
MASK_RATIOS = ("0.1", "0.3", "0.5", "0.75", "0.9")  # the points of conf/experiment/sweep_mask_ratio.yaml
DECODER_DEPTHS = ("1", "2", "4", "8")  # the points of conf/experiment/sweep_decoder_depth.yaml

PRETRAIN = seeds("pretrain", MAIN_SEEDS)
FOLDER = ("pretrain_folder_seed0.json",)  # experiment=fashion_mnist_folder: the main job on PNG folders
CONTINUED = ("pretrain_continued_seed0.json",)  # continued pre-training from seed 0's encoder, exported
KNN_COLUMNS = (
    Column("kNN top-1, validation (%)", validation(row_key_percent)),
    Column("kNN top-1, test (%)", row_key_percent),
)
KNN_BESIDE_BASELINES = (
    Column("kNN top-1 pre-trained, test (%)", percent("knn_top1_pretrained")),
    Column("fresh random init (%)", percent("knn_top1_random_init")),
    Column("raw pixels, the better on validation (%)", percent("knn_top1_pixels")),
)
ACCURACY = (
    Column("top-1, validation (%)", validation(recorded("top1"))),
    Column("top-1, test (%)", recorded("top1")),
    Column("top-5, test (%)", recorded("top5")),
    Column("training (s)", recorded("train_seconds"), digits=0),
)
SEGMENTATION = (
    Column("mIoU, validation (%)", validation(recorded("miou"))),
    Column("mIoU, test (%)", recorded("miou")),
    Column("pixel accuracy, test (%)", recorded("pixel_accuracy")),
    Column("mean accuracy, test (%)", recorded("mean_accuracy")),
    Column("training (s)", recorded("train_seconds"), digits=0),
)
SCENE_CLASSES = ("background", *fashion_mnist.CLASSES)
"""The scenes' classes: the background, then Fashion-MNIST's items (conf/data/fashion_mnist_scenes.yaml)."""


def class_iou(index: int) -> Reader:
    """Class ``index``'s IoU on the test split (None where the class has no pixels there, or none is recorded)."""

    def read(results: dict[str, Any], row: Row) -> float | None:
        per_class = results.get("per_class_iou")
        return None if per_class is None or index >= len(per_class) else per_class[index]

    return read


SEGMENTATION_PER_CLASS = tuple(Column(name, class_iou(index), digits=1) for index, name in enumerate(SCENE_CLASSES))
ITEM_KNN = (
    Column("item kNN top-1 (validation scenes), alone (%)", recorded("val_top1_alone")),
    Column("item kNN top-1 (validation scenes), in their scene (%)", recorded("val_top1_in_scene")),
    Column("items queried", recorded("val_items"), digits=0),
    Column("time (s)", recorded("eval_seconds"), digits=0),
)
DETECTION = (
    Column("box AP, validation", validation(recorded("box_ap"))),
    Column("box AP, test", recorded("box_ap")),
    Column("box AP50, test", recorded("box_ap50")),
    Column("mask AP, validation", validation(recorded("mask_ap"))),
    Column("mask AP, test", recorded("mask_ap")),
    Column("training (s)", recorded("train_seconds"), digits=0),
)
SWEEP_KNN = (
    Column("kNN top-1, validation (%)", validation(percent("knn_top1_pretrained"))),
    Column("kNN top-1, test (%)", percent("knn_top1_pretrained")),
)
TABLES = (
    Table(
        "pretrain_run",
        "run",
        (
            Column("epochs", recorded("epochs_trained"), digits=0),
            Column("optimizer steps", recorded("optimizer_steps"), digits=0),
            Column("last epoch's train loss", recorded("train_loss_last_epoch"), digits=4),
            Column("held-out loss", recorded("val_loss"), digits=4),
            Column("training + kNN evaluation (s)", recorded("train_seconds"), digits=0),
        ),
        (Row("`make pretrain`, seeds 0, 1, 2", PRETRAIN),),
    ),
    Table(
        "pretrain_knn",
        "features (the same bank, queries, k and temperature)",
        KNN_COLUMNS,
        (
            Row("MAE pre-trained encoder (`make pretrain`)", PRETRAIN, "knn_top1_pretrained"),
            Row("the same architecture, freshly initialised", PRETRAIN, "knn_top1_random_init"),
            Row("raw pixels in [0, 1]", PRETRAIN, "knn_top1_pixels_raw"),
            Row("raw pixels, standardised per pixel (bank statistics)", PRETRAIN, "knn_top1_pixels_standardized"),
        ),
    ),
    Table(
        "own_images",
        "run (the main job's recipe, seed 0; kNN on the same bank and queries)",
        (
            *KNN_BESIDE_BASELINES,
            Column("held-out loss", recorded("val_loss"), digits=4),
            Column("training + kNN (s)", recorded("train_seconds"), digits=0),
        ),
        (
            Row("Fashion-MNIST as PNG folders, `data=unlabeled` (`make pretrain-folder`)", FOLDER),
            Row("Fashion-MNIST in memory (`make pretrain`)", PRETRAIN[:1]),
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
            Row("before: `make pretrain` seed 0, exported as a transformers directory", PRETRAIN[:1]),
            Row("after: 3 more epochs from that directory (`pretrained=<dir>`, blr 5e-4)", CONTINUED),
        ),
    ),
    Table(
        "finetune",
        "initialisation",
        ACCURACY,
        (
            Row("MAE pre-trained (`make finetune`)", seeds("finetune_pretrained", DOWNSTREAM_SEEDS)),
            Row(
                "the same recipe from scratch (`pretrained=null`), equal budget",
                seeds("finetune_scratch", DOWNSTREAM_SEEDS),
            ),
        ),
    ),
    Table(
        "linprobe",
        "features",
        ACCURACY,
        (
            Row(
                "MAE pre-trained, mean of the patch tokens (`make linprobe`)",
                seeds("linprobe_pretrained_mean", DOWNSTREAM_SEEDS),
            ),
            Row("MAE pre-trained, cls token (`schedule.pool=cls`, the paper's)", seeds("linprobe_pretrained_cls", 1)),
            Row(
                "random initialisation, mean of the patch tokens (`pretrained=null`)",
                seeds("linprobe_random_mean", DOWNSTREAM_SEEDS),
            ),
            Row("raw pixels (`experiment=linprobe_pixels`)", seeds("linprobe_pixels", DOWNSTREAM_SEEDS)),
        ),
    ),
    Table(
        "segment",
        "encoder (UperNet, the same budget)",
        SEGMENTATION,
        (
            Row(
                "MAE pre-trained (`make pretrain`), fine-tuned (`make segment`)",
                seeds("segment_pretrained", DOWNSTREAM_SEEDS),
            ),
            Row("the same network from scratch (`pretrained=null`)", seeds("segment_scratch", DOWNSTREAM_SEEDS)),
            Row(
                "a random encoder, frozen (`pretrained=null module.freeze_backbone=true`)",
                seeds("segment_frozen_random", DOWNSTREAM_SEEDS),
            ),
            Row(
                "MAE pre-trained, frozen (`module.freeze_backbone=true`)",
                seeds("segment_frozen_pretrained", DOWNSTREAM_SEEDS),
            ),
        ),
    ),
    Table(
        "segment_per_class",
        "encoder (test IoU per class, %)",
        SEGMENTATION_PER_CLASS,
        (
            Row("MAE pre-trained (`make pretrain`), fine-tuned", seeds("segment_pretrained", DOWNSTREAM_SEEDS)),
            Row("the same network from scratch", seeds("segment_scratch", DOWNSTREAM_SEEDS)),
            Row("a random encoder, frozen", seeds("segment_frozen_random", DOWNSTREAM_SEEDS)),
            Row("MAE pre-trained, frozen", seeds("segment_frozen_pretrained", DOWNSTREAM_SEEDS)),
        ),
    ),
    Table(
        "segment_items",
        "encoder (nothing trained)",
        ITEM_KNN,
        (
            Row("MAE pre-trained (`make pretrain`)", seeds("item_knn_pretrained", 1)),
            Row("random initialisation (`pretrained=null`)", seeds("item_knn_random", DOWNSTREAM_SEEDS)),
        ),
    ),
    Table(
        "detect",
        "encoder (ViTDet Mask R-CNN, the same budget)",
        DETECTION,
        (
            Row(
                "MAE pre-trained (`make pretrain`), fine-tuned (`make detect`)",
                seeds("detect_pretrained", DOWNSTREAM_SEEDS),
            ),
            Row("the same network from scratch (`pretrained=null`)", seeds("detect_scratch", DOWNSTREAM_SEEDS)),
        ),
    ),
    Table(
        "sweep_mask_ratio",
        "mask ratio",
        (*SWEEP_KNN, Column("pre-training + kNN (s)", recorded("pretrain_seconds"), digits=0)),
        tuple(Row(ratio, seeds(f"sweep_mask_ratio_{ratio}", SWEEP_SEEDS)) for ratio in MASK_RATIOS),
    ),
    Table(
        "sweep_decoder_depth",
        "decoder depth",
        (
            *SWEEP_KNN,
            Column("linear probe top-1, validation (%)", recorded("linprobe_val_top1")),
            Column("linear probe top-1, test (%)", recorded("linprobe_top1")),
            Column("pre-training + kNN (s)", recorded("pretrain_seconds"), digits=0),
            Column("probe (s)", recorded("linprobe_seconds"), digits=0),
        ),
        tuple(Row(depth, seeds(f"sweep_decoder_depth_{depth}", SWEEP_SEEDS)) for depth in DECODER_DEPTHS),
    ),
    Comparisons(
        "claims",
        (
            Difference(
                "kNN, `make pretrain`: pre-trained minus fresh random init",
                PRETRAIN,
                percent("knn_top1_pretrained"),
                PRETRAIN,
                percent("knn_top1_random_init"),
            ),
            Difference(
                "kNN, `make pretrain`: pre-trained minus raw pixels (the better on validation)",
                PRETRAIN,
                percent("knn_top1_pretrained"),
                PRETRAIN,
                percent("knn_top1_pixels"),
            ),
            Difference(
                "fine-tuning: pre-trained minus from scratch",
                seeds("finetune_pretrained", DOWNSTREAM_SEEDS),
                recorded("top1"),
                seeds("finetune_scratch", DOWNSTREAM_SEEDS),
                recorded("top1"),
            ),
            Difference(
                "linear probe: pre-trained minus random init",
                seeds("linprobe_pretrained_mean", DOWNSTREAM_SEEDS),
                recorded("top1"),
                seeds("linprobe_random_mean", DOWNSTREAM_SEEDS),
                recorded("top1"),
            ),
            Difference(
                "segmentation mIoU: pre-trained minus from scratch",
                seeds("segment_pretrained", DOWNSTREAM_SEEDS),
                recorded("miou"),
                seeds("segment_scratch", DOWNSTREAM_SEEDS),
                recorded("miou"),
            ),
            Difference(
                "segmentation mIoU: pre-trained minus a frozen random encoder",
                seeds("segment_pretrained", DOWNSTREAM_SEEDS),
                recorded("miou"),
                seeds("segment_frozen_random", DOWNSTREAM_SEEDS),
                recorded("miou"),
            ),
            Difference(
                "segmentation mIoU, encoders frozen: pre-trained minus random",
                seeds("segment_frozen_pretrained", DOWNSTREAM_SEEDS),
                recorded("miou"),
                seeds("segment_frozen_random", DOWNSTREAM_SEEDS),
                recorded("miou"),
            ),
            Difference(
                "detection box AP: pre-trained minus from scratch",
                seeds("detect_pretrained", DOWNSTREAM_SEEDS),
                recorded("box_ap"),
                seeds("detect_scratch", DOWNSTREAM_SEEDS),
                recorded("box_ap"),
            ),
            Difference(
                "detection mask AP: pre-trained minus from scratch",
                seeds("detect_pretrained", DOWNSTREAM_SEEDS),
                recorded("mask_ap"),
                seeds("detect_scratch", DOWNSTREAM_SEEDS),
                recorded("mask_ap"),
            ),
            Difference(
                "linear probe: pre-trained minus raw pixels",
                seeds("linprobe_pretrained_mean", DOWNSTREAM_SEEDS),
                recorded("top1"),
                seeds("linprobe_pixels", DOWNSTREAM_SEEDS),
                recorded("top1"),
            ),
        ),
    ),
    Sources("sources"),
    Encoders("encoders"),
    Budget("budget"),
)


def mean_and_spread(values: Sequence[float], digits: int, expected: int | None = None) -> str:
    """``mean ± sample std (n seeds)`` for several values, the value alone for one, blank for none; ``(n=k of m)``
    when fewer than the ``expected`` runs have finished."""
    if not values:
        return ""
    mean, std = mean_std(list(values))
    count = f"n={len(values)}" + (f" of {expected}" if expected is not None and len(values) < expected else "")
    if std is None:
        return f"{mean:.{digits}f}" + (f" ({count})" if expected is not None and expected > 1 else "")
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({count})"


NOT_RUN = "not run yet (`make reproduce`)"


def load(results_dir: Path, name: str) -> dict[str, Any] | None:
    """The results file ``name``, None when it is not there yet (a table shows what has finished)."""
    path = results_dir / name
    return read_json_object(path) if path.is_file() else None


def loaded(results_dir: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """The results files of ``names`` that are there."""
    return [run for run in (load(results_dir, name) for name in names) if run is not None]


def render(table: Table | Comparisons | Sources | Encoders | Budget, results_dir: Path = RESULTS_DIR) -> str:
    """The markdown of ``table`` from the files in ``results_dir``; several files make ``mean ± std (n=..)``, a row
    none of whose runs has finished says so."""
    if not isinstance(table, Table):
        return table.render(results_dir)
    headers = [table.first_header, *(column.header for column in table.columns)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in table.rows:
        runs = loaded(results_dir, row.files)
        if not runs:
            lines.append("| " + " | ".join([row.label, NOT_RUN, *([""] * (len(table.columns) - 1))]) + " |")
            continue
        cells = [
            mean_and_spread(
                [v for v in (column.value(run, row) for run in runs) if v is not None], column.digits, len(row.files)
            )
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
