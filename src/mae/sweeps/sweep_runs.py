"""The jobs of a sweep directory: which parameters the sweep varied, each job's values of them, its results and
whether it finished."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from mae.runs.run_directory import config_file
from mae.sweeps.records import PRETRAIN, read_results, stages_done

HYDRA_DIR = ".hydra"
"""Hydra writes each job's overrides (overrides.yaml) and its hydra node (hydra.yaml) here."""


@dataclass
class Job:
    """One job directory of a sweep."""

    name: str
    overrides: dict[str, str]
    config: dict[str, Any] | None
    results: dict[str, Any]
    planned: list[str] = field(default_factory=list)

    @property
    def done(self) -> list[str]:
        return stages_done(self.results)

    @property
    def status(self) -> str:
        """``done``, ``not started``, or ``unfinished (<first missing stage>)``."""
        missing = [stage for stage in self.planned if stage not in self.done]
        if not missing:
            return "done"
        if self.config is None and not self.results:
            return "not started"
        return f"unfinished ({missing[0]})"

    def value(self, key: str) -> Any:
        """The job's value of a swept parameter: its override (typed as YAML reads it), else its config's."""
        if key in self.overrides:
            return yaml.safe_load(self.overrides[key])
        if self.config is not None:
            return OmegaConf.select(OmegaConf.create(self.config), key, default=None)
        return None


def is_job_dir(path: Path) -> bool:
    return path.is_dir() and ((path / HYDRA_DIR / "overrides.yaml").is_file() or config_file(path).is_file())


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job directory directly under ``sweep_dir``, by name."""
    return [load_job(path) for path in sorted(sweep_dir.iterdir()) if is_job_dir(path)]


def load_job(path: Path) -> Job:
    resolved = config_file(path)
    config = yaml.safe_load(resolved.read_text()) if resolved.is_file() else None
    downstream = ((config or {}).get("ablation") or {}).get("downstream") or []
    return Job(
        name=path.name,
        overrides=_overrides(path),
        config=config,
        results=read_results(path),
        planned=[PRETRAIN, *downstream],
    )


def swept_parameters(sweep_dir: Path, jobs: list[Job]) -> list[str]:
    """The sweeper's parameters (``hydra.sweeper.params``, in their order), then any other override whose value
    differs between jobs (a command-line sweep such as ``model.decoder_depth=1,2``)."""
    keys = list(_sweeper_params(sweep_dir, jobs))
    all_keys = sorted({key for job in jobs for key in job.overrides})
    keys += [key for key in all_keys if key not in keys and len({job.overrides.get(key) for job in jobs}) > 1]
    return [key for key in keys if not key.startswith("hydra.")]


def _overrides(path: Path) -> dict[str, str]:
    """``key=value`` overrides of the job as Hydra recorded them (``+``/``++`` prefixes dropped)."""
    file = path / HYDRA_DIR / "overrides.yaml"
    lines = yaml.safe_load(file.read_text()) if file.is_file() else None
    pairs = (line.split("=", 1) for line in lines or [] if "=" in line)
    return {key.lstrip("+~"): value for key, value in pairs}


def _sweeper_params(sweep_dir: Path, jobs: list[Job]) -> dict[str, Any]:
    for job in jobs:
        file = sweep_dir / job.name / HYDRA_DIR / "hydra.yaml"
        if file.is_file():
            hydra = (yaml.safe_load(file.read_text()) or {}).get("hydra") or {}
            return (hydra.get("sweeper") or {}).get("params") or {}
    return {}
