"""Where a run's results came from: the code's git commit (and whether it had uncommitted changes), the Hydra
overrides, the package versions, the machine and the time, recorded under ``provenance`` in every ``results.json``
(:func:`mae.jobs.harness.merge_results`). Nothing that names the machine (no hostname) or the user is recorded.

The parsing functions take text (``cpu_flags``, ``cpu_model``) or a record (``describe_machine``) so that they can
be checked without this machine; the readers (``git_state``, ``hydra_overrides``, ``machine``) record ``None``
for what they cannot find out (no git, not a checkout, no Hydra job, no ``/proc/cpuinfo``) and never fail.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from mae.runs.config import REPO_DIR

PROVENANCE_KEY = "provenance"
"""The key of ``results.json`` holding :func:`provenance`'s record."""

GIT_TIMEOUT_S = 5.0
"""Seconds each git command may take; a slower one (a hung network file system) records ``None``."""

PACKAGES = ("torch", "lightning", "timm", "torchvision")
"""The distributions whose versions are recorded (besides Python's)."""

CPU_FLAGS = {
    "avx2": ("avx2",),
    "avx512f": ("avx512f",),
    "avx512_bf16": ("avx512_bf16",),
    "amx": ("amx_tile", "amx_bf16"),
}
"""Recorded flag -> the ``/proc/cpuinfo`` flags any of which sets it."""

CPUINFO = Path("/proc/cpuinfo")

_GIT_LOCATION_VARIABLES = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
)
"""Variables that would point git at another repository than the directory it is asked about (a git hook sets
some of them); removed from the git commands' environment."""


def cpuinfo_field(cpuinfo_text: str, name: str) -> str | None:
    """The value of the first ``name : value`` line of ``/proc/cpuinfo``-style text (the first processor's), or
    ``None`` when no line has that name."""
    for line in cpuinfo_text.splitlines():
        key, separator, value = line.partition(":")
        if separator and key.strip() == name:
            return value.strip()
    return None


def cpu_model(cpuinfo_text: str) -> str | None:
    """The CPU's ``model name`` in ``/proc/cpuinfo``-style text, ``None`` when it has none (e.g. most ARM CPUs)."""
    return cpuinfo_field(cpuinfo_text, "model name") or None


def cpu_flags(cpuinfo_text: str) -> dict[str, bool | None]:
    """Which of :data:`CPU_FLAGS` the ``flags`` line of ``/proc/cpuinfo``-style text lists; every value ``None``
    (unknown) when the text has no ``flags`` line (not x86 Linux, or no ``/proc/cpuinfo``)."""
    line = cpuinfo_field(cpuinfo_text, "flags")
    if line is None:
        return dict.fromkeys(CPU_FLAGS)
    present = set(line.split())
    return {name: any(flag in present for flag in flags) for name, flags in CPU_FLAGS.items()}


def read_cpuinfo(path: Path = CPUINFO) -> str:
    """The text of ``/proc/cpuinfo``; empty where there is none (macOS, Windows) or it cannot be read."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _git(repo_dir: Path, *args: str) -> str | None:
    """Standard output of ``git -C repo_dir <args>``, or ``None`` when git is missing, fails or times out."""
    environment = {key: value for key, value in os.environ.items() if key not in _GIT_LOCATION_VARIABLES}
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(repo_dir), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            env=environment,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


NOT_CODE = (":(exclude)docs", ":(exclude)*.md")
"""Pathspecs of the tracked files whose changes do not make a checkout dirty: results, tables and prose."""


def git_state(repo_dir: str | Path = REPO_DIR) -> dict[str, Any]:
    """``{"commit": <HEAD's sha>, "dirty": <uncommitted changes to tracked files>}`` of the checkout at
    ``repo_dir``; both ``None`` when it is not the top of a git checkout (an installed wheel, whose ``REPO_DIR``
    could lie inside some other repository) or git is missing or fails. Untracked files (outputs, data) do not
    make it dirty, nor do changes under ``docs/`` or to Markdown files (:data:`NOT_CODE`): ``make reproduce``
    writes results files and re-renders tables there between its runs, which changes nothing a run computes."""
    repo_dir = Path(repo_dir)
    if not (repo_dir / ".git").exists():  # a directory, or a file in a worktree or submodule
        return {"commit": None, "dirty": None}
    head = _git(repo_dir, "rev-parse", "--verify", "HEAD")
    status = _git(repo_dir, "status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE)
    return {
        "commit": (head.strip() or None) if head is not None else None,
        "dirty": bool(status.strip()) if status is not None else None,
    }


def hydra_overrides() -> list[str] | None:
    """The Hydra job's command-line overrides (``hydra.overrides.task``, a multirun's per-job values included), or
    ``None`` outside a Hydra job. An ablation's downstream stage runs inside the ablation's job: its overrides are
    the ablation command's."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    try:
        return [str(override) for override in HydraConfig.get().overrides.task]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Python's version and each of :data:`PACKAGES`' (``None`` when not installed)."""
    return {"python": platform.python_version(), **{name: package_version(name) for name in PACKAGES}}


def usable_cores() -> int | None:
    """The logical cores this process may run on (a container's or ``taskset``'s share), where the OS says."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def torch_cpu_capability() -> str | None:
    """The instruction set torch's CPU kernels dispatch to (``"DEFAULT"``, ``"AVX2"``, ``"AVX512"``, ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return None


def gpus() -> dict[str, Any] | None:
    """``{"count": n, "names": [...]}`` of the CUDA devices torch sees, ``None`` without CUDA."""
    try:
        if not torch.cuda.is_available():
            return None
        count = torch.cuda.device_count()
        return {"count": count, "names": [torch.cuda.get_device_name(index) for index in range(count)]}
    except (AssertionError, RuntimeError):  # a driver that fails after all
        return None


def machine(cpuinfo_text: str | None = None) -> dict[str, Any]:
    """The CPU (model name, logical and usable cores, :data:`CPU_FLAGS`, torch's CPU capability) and the GPUs;
    ``cpuinfo_text`` defaults to this machine's ``/proc/cpuinfo``."""
    text = read_cpuinfo() if cpuinfo_text is None else cpuinfo_text
    return {
        "cpu": cpu_model(text) or platform.processor() or None,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "flags": cpu_flags(text),
        "torch_cpu_capability": torch_cpu_capability(),
        "gpu": gpus(),
    }


def utc_now() -> str:
    """Now in UTC, ISO 8601 to the second (``2025-01-31T12:34:56+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance(repo_dir: str | Path = REPO_DIR) -> dict[str, Any]:
    """The record under :data:`PROVENANCE_KEY`: ``commit`` and ``dirty`` (:func:`git_state`), ``overrides``
    (:func:`hydra_overrides`), ``versions``, ``machine`` and ``date`` (now, UTC)."""
    return {
        **git_state(repo_dir),
        "overrides": hydra_overrides(),
        "versions": versions(),
        "machine": machine(),
        "date": utc_now(),
    }


def content_digest(path: str | Path) -> str | None:
    """SHA-256 (hex) of a file's bytes, or of a folder's files (each one's path relative to the folder, then its
    bytes, in sorted order: an exported encoder folder); None where nothing is there. Recorded with a run that
    starts from weights, so that results made from different files of the same name can be told apart."""
    path = Path(path)
    if path.is_dir():
        files = sorted(file for file in path.rglob("*") if file.is_file())
    else:
        files = [path] if path.is_file() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _instruction_sets(flags: Mapping[str, bool | None]) -> str:
    if all(value is None for value in flags.values()):
        return "CPU flags unknown"
    present, absent = [], []
    (present if flags.get("avx2") else absent).append("AVX2")
    (present if flags.get("avx512f") else absent).append("AVX-512")
    if flags.get("avx512f"):
        (present if flags.get("avx512_bf16") else absent).append("AVX512-BF16")
    (present if flags.get("amx") else absent).append("AMX")
    missing = ", ".join(f"no {name}" for name in absent)
    if not present:
        return missing
    return ", ".join(present) + (f" ({missing})" if missing else "")


def describe_machine(record: Mapping[str, Any]) -> str:
    """One line for a table caption, e.g. ``"AMD EPYC 7B13, 2 cores, AVX2 (no AVX-512, no AMX), fp32 CPU"``:
    the CPU, its cores (``"2 of 8 cores"`` when the run could use fewer than the machine has), its vector and
    matrix instructions, ``bf16 CPU`` when it has bf16 instructions (AVX512-BF16 or AMX) else ``fp32 CPU``, and
    the GPUs, e.g. ``"1 x NVIDIA H100 80GB HBM3"``. ``record`` is a ``provenance`` record or its ``machine``."""
    machine_record = record.get("machine", record)
    parts = [machine_record.get("cpu") or "unknown CPU"]
    logical, usable = machine_record.get("logical_cores"), machine_record.get("usable_cores")
    if usable is not None and logical is not None and usable < logical:
        parts.append(f"{usable} of {logical} cores")
    elif logical is not None or usable is not None:
        cores = logical if logical is not None else usable
        parts.append(f"{cores} core{'s' if cores != 1 else ''}")
    flags = machine_record.get("flags") or {}
    parts.append(_instruction_sets(flags))
    if flags.get("avx512_bf16") or flags.get("amx"):
        parts.append("bf16 CPU")
    elif any(value is not None for value in flags.values()):
        parts.append("fp32 CPU")
    gpu = machine_record.get("gpu")
    if gpu and gpu.get("names"):
        names = gpu["names"]
        parts.append(", ".join(f"{names.count(name)} x {name}" for name in dict.fromkeys(names)))
    return ", ".join(parts)
