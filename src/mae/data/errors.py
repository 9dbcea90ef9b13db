"""Errors raised by the data modules; every message is a single line the user can act on."""

from __future__ import annotations

from numbers import Integral

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from mae.runs.failures import one_line as one_line  # re-exported: the data modules' messages use it


class CorruptDataError(ValueError):
    """A data file exists but cannot be read; ``str()`` is one line that names the file."""


COMMAND_LINE_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    ValueError,
    TypeError,
    HydraException,
    OmegaConfBaseException,
)
"""What the data command lines (shards, scenes) report as one ``error:`` line and exit 2: bad paths, values and
overrides (:class:`CorruptDataError` is a ``ValueError``)."""


class TooFewImagesError(ValueError):
    """The training set cannot fill one global batch, so an epoch would train on nothing; raised when the training
    loader is built (the start of ``fit``), before any step."""


def check_int(name: str, value: int, minimum: int) -> int:
    """``value`` as an int, or a one-line ``ValueError`` naming it when below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer of at least {minimum}")
    return int(value)


def check_optional_limit(name: str, value: int | None) -> int | None:
    """A sample cap: ``None`` (use everything) or a positive integer."""
    return None if value is None else check_int(name, value, 1)
