"""Aggregate a sweep: ``summary.csv``, ``summary.md`` and one PNG per swept parameter, written into the sweep
directory. Hydra calls it when a multirun ends (:class:`mae.sweeps.callback.SweepSummaryCallback`); by hand:
``python -m mae.sweeps.summary <sweep dir>``."""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mae.sweeps.jobs import Job, load_jobs, swept_parameters
from mae.sweeps.plots import plot_parameter


@dataclass(frozen=True)
class Metric:
    """A column taken from each job's results.json: ``scale`` x the value, rounded to ``digits``."""

    column: str
    header: str
    key: str
    scale: float = 1.0
    digits: int = 2

    def format(self, value: float | None) -> str:
        """The table's text for a value: fixed decimals, blank when missing."""
        return "" if value is None else f"{value:.{self.digits}f}"


METRICS = (
    # The kNN callback records a fraction; the table shows every accuracy in percent, as the paper does.
    Metric("knn_top1", "kNN top-1 (%)", "knn_top1_pretrained", scale=100.0),
    Metric("linprobe_top1", "linear probe top-1 (%)", "linprobe_top1"),
    Metric("finetune_top1", "fine-tune top-1 (%)", "finetune_top1"),
    Metric("pretrain_seconds", "pre-training (s)", "pretrain_seconds", digits=1),
    Metric("linprobe_seconds", "linear probe (s)", "linprobe_seconds", digits=1),
    Metric("finetune_seconds", "fine-tuning (s)", "finetune_seconds", digits=1),
)
"""Candidate columns, in table order; a column appears when some job recorded it."""

ACCURACIES = ("knn_top1", "linprobe_top1", "finetune_top1")
"""The columns the plots show against each swept parameter."""


@dataclass
class Summary:
    parameters: list[str]
    metrics: list[Metric]
    rows: list[dict[str, Any]]
    """One per job, sorted by the parameters' values: parameter values, metric values (None when missing),
    ``status`` and ``job`` (the directory name)."""


def summarize(sweep_dir: Path) -> Summary:
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise SweepError(f"{sweep_dir} has no job directories (each holds .hydra/overrides.yaml or "
                         "config_resolved.yaml); pass a sweep directory such as outputs/sweeps/<sweep_name>")
    parameters = swept_parameters(sweep_dir, jobs)
    metrics = [metric for metric in METRICS if any(job.results.get(metric.key) is not None for job in jobs)]
    rows = sorted((_row(job, parameters, metrics) for job in jobs), key=lambda row: _sort_key(row, parameters))
    return Summary(parameters, metrics, rows)


def write_summary(sweep_dir: Path) -> list[Path]:
    """Write summary.csv, summary.md and the plots into ``sweep_dir``; return the files written."""
    summary = summarize(sweep_dir)
    accuracies = [metric.column for metric in summary.metrics if metric.column in ACCURACIES]
    labels = {metric.column: metric.header for metric in summary.metrics}
    plots = [plot_parameter(summary.rows, parameter, summary.parameters, accuracies, labels,
                            sweep_dir / _plot_name(parameter)) for parameter in summary.parameters]
    plots = [path for path in plots if path is not None]
    csv_path = sweep_dir / "summary.csv"
    md_path = sweep_dir / "summary.md"
    _write_csv(summary, csv_path)
    md_path.write_text(markdown(summary, sweep_dir.name, plots))
    return [csv_path, md_path, *plots]


def markdown(summary: Summary, title: str, plots: list[Path]) -> str:
    """The markdown table (missing values blank), a count of finished jobs, then the plots as images."""
    headers = [*summary.parameters, *(m.header for m in summary.metrics), "status"]
    lines = [f"# Sweep `{title}`", "",
             f"{sum(row['status'] == 'done' for row in summary.rows)} of {len(summary.rows)} runs done.", "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in summary.rows:
        cells = [_cell(row[p]) for p in summary.parameters] + [m.format(row[m.column]) for m in summary.metrics]
        lines.append("| " + " | ".join([*cells, row["status"]]) + " |")
    lines += [line for path in plots for line in ("", f"![{path.stem}]({path.name})")]
    return "\n".join(lines) + "\n"


class SweepError(Exception):
    """Nothing to summarise; ``str()`` is one line for the user."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mae.sweeps.summary", description=__doc__)
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


def _row(job: Job, parameters: list[str], metrics: list[Metric]) -> dict[str, Any]:
    row: dict[str, Any] = {parameter: job.value(parameter) for parameter in parameters}
    for metric in metrics:
        value = job.results.get(metric.key)
        row[metric.column] = None if value is None else round(metric.scale * float(value), metric.digits)
    return {**row, "status": job.status, "job": job.name}


def _sort_key(row: dict[str, Any], parameters: list[str]) -> tuple:
    # Numbers in numeric order, then anything else as text; a missing value last.
    def key(value: Any) -> tuple:
        if value is None:
            return (2, 0.0, "")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (0, float(value), "")
        return (1, 0.0, str(value))
    return (*(key(row[parameter]) for parameter in parameters), row["job"])


def _write_csv(summary: Summary, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([*summary.parameters, *(m.column for m in summary.metrics), "status", "job"])
        for row in summary.rows:
            writer.writerow([*(_cell(row[p]) for p in summary.parameters),
                             *(m.format(row[m.column]) for m in summary.metrics), row["status"], row["job"]])


def _cell(value: Any) -> str:
    """A parameter value as it would be written in an override (YAML's spelling of booleans and null)."""
    if value is None:
        return ""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _plot_name(parameter: str) -> str:
    return f"{parameter.replace('/', '_')}.png"


if __name__ == "__main__":
    sys.exit(main())
