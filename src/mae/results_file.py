"""The run directory's ``results.json``: several writers (callbacks, jobs) merge their numbers into one object."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any


RESULTS_FILE = "results.json"
"""The name of every run directory's results file."""


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


def merge_json(path: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Update the JSON object in ``path`` with ``values`` (other keys kept) and return the merged object.

    Written to a temporary file and renamed, so an interrupted write never leaves a truncated results file.
    """
    try:
        merged = read_json_object(path)
    except ValueError as error:
        warnings.warn(f"{error}; writing a new one")
        merged = {}
    merged.update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    os.replace(tmp, path)
    return merged
