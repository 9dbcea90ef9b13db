"""A sweep's accuracies against one swept parameter, as a PNG (the paper's Figure 5 for the mask ratio)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in sweeps
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def plot_parameter(rows: list[dict[str, Any]], parameter: str, parameters: list[str], metrics: list[str],
                   labels: dict[str, str], path: Path) -> Path | None:
    """``metrics`` of ``rows`` against ``parameter``: one line per metric and per combination of the other swept
    ``parameters``' values; ``None`` and no file when no row has a value to plot."""
    others = [key for key in parameters if key != parameter]
    series: dict[tuple[str, tuple], list[tuple[Any, float]]] = defaultdict(list)
    for row in rows:
        for metric in metrics:
            if row.get(metric) is not None and row.get(parameter) is not None:
                series[(metric, tuple(row[key] for key in others))].append((row[parameter], row[metric]))
    if not series:
        return None
    xs = sorted({x for points in series.values() for x, _ in points}, key=_order)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    position = {x: (x if numeric else index) for index, x in enumerate(xs)}
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    for (metric, group), points in sorted(series.items(), key=lambda item: (item[0][0], str(item[0][1]))):
        points.sort(key=lambda point: _order(point[0]))
        label = labels.get(metric, metric) + ("".join(f", {k}={v}" for k, v in zip(others, group)) if others else "")
        axes.plot([position[x] for x, _ in points], [y for _, y in points], marker="o", label=label)
    axes.set_xticks([position[x] for x in xs], [str(x) for x in xs])
    axes.set_xlabel(parameter)
    axes.set_ylabel("top-1 accuracy (%)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _order(value: Any) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))
