"""What a run directory holds and where: every name of its layout, and its ``results.json``, into which several
writers (callbacks, jobs) merge their numbers.

    <log dir>/<task>/latest -> runs/<time>    the newest finished run of the task
    <run dir>/config_resolved.yaml             the composed config, interpolations resolved
    <run dir>/checkpoints/last.ckpt            the Lightning checkpoint to resume from (and the next task's input)
    <run dir>/results.json                     the numbers the run measured
    <run dir>/timm_classifier.pth              fine-tuning: the classifier as a timm state_dict, head included
    <run dir>/timm_classifier.safetensors      the same as safetensors, timm_classifier.json beside it
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from mae.runs.atomic_files import write_text_atomically

RESULTS_FILE = "results.json"
"""The name of every run directory's results file."""
CONFIG_FILE = "config_resolved.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LATEST_LINK = "latest"
TIMM_CLASSIFIER_FILE = "timm_classifier.pth"
BAD_IMAGES_FILE = "bad_images.txt"
"""The images ``data.on_bad_image=skip`` skipped, one path per line."""


def config_file(run_dir: Path) -> Path:
    return run_dir / CONFIG_FILE


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT


def run_dir_of_checkpoint(ckpt_path: str | Path) -> Path:
    """``<run dir>`` for ``<run dir>/checkpoints/<file>``: two directories up."""
    return Path(os.path.abspath(ckpt_path)).parent.parent


def latest_link(log_dir: str | Path, task_name: str) -> Path:
    return Path(log_dir) / task_name / LATEST_LINK


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, ``{}`` when there is no file yet; ``ValueError`` naming the file when it holds
    invalid JSON or something other than an object."""
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return content


ATTEMPT_KEYS = ("status", "signal", "epoch", "checkpoint", "reason")
"""What one attempt of a run records about how it ended (finished, interrupted by a signal at an epoch with its
checkpoint, failed for a reason): replaced as a whole when a later attempt (a resume) ends."""
ATTEMPTS_KEY = "attempts"
"""Every attempt's end in order, the last being the current one: the history the top-level keys do not keep."""


def merge_json(path: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Update the JSON object in ``path`` with ``values`` (other keys kept) and return the merged object.

    ``values`` with a ``status`` end an attempt: the keys an earlier attempt left (:data:`ATTEMPT_KEYS`, e.g. the
    ``signal`` of an interrupted attempt a resume finished) are removed rather than kept beside the new status,
    and the attempt is appended to ``attempts`` (its :data:`ATTEMPT_KEYS` and ``optimizer_steps``).

    Written to a temporary file and renamed, so an interrupted write never leaves a truncated results file.
    """
    try:
        merged = read_json_object(path)
    except ValueError as error:
        warnings.warn(f"{error}; writing a new one", stacklevel=2)
        merged = {}
    if "status" in values:
        for key in ATTEMPT_KEYS:
            merged.pop(key, None)
        previous = merged.pop(ATTEMPTS_KEY, None)
        attempt = {key: values[key] for key in (*ATTEMPT_KEYS, "optimizer_steps") if key in values}
        values = {**values, ATTEMPTS_KEY: [*(previous if isinstance(previous, list) else []), attempt]}
    merged.update(values)
    write_text_atomically(path, json.dumps(merged, indent=2) + "\n")
    return merged


def check_writable(directory: str | Path) -> None:
    """Raise a one-line ``ValueError`` unless ``directory`` exists as a writable folder or can be created; creates
    nothing (a file is created and removed in the nearest existing folder to find out)."""
    directory = Path(directory).absolute()
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(
            f"output directory {directory} cannot be created: {existing} is a file; set "
            "hydra.run.dir=<folder> (or paths.log_dir=<folder>)"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(
            f"output directory {directory} is not writable ({existing}: {error.strerror}); set "
            "hydra.run.dir=<folder> (or paths.log_dir=<folder>)"
        ) from error


def bad_images(run_dir: Path) -> list[str]:
    """The distinct image files a run skipped as undecodable (each worker process lists what it met)."""
    path = run_dir / BAD_IMAGES_FILE
    return sorted(set(path.read_text().split("\n")) - {""}) if path.is_file() else []
