"""Experiment loggers with this project's guarantees."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger``, except that a run resumed in its own directory (after a preemption, or a sweep
    point picked up again) appends to the ``metrics.csv`` of its earlier attempt: Lightning's writer deletes a
    metrics file it finds, which would lose the steps trained before the interruption."""

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        earlier = path.read_bytes() if path.is_file() else None
        experiment = super().experiment
        if earlier is not None and isinstance(experiment, ExperimentWriter):
            path.write_bytes(earlier)
            with open(path, newline="") as handle:
                experiment.metrics_keys = list(csv.DictReader(handle).fieldnames or [])
        return experiment
