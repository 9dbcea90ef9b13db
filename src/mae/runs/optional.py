"""The optional dependencies: what the core install leaves out, and the one-line error that names the extra.

The core install (``pip install mae-lightning``) runs the default job: pre-training on Fashion-MNIST with the kNN
evaluation, the CSV logger and reconstruction grids. Every other feature imports its package through
:func:`require`, never with an ``import`` statement (tests/test_optional_dependencies.py checks both), so that a
missing package stops the program with one line, e.g.::

    error: streaming shards (data=*_stream) needs litdata: pip install 'mae-lightning[streaming]' (from a checkout: pip install -e '.[streaming]')

:class:`MissingExtraError` is a ``ModuleNotFoundError`` (``except ImportError`` still catches it) and a
``ValueError``: the entry points already turn bad input (``ValueError``, see ``mae.jobs.harness.SETUP_ERRORS``) into
one ``error:`` line and exit code 2 before any work starts, and a missing extra is reported the same way.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

DISTRIBUTION = "mae-lightning"
"""The name pip installs this project under (pyproject.toml's ``project.name``)."""

TARGET_REQUIREMENTS = {
    # logger=tensorboard: Lightning's logger imports tensorboard (or tensorboardX) only when it is built, with a
    # multi-line error; checked before the logger is instantiated instead.
    "lightning.pytorch.loggers.TensorBoardLogger": ("tensorboard", "tensorboard", "logger=tensorboard"),
    "lightning.pytorch.loggers.tensorboard.TensorBoardLogger": ("tensorboard", "tensorboard", "logger=tensorboard"),
}
"""Config ``_target_`` -> (module, extra, feature) for objects of other libraries that need an optional package."""

ALTERNATIVES = {"tensorboard": "tensorboardX"}
"""A module that serves instead of the required one (Lightning's TensorBoardLogger writes with either)."""


class MissingExtraError(ModuleNotFoundError, ValueError):
    """An optional package is not installed; ``str()`` is one line naming the feature, the package and the extra."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """``module`` imported (e.g. ``"litdata"`` or ``"scipy.io"``), or a :class:`MissingExtraError` saying that
    ``feature`` needs its package and ``pip install 'mae-lightning[<extra>]'`` installs it."""
    package = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        install = install_command(extra)
        message = f"{feature} needs {package}: {install}"
        missing = error.name or ""
        if missing != package and not missing.startswith(f"{package}."):
            # The package is there but one of its own imports failed: say which, still on one line.
            reason = " ".join(str(error).split())
            message = f"{feature} needs {package}, whose import failed ({reason}): {install}"
        raise MissingExtraError(message, name=package) from error


def install_command(extra: str) -> str:
    """How to install ``extra``: the package's, and the checkout's (an editable install, as ``make setup`` does)."""
    return f"pip install '{DISTRIBUTION}[{extra}]' (from a checkout: pip install -e '.[{extra}]')"


def check_target(node: Any) -> None:
    """Raise :class:`MissingExtraError` when a config node's ``_target_`` needs an optional package that is not
    installed (see :data:`TARGET_REQUIREMENTS`); anything else passes."""
    target = node.get("_target_") if hasattr(node, "get") else None
    if target not in TARGET_REQUIREMENTS:
        return
    module, extra, feature = TARGET_REQUIREMENTS[target]
    try:
        require(module, extra, feature)
    except MissingExtraError:
        alternative = ALTERNATIVES.get(module)
        if alternative is None or not _importable(alternative):
            raise


def missing_extra(error: BaseException | None) -> MissingExtraError | None:
    """The :class:`MissingExtraError` behind ``error`` (itself, or a cause: Hydra wraps the error of an import it
    made, e.g. of a ``_target_``'s module), or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, MissingExtraError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
