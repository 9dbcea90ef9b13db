"""Readers of the metadata formats the transfer datasets ship in (pickle, JSON, MATLAB, whitespace-separated text).

Each reader turns any failure to parse into a :class:`~mae.data.errors.CorruptDataError` whose one-line message
names the file, so a damaged download is reported as such rather than as a stack trace from deep inside a parser.
"""

from __future__ import annotations

import codecs
import importlib
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mae.data.errors import CorruptDataError, one_line
from mae.runs.optional import require


def corrupt(path: Path, problem: str) -> CorruptDataError:
    """The error for a file that exists but does not hold what its format promises."""
    return CorruptDataError(f"corrupt {path}: {one_line(problem)}")


def _numpy_global(module: str, name: str) -> Any:
    """``module.name`` of numpy, wherever this numpy version keeps it (``numpy.core``, which the release's pickles
    name, became ``numpy._core`` in numpy 2 and warns when imported)."""
    for candidate in (module.replace("numpy.core", "numpy._core"), module.replace("numpy._core", "numpy.core")):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {module}.{name}")


ARRAY_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)
"""The only globals a dataset pickle may name: what numpy arrays, numpy scalars and (protocol 2, written by Python
3) bytes are rebuilt from. None of them runs code named in the file; everything else a pickle can hold (dicts,
lists, strings, bytes, numbers) needs no global at all."""


class DataUnpickler(pickle.Unpickler):
    """An unpickler for files that are data: a global outside :data:`ARRAY_GLOBALS` (a function to call, a class to
    build) is refused before it is imported, so a dataset file one was handed cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ARRAY_GLOBALS:
            raise pickle.UnpicklingError(
                f"it asks for the global {module}.{name}; dataset pickles may hold only "
                "arrays, lists, strings, bytes and numbers"
            )
        if module == "_codecs":
            return codecs.encode
        return _numpy_global(module, name)


def read_pickle(path: Path) -> Any:
    """A Python pickle of plain data, decoded as torchvision does (``latin1``: the CIFAR batches are Python 2
    pickles), through :class:`DataUnpickler`: anything but arrays, lists, dicts, strings, bytes and numbers is
    refused with one line naming the file, never run. A dict's ``bytes`` keys (a Python 3 re-pickle of a batch
    read with ``encoding="bytes"``) become ``str`` as the release's keys do."""
    try:
        with open(path, "rb") as f:
            content = DataUnpickler(f, encoding="latin1").load()
    except OSError as error:
        raise corrupt(path, f"cannot read it: {error}") from error
    except pickle.UnpicklingError as error:
        raise corrupt(path, f"not a plain-data pickle: {error}") from error
    except Exception as error:  # unpickling damaged bytes can raise nearly any exception type
        raise corrupt(path, f"not a readable pickle ({type(error).__name__}: {error})") from error
    if isinstance(content, dict):
        return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}
    return content


def read_json(path: Path) -> Any:
    """A JSON document."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as error:
        raise corrupt(path, f"cannot read it: {error}") from error
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise corrupt(path, f"not valid JSON ({error})") from error


def read_mat(path: Path, *keys: str) -> dict[str, np.ndarray]:
    """The named variables of a MATLAB ``.mat`` file, each flattened to one dimension."""
    loadmat = require("scipy.io", "transfer", f"reading {path.name} (a MATLAB file)").loadmat

    try:
        content = loadmat(path)
    except Exception as error:  # scipy raises IndexError, OSError, MatReadError, ... on damaged bytes
        raise corrupt(path, f"not a readable MATLAB file ({type(error).__name__}: {error})") from error
    absent = [key for key in keys if key not in content]
    if absent:
        raise corrupt(path, f"no variable {', '.join(absent)} (found: {', '.join(sorted(content)) or 'none'})")
    return {key: np.asarray(content[key]).ravel() for key in keys}


def read_rows(path: Path, fields: int) -> Iterator[tuple[int, list[str]]]:
    """``(line number, the first fields words)`` of every line of a text file with at least ``fields`` words.

    Blank lines and ``#`` comments (the headers of the Oxford-IIIT Pets lists) are skipped. A generator: the
    Places365 training list has 1.8M lines, and callers keep only what they need of each.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise corrupt(path, f"cannot read it: {error}") from error
    except UnicodeDecodeError as error:
        raise corrupt(path, f"not a text file ({error})") from error
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) < fields:
            raise corrupt(path, f"line {number} has {len(words)} of {fields} fields: {line[:80]!r}")
        yield number, words[:fields]


def parse_int(path: Path, number: int, text: str) -> int:
    """An integer field of line ``number`` of ``path``."""
    try:
        return int(text)
    except ValueError:
        raise corrupt(path, f"line {number}: {text[:40]!r} is not an integer") from None


def labelled_rows(path: Path, fields: int, label_offset: int = 0) -> list[tuple[int, str, int]]:
    """``(line number, first word, label)`` of every row of a list file whose second word is a class number;
    ``label_offset`` is subtracted (1 for 1-based files) so that labels start at 0."""
    rows = []
    for number, words in read_rows(path, fields):
        label = parse_int(path, number, words[1]) - label_offset
        if label < 0:
            raise corrupt(path, f"line {number}: class {words[1]} is below {label_offset}")
        rows.append((number, words[0], label))
    return rows


def check_labels(path: Path, rows: list[tuple[int, str, int]], num_classes: int, label_offset: int = 0) -> None:
    """Every label of ``rows`` (from :func:`labelled_rows`) must name one of the ``num_classes`` classes."""
    for number, _, label in rows:
        if label >= num_classes:
            raise corrupt(
                path,
                f"line {number}: class {label + label_offset} outside {label_offset}-{num_classes - 1 + label_offset}",
            )


def names_by_label(path: Path, named: list[tuple[int, str, int]], label_offset: int = 0) -> list[str]:
    """Class names indexed by label from ``(line number, name, label)`` rows: one name per label, and the labels
    must be exactly ``0 .. K-1`` (a gap means a damaged or truncated list). Messages show labels as the file
    numbers them (``label_offset`` added back)."""
    names: dict[int, str] = {}
    for number, name, label in named:
        if names.setdefault(label, name) != name:
            raise corrupt(path, f"line {number}: class {label + label_offset} is both {names[label]!r} and {name!r}")
    if not names:
        raise corrupt(path, "no classes listed")
    absent = sorted(set(range(len(names))) - set(names))
    if absent:
        raise corrupt(
            path, f"classes numbered up to {max(names) + label_offset} but class {absent[0] + label_offset} is absent"
        )
    return [names[label] for label in range(len(names))]
