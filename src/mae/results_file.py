"""The run directory's ``results.json``: several writers (callbacks, jobs) merge their numbers into one object."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any


def merge_json(path: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Update the JSON object in ``path`` with ``values`` (other keys kept) and return the merged object.

    Written to a temporary file and renamed, so an interrupted write never leaves a truncated results file.
    """
    merged: dict[str, Any] = {}
    if path.is_file():
        try:
            merged = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            warnings.warn(f"{path} is not valid JSON ({error}); writing a new one")
        if not isinstance(merged, dict):
            warnings.warn(f"{path} does not hold a JSON object; writing a new one")
            merged = {}
    merged.update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    os.replace(tmp, path)
    return merged
