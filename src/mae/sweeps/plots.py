"""A sweep's accuracies against one swept parameter, as a PNG (the paper's Figure 5 for the mask ratio): each point
is the mean over the point's seeds with an error bar of ± their standard deviation, so that a difference can be
read against the run-to-run noise.

The rows are summary.csv's (:mod:`mae.sweeps.summary`): the swept parameters' values, and for each metric
``<metric>_mean`` and ``<metric>_std`` (``None`` when missing; a missing std draws no bar)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from mae.runs.atomic_files import replaced_atomically
from mae.runs.optional import require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOTS = "the sweep plots"


def _pyplot() -> ModuleType:
    """matplotlib's pyplot on the Agg backend (files only: no display on servers and in sweeps), imported when a
    plot is drawn: matplotlib is the optional ``sweeps`` extra."""
    require("matplotlib", "sweeps", PLOTS).use("Agg")
    return require("matplotlib.pyplot", "sweeps", PLOTS)


@dataclass(frozen=True)
class Point:
    """One marker of a curve: the parameter's value, the mean, and the error bar's half-height (``nan``: none)."""

    x: Any
    mean: float
    std: float


def curves(
    rows: list[dict[str, Any]], parameter: str, parameters: list[str], metrics: list[str]
) -> dict[tuple[str, tuple], list[Point]]:
    """The points to draw, by (metric, the other swept ``parameters``' values), each curve ordered along ``parameter``;
    rows without a mean or without a value of ``parameter`` have nothing to place."""
    others = [key for key in parameters if key != parameter]
    series: dict[tuple[str, tuple], list[Point]] = defaultdict(list)
    for row in rows:
        for metric in metrics:
            mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
            if mean is not None and row.get(parameter) is not None:
                point = Point(row[parameter], mean, math.nan if std is None else std)
                series[(metric, tuple(row[key] for key in others))].append(point)
    for points in series.values():
        points.sort(key=lambda point: _order(point.x))
    return dict(series)


def parameter_figure(
    rows: list[dict[str, Any]], parameter: str, parameters: list[str], metrics: list[str], labels: dict[str, str]
) -> Figure | None:
    """``metrics`` of ``rows`` against ``parameter``, mean ± std: one curve per metric and per combination of the other
    swept ``parameters``' values; ``None`` when no row has a value to plot. The caller saves and closes it."""
    series = curves(rows, parameter, parameters, metrics)
    if not series:
        return None
    others = [key for key in parameters if key != parameter]
    xs = sorted({point.x for points in series.values() for point in points}, key=_order)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    position = {x: (x if numeric else index) for index, x in enumerate(xs)}
    figure, axes = _pyplot().subplots(figsize=(6, 4), dpi=100)
    for (metric, group), points in sorted(series.items(), key=lambda item: (item[0][0], str(item[0][1]))):
        label = labels.get(metric, metric) + "".join(f", {key}={value}" for key, value in zip(others, group))
        axes.errorbar(
            [position[point.x] for point in points],
            [point.mean for point in points],
            yerr=[point.std for point in points],
            marker="o",
            capsize=3,
            label=label,
        )
    axes.set_xticks([position[x] for x in xs], [str(x) for x in xs])
    axes.set_xlabel(parameter)
    axes.set_ylabel("top-1 accuracy (%), mean ± std over seeds")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_parameter(
    rows: list[dict[str, Any]],
    parameter: str,
    parameters: list[str],
    metrics: list[str],
    labels: dict[str, str],
    path: Path,
) -> Path | None:
    """:func:`parameter_figure` written to ``path``; ``None`` and no file when there is nothing to plot."""
    figure = parameter_figure(rows, parameter, parameters, metrics, labels)
    if figure is None:
        return None
    with replaced_atomically(path) as tmp:
        figure.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
    _pyplot().close(figure)
    return path


def _order(value: Any) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))
