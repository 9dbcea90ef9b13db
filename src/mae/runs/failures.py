"""Failures that end a job with one line: the cause is outside the program (a full disk, an unreachable service)
and the line says all a traceback would, so the job's wrapper prints ``error: <line>``, marks ``results.json``
failed with it and exits 2 (see :func:`mae.runs.run_lock.owned_run_directory`)."""

from __future__ import annotations


class RunFailure(Exception):
    """A failure met while a job runs; ``str()`` is one line naming what failed and what to do."""


def one_line(text: object) -> str:
    """Collapse whitespace (newlines included) so a third-party reason fits in a one-line message."""
    return " ".join(str(text).split())
