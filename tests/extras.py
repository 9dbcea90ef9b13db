"""Tests of optional features (pyproject.toml's extras): the extra's package, or a skip on a machine without it, or a
failure in CI (the environment variable ``CI`` set), where every extra is installed and a skip would hide a test."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def in_ci() -> bool:
    """``CI`` is set to something other than an empty or false-like value (CI services set ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def needs_extra(module: str, extra: str) -> ModuleType:
    """``module`` imported; when it cannot be imported, the calling test (or, at module level, the whole file) is
    skipped with a reason naming the extra, or fails in CI. Use it instead of ``pytest.importorskip``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        reason = (
            f"{module} is not importable ({type(error).__name__}: {error}); "
            f"the [{extra}] extra installs it: pip install -e '.[{extra}]'"
        )
        if in_ci():
            pytest.fail(
                f"{reason}. CI installs every extra (pip install -e '.[dev]'): a missing one is a failure, not a skip",
                pytrace=False,
            )
        pytest.skip(reason, allow_module_level=True)
