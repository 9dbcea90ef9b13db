"""A run directory is owned by one run at a time, and a file system that cannot take a write ends the run with one
line.

Two runs writing one directory (a sweep whose points share ``hydra.run.dir``, a command started twice) overwrite
each other's checkpoints and interleave their ``metrics.csv``. The launching process of a run therefore holds an
exclusive ``fcntl.flock`` on ``<run dir>/.run.lock`` for as long as its job runs, taken before Hydra writes
anything there (:class:`RunDirectoryLock`; the job's wrapper takes it for jobs Hydra did not start); a second run
finds it held and stops with one line naming the directory and the holder's pid, having written nothing. The
operating system
releases the lock when the holder exits or is killed, so a crashed or preempted run never blocks its own resume
(``ckpt_path=<run dir>/checkpoints/last.ckpt``, a later run in the same directory).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mae.runs.atomic_files import StorageFullError, is_storage_full
from mae.runs.failures import RunFailure
from mae.runs.run_directory import RESULTS_FILE, merge_json

log = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
"""The file in a run directory whose ``flock`` the run holds; it holds the holder's pid as text."""

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
"""Set to a non-zero value in every process of a distributed run but the launching one (Lightning's DDP launcher,
torchrun, SLURM's tasks); all of them share the run directory, so only the launching one takes the lock."""


class RunDirectoryBusy(Exception):
    """Another live process holds the run directory; ``str()`` is one line naming the directory and its pid."""


def is_launching_process() -> bool:
    """Whether this is the process that owns the run directory: global rank 0 of its run, judged from the
    environment (no trainer exists yet when the lock is taken)."""
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in RANK_VARIABLES)


_held: dict[Path, IO[str]] = {}
"""The run directories this process holds, by absolute path: taken once (by :class:`RunDirectoryLock` before
Hydra writes its files, else by the job), released when the job ends."""


def lock_run_directory(directory: str | Path) -> IO[str]:
    """Take ``<directory>/.run.lock`` and return its open file, which holds the lock until it is closed or the
    process ends (the same file when this process holds it already); :class:`RunDirectoryBusy` when another
    process holds it. Creates the directory (and the lock file) only; writes nothing else."""
    import fcntl  # POSIX only; the project's runs target Linux clusters

    directory = Path(os.path.abspath(directory))
    if directory in _held:
        return _held[directory]
    directory.mkdir(parents=True, exist_ok=True)
    # "a+": never truncates the holder's pid. Kept open (no context manager) for as long as the run holds the lock.
    handle = open(directory / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunDirectoryBusy(
            f"run directory {directory} is in use by another run (pid {holder}); wait for it to "
            "end, or set hydra.run.dir=<another folder>"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[directory] = handle
    return handle


def release_run_directory(directory: str | Path) -> None:
    """Give up this process's lock on ``directory``, if it holds it; the lock file stays (removing it would race a
    run waiting for it)."""
    handle = _held.pop(Path(os.path.abspath(directory)), None)
    if handle is not None:
        handle.close()


def take_or_exit(directory: Path) -> None:
    """:func:`lock_run_directory`, or the program's end: ``error:`` one line and exit 2 (another run holds the
    directory, or the file system cannot take the lock file)."""
    try:
        lock_run_directory(directory)
    except RunDirectoryBusy as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        if not is_storage_full(error):
            raise
        print(f"error: {StorageFullError(Path(directory) / LOCK_FILE, error)}", file=sys.stderr)
        sys.exit(2)


class RunDirectoryLock(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): the launching process takes its run directory's lock before
    Hydra writes ``.hydra/`` and the log file there, so a second run on a busy directory touches nothing of it.
    The job's :func:`owned_run_directory` finds the lock held and keeps it until the job ends."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_launching_process():
            take_or_exit(Path(str(config.hydra.run.dir)))

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        release_run_directory(Path(str(config.hydra.run.dir)))


def run_directory_of(cfg: DictConfig) -> Path | None:
    """The job's run directory when it has one (train.py and eval.py name their task; the visualisation writes
    no run directory), else None."""
    if cfg.get("task_name") is None or cfg.get("paths") is None:
        return None
    return Path(cfg.paths.output_dir)


def record_failure(directory: Path | None, reason: str) -> None:
    """Mark ``results.json`` failed with ``reason`` when the file system still takes that write."""
    if directory is None:
        return
    try:
        merge_json(directory / RESULTS_FILE, {"status": "failed", "reason": reason})
    except OSError as error:
        log.warning("could not mark %s failed: %s", directory / RESULTS_FILE, error)


@contextmanager
def owned_run_directory(cfg: DictConfig) -> Iterator[None]:
    """The job's block: its run directory locked by the launching process (another run holding it: ``error:`` one
    line and exit 2, nothing written); a :class:`~mae.runs.failures.RunFailure` during the job, or a full disk,
    exceeded quota or read-only file system met by any write: ``error:`` one line (naming the file and its folder
    for a write), ``results.json`` marked failed with it, exit 2."""
    directory = run_directory_of(cfg)
    owner = directory is not None and is_launching_process()
    if owner:
        take_or_exit(directory)
    try:
        yield
    except (RunFailure, OSError) as error:
        if not isinstance(error, RunFailure):
            if not is_storage_full(error):
                raise
            error = StorageFullError(error.filename or directory or Path.cwd(), error)
        if owner:
            record_failure(directory, str(error))
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        if owner:
            release_run_directory(directory)
