"""The Hydra callback that aggregates a sweep when its multirun ends (configured in conf/task/ablation.yaml)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mae.sweeps.summary import write_summary

log = logging.getLogger(__name__)


class SweepSummaryCallback(Callback):
    """Writes summary.csv, summary.md, runs.csv and the plots into ``hydra.sweep.dir`` after the last job, every job's
    directory included, also those an earlier (interrupted) multirun of the same sweep left."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        written = write_summary(sweep_dir)
        log.info("Sweep summary: %s", ", ".join(str(path) for path in written))
        print(f"Sweep summary: {written[1]}")
