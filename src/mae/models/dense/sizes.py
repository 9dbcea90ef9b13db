"""Image and window sizes given as one side or a ``(height, width)`` pair."""

from __future__ import annotations

from collections.abc import Sequence


def size_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``(height, width)`` of ``value``, one positive side or a pair of them; else a one-line ``ValueError``."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name}={value} must be a positive side or a (height, width) pair of them")
    return pair
