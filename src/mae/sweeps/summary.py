"""Aggregate a sweep: ``summary.csv``, ``summary.md``, ``runs.csv`` and one PNG per swept parameter, written into
the sweep directory. Hydra calls it when a multirun ends (:class:`mae.sweeps.callback.SweepSummaryCallback`); by hand:
``python -m mae.sweeps.summary <sweep dir>``.

Seeds are repeats, not a parameter: when ``seed`` is among the swept parameters (``hydra.sweeper.params: seed: 0,1,2``
or ``seed=0,1,2`` on the command line) it is left out of the table, and the runs are grouped by the values of the
other swept parameters, one row per point. Every sweep has that one shape, seeds swept or not (without seeds each
point is a group of one run):

- ``summary.csv``: one row per point: the parameters, ``<metric>_mean`` and ``<metric>_std`` for each metric, over
  the point's finished runs (status ``done``) that recorded it; the std is the sample standard deviation (ddof=1),
  blank below two runs; ``n_seeds``, the number of finished runs aggregated; ``status``, ``<finished>/<runs> done``.
  An unfinished run's partial numbers (say its kNN before the probe finished) stay out of the means, so that a
  row's means cover the same finished runs that ``n_seeds`` counts.
- ``runs.csv``: one row per job directory, as it recorded them (seed among the parameters): the metrics, the run's
  own status (``done``, ``not started``, ``unfinished (<stage>)``) and the directory's name.
- ``summary.md``: the points' table (``mean ± std`` cells), then, for each accuracy, the best point (highest mean)
  and which points differ from it beyond the noise: ``|mean - best mean| > std + best std``. A point with fewer than
  two finished seeds has no std and is not compared.
- ``<parameter>.png``: each accuracy's mean against the parameter, with ± std error bars (:mod:`mae.sweeps.plots`).
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mae.runs.atomic_files import replaced_atomically, write_text_atomically
from mae.runs.optional import MissingExtraError
from mae.sweeps.plots import plot_parameter
from mae.sweeps.sweep_runs import Job, load_jobs, swept_parameters

log = logging.getLogger(__name__)

SEED = "seed"
"""The swept parameter whose values repeat a point rather than make another one."""


@dataclass(frozen=True)
class Metric:
    """A column taken from each job's results.json: ``scale`` x the value, shown with ``digits`` decimals."""

    column: str
    header: str
    key: str
    scale: float = 1.0
    digits: int = 2

    def value(self, results: dict[str, Any]) -> float | None:
        """The scaled value, unrounded (means and stds are taken before rounding), ``None`` when missing."""
        value = results.get(self.key)
        return None if value is None else self.scale * float(value)

    def format(self, value: float | None) -> str:
        """The table's text for a value: fixed decimals, blank when missing."""
        return "" if value is None else f"{value:.{self.digits}f}"

    @property
    def mean(self) -> str:
        return f"{self.column}_mean"

    @property
    def std(self) -> str:
        return f"{self.column}_std"


METRICS = (
    # The kNN callback records a fraction; the table shows every accuracy in percent, as the paper does.
    # Validation columns (what a sweep's choice reads) beside the test split's (evaluated once per run).
    Metric("knn_val_top1", "kNN top-1, validation (%)", "val_knn_top1_pretrained", scale=100.0),
    Metric("knn_top1", "kNN top-1, test (%)", "knn_top1_pretrained", scale=100.0),
    Metric("linprobe_val_top1", "linear probe top-1, validation (%)", "linprobe_val_top1"),
    Metric("linprobe_top1", "linear probe top-1, test (%)", "linprobe_top1"),
    Metric("finetune_val_top1", "fine-tune top-1, validation (%)", "finetune_val_top1"),
    Metric("finetune_top1", "fine-tune top-1, test (%)", "finetune_top1"),
    Metric("pretrain_seconds", "pre-training (s)", "pretrain_seconds", digits=1),
    Metric("linprobe_seconds", "linear probe (s)", "linprobe_seconds", digits=1),
    Metric("finetune_seconds", "fine-tuning (s)", "finetune_seconds", digits=1),
)
"""Candidate columns, in table order; a column appears when some job recorded it."""

ACCURACIES = ("knn_val_top1", "knn_top1", "linprobe_val_top1", "linprobe_top1", "finetune_val_top1", "finetune_top1")
"""The columns the plots show against each swept parameter and the noise check compares."""


@dataclass
class Summary:
    parameters: list[str]
    """The points' parameters: the swept parameters but ``seed``."""
    run_parameters: list[str]
    """Every swept parameter, ``seed`` included where it was swept."""
    metrics: list[Metric]
    runs: list[dict[str, Any]]
    """One per job, sorted by ``run_parameters``' values: their values, metric values (``None`` when missing),
    ``status`` and ``job`` (the directory name)."""
    points: list[dict[str, Any]]
    """One per combination of ``parameters``' values, sorted by them: the values, ``<metric>_mean`` and
    ``<metric>_std`` (``None`` when there are not enough values), ``n_seeds`` and ``status``."""


@dataclass(frozen=True)
class NoiseCheck:
    """A metric's best point (by index into the points) and the others, by how they compare with it."""

    best: int
    beyond: list[int]
    within: list[int]
    not_compared: list[int]


def summarize(sweep_dir: Path) -> Summary:
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise SweepError(
            f"{sweep_dir} has no job directories (each holds .hydra/overrides.yaml or "
            "config_resolved.yaml); pass a sweep directory such as outputs/sweeps/<sweep_name>"
        )
    run_parameters = swept_parameters(sweep_dir, jobs)
    parameters = [key for key in run_parameters if key != SEED]
    metrics = [metric for metric in METRICS if any(job.results.get(metric.key) is not None for job in jobs)]
    runs = sorted(
        (_run_row(job, run_parameters, metrics) for job in jobs),
        key=lambda row: (*_sort_key(row, run_parameters), row["job"]),
    )
    return Summary(parameters, run_parameters, metrics, runs, group_runs(runs, parameters, metrics))


def group_runs(runs: list[dict[str, Any]], parameters: list[str], metrics: list[Metric]) -> list[dict[str, Any]]:
    """One row per combination of ``parameters``' values among ``runs`` (each seed of a point is one run), sorted by
    those values, aggregating the finished runs' metrics."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(repr(run[key]) for key in parameters), []).append(run)
    points = [_point(members, parameters, metrics) for members in groups.values()]
    return sorted(points, key=lambda row: _sort_key(row, parameters))


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation (ddof=1) of ``values``; ``None`` for what too few values lack."""
    mean = statistics.fmean(values) if values else None
    return mean, statistics.stdev(values) if len(values) > 1 else None


def noise_check(points: list[dict[str, Any]], metric: Metric) -> NoiseCheck | None:
    """The point with the highest mean of ``metric`` (the first of equals), and the others with a mean: beyond the
    noise when ``|mean - best mean| > std + best std``, within it otherwise, not compared when either has no std.
    ``None`` when fewer than two points have a mean: there is nothing to compare."""
    scored = [index for index, point in enumerate(points) if point[metric.mean] is not None]
    if len(scored) < 2:
        return None
    best = max(scored, key=lambda index: points[index][metric.mean])
    beyond, within, not_compared = [], [], []
    for index in scored:
        if index == best:
            continue
        spreads = (points[index][metric.std], points[best][metric.std])
        if None in spreads:
            not_compared.append(index)
        elif abs(points[index][metric.mean] - points[best][metric.mean]) > sum(spreads):
            beyond.append(index)
        else:
            within.append(index)
    return NoiseCheck(best, beyond, within, not_compared)


def write_summary(sweep_dir: Path) -> list[Path]:
    """Write summary.csv, summary.md, runs.csv and the plots into ``sweep_dir``; return the files written, in that
    order."""
    summary = summarize(sweep_dir)
    accuracies = [metric.column for metric in summary.metrics if metric.column in ACCURACIES]
    labels = {metric.column: metric.header for metric in summary.metrics}
    try:
        plots = [
            plot_parameter(
                summary.points, parameter, summary.parameters, accuracies, labels, sweep_dir / _plot_name(parameter)
            )
            for parameter in summary.parameters
        ]
    except MissingExtraError as missing:  # the tables need no plotting library: write them, say what is missing
        log.warning("%s; summary.csv and summary.md are written without plots", missing)
        plots = []
    plots = [path for path in plots if path is not None]
    csv_path, md_path, runs_path = sweep_dir / "summary.csv", sweep_dir / "summary.md", sweep_dir / "runs.csv"
    _write_csv(csv_path, *_points_table(summary))
    _write_csv(runs_path, *_runs_table(summary))
    write_text_atomically(md_path, markdown(summary, sweep_dir.name, plots, runs_path.name))
    return [csv_path, md_path, runs_path, *plots]


def markdown(summary: Summary, title: str, plots: list[Path], runs_file: str = "runs.csv") -> str:
    """The points' table (missing values blank), a count of finished runs, the noise check of each accuracy, then the
    plots as images."""
    headers = [*summary.parameters, *(m.header for m in summary.metrics), "seeds", "status"]
    rows = [
        [
            *(_cell(point[p]) for p in summary.parameters),
            *(_mean_std_cell(m, point[m.mean], point[m.std]) for m in summary.metrics),
            str(point["n_seeds"]),
            point["status"],
        ]
        for point in summary.points
    ]
    finished = sum(run["status"] == "done" for run in summary.runs)
    lines = [
        f"# Sweep `{title}`",
        "",
        f"{finished} of {len(summary.runs)} runs done. Each row is a point: mean ± sample standard deviation "
        f"(ddof=1; none for a single run) over its finished runs, one per seed; every run in "
        f"[{runs_file}]({runs_file}).",
        "",
        *_markdown_table(headers, rows),
        *_noise_lines(summary),
    ]
    lines += [line for path in plots for line in ("", f"![{path.stem}]({path.name})")]
    return "\n".join(lines) + "\n"


class SweepError(Exception):
    """Nothing to summarise; ``str()`` is one line for the user."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mae.sweeps.summary", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", type=Path, help="a sweep's directory, e.g. outputs/sweeps/mask_ratio")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        written = write_summary(args.sweep_dir)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(str(path) for path in written))
    return 0


def _run_row(job: Job, parameters: list[str], metrics: list[Metric]) -> dict[str, Any]:
    row: dict[str, Any] = {parameter: job.value(parameter) for parameter in parameters}
    row.update({metric.column: metric.value(job.results) for metric in metrics})
    return {**row, "status": job.status, "job": job.name}


def _point(runs: list[dict[str, Any]], parameters: list[str], metrics: list[Metric]) -> dict[str, Any]:
    finished = [run for run in runs if run["status"] == "done"]
    point: dict[str, Any] = {key: runs[0][key] for key in parameters}
    for metric in metrics:
        point[metric.mean], point[metric.std] = mean_std(
            [run[metric.column] for run in finished if run[metric.column] is not None]
        )
    return {**point, "n_seeds": len(finished), "status": f"{len(finished)}/{len(runs)} done"}


def _sort_key(row: dict[str, Any], parameters: list[str]) -> tuple:
    # Numbers in numeric order, then anything else as text; a missing value last.
    def key(value: Any) -> tuple:
        if value is None:
            return (2, 0.0, "")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (0, float(value), "")
        return (1, 0.0, str(value))

    return tuple(key(row[parameter]) for parameter in parameters)


def _points_table(summary: Summary) -> tuple[list[str], list[list[str]]]:
    header = [
        *summary.parameters,
        *(column for m in summary.metrics for column in (m.mean, m.std)),
        "n_seeds",
        "status",
    ]
    rows = [
        [
            *(_cell(point[p]) for p in summary.parameters),
            *(m.format(point[column]) for m in summary.metrics for column in (m.mean, m.std)),
            str(point["n_seeds"]),
            point["status"],
        ]
        for point in summary.points
    ]
    return header, rows


def _runs_table(summary: Summary) -> tuple[list[str], list[list[str]]]:
    header = [*summary.run_parameters, *(m.column for m in summary.metrics), "status", "job"]
    rows = [
        [
            *(_cell(run[p]) for p in summary.run_parameters),
            *(m.format(run[m.column]) for m in summary.metrics),
            run["status"],
            run["job"],
        ]
        for run in summary.runs
    ]
    return header, rows


def _write_csv(path: Path, header: list[str], rows: Iterable[list[str]]) -> None:
    with replaced_atomically(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _noise_lines(summary: Summary) -> list[str]:
    """The rule, then one line per accuracy whose points can be compared; nothing when none can."""
    checks = [
        (metric, noise_check(summary.points, metric)) for metric in summary.metrics if metric.column in ACCURACIES
    ]
    lines = [_noise_line(summary, metric, check) for metric, check in checks if check is not None]
    if not lines:
        return []
    return [
        "",
        "Against the best point, a point differs beyond the noise when |mean - best mean| > its std + the "
        "best's std (a point with fewer than 2 finished seeds has no std and is not compared):",
        "",
        *lines,
    ]


def _noise_line(summary: Summary, metric: Metric, check: NoiseCheck) -> str:
    def names(indices: list[int]) -> str:
        return ", ".join(_point_name(summary.points[index], summary.parameters) for index in indices)

    best = summary.points[check.best]
    verdicts = [
        ("differ beyond the noise", check.beyond),
        ("within the noise", check.within),
        ("not compared (fewer than 2 seeds)", check.not_compared),
    ]
    best_value = _mean_std_cell(metric, best[metric.mean], best[metric.std])
    return f"- {metric.header}: best {names([check.best])} ({best_value})" + "".join(
        f"; {verdict}: {names(indices)}" for verdict, indices in verdicts if indices
    )


def _point_name(point: dict[str, Any], parameters: list[str]) -> str:
    return "`" + " ".join(f"{key}={_cell(point[key])}" for key in parameters) + "`"


def _mean_std_cell(metric: Metric, mean: float | None, std: float | None) -> str:
    """``mean ± std``, the mean alone without a std, blank without a mean."""
    return metric.format(mean) + ("" if std is None else f" ± {metric.format(std)}")


def _cell(value: Any) -> str:
    """A parameter value as it would be written in an override (YAML's spelling of booleans and null)."""
    if value is None:
        return ""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _plot_name(parameter: str) -> str:
    return f"{parameter.replace('/', '_')}.png"


if __name__ == "__main__":
    sys.exit(main())
