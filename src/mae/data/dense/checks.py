"""What the dense-task data modules and readers check alike: sizes, probabilities, the input's channels and
normalisation, and a sample of each split loaded before a run trains. Each refusal is one line naming the value."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from mae.data.transforms import check_normalization


class Indexable(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> object: ...


def int_pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    """An int ``n`` as ``(n, n)`` or two ints, each at least 1; one line naming ``value`` otherwise."""
    values = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name}={value!r} must be a positive integer or two of them")
    return values[0], values[1]


def check_ratio_range(ratio_range: Sequence[float]) -> tuple[float, float]:
    values = tuple(float(v) for v in ratio_range)
    if len(values) != 2 or not 0.0 < values[0] <= values[1]:
        raise ValueError(f"ratio_range={list(ratio_range)} must be two numbers with 0 < low <= high")
    return values[0], values[1]


def check_probability(name: str, value: float, low_open: bool = False) -> float:
    """A number in [0, 1] (``(0, 1]`` with ``low_open``); bools are refused (``true`` is not a probability)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (0 < value <= 1 if low_open else 0 <= value <= 1)
    ):
        raise ValueError(f"{name}={value!r} must be a number in {'(0, 1]' if low_open else '[0, 1]'}")
    return float(value)


def check_input(
    in_chans: int, mean: Sequence[float], std: Sequence[float], task: str
) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """``(in_chans, mean, std)`` of a dense task's images: 1 or 3 channels and one explicit normalisation number per
    channel (``auto`` is refused: the encoder expects its pre-training's numbers, which ``task`` data cannot give)."""
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans={in_chans} must be 1 (grayscale) or 3 (RGB)")
    checked_mean, checked_std = check_normalization(mean, std, in_chans)
    if checked_mean is None or checked_std is None:
        raise ValueError(f"mean=auto and std=auto are not available for {task} data: give the pre-training's")
    return in_chans, checked_mean, checked_std


def load_evenly_spaced(dataset: Indexable, samples: int) -> None:
    """Load ``samples`` items evenly spaced over ``dataset`` (all when fewer, the first and last among them), so
    that a bad file among them stops a run before it trains; every other item is checked when it is loaded."""
    count = min(samples, len(dataset))
    for position in range(count):
        dataset[position * (len(dataset) - 1) // max(count - 1, 1)]
