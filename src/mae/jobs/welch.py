"""Welch's unequal-variance t-test, for the result tables' claims about a difference between two sets of seeds.

Written out rather than imported: scipy is not a core dependency, and the test is a few lines. The p-value comes
from Student's t distribution through the regularised incomplete beta function (continued fraction, as in
Numerical Recipes' ``betacf``), accurate to about 1e-10, far below what two or three seeds can resolve.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WelchResult:
    difference: float
    """Mean of the first sample minus mean of the second."""
    t: float
    degrees_of_freedom: float
    p_value: float
    """Two-sided."""


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return result


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, degrees_of_freedom: float) -> float:
    """P(|T| >= |t|) for Student's t with ``degrees_of_freedom``."""
    if math.isinf(t):
        return 0.0
    nu = degrees_of_freedom
    return regularized_incomplete_beta(nu / 2.0, 0.5, nu / (nu + t * t))


def welch(first: Sequence[float], second: Sequence[float]) -> WelchResult | None:
    """Welch's t-test of ``mean(first) - mean(second)``; None with fewer than two values on either side."""
    if len(first) < 2 or len(second) < 2:
        return None
    difference = statistics.fmean(first) - statistics.fmean(second)
    var_first, var_second = statistics.variance(first) / len(first), statistics.variance(second) / len(second)
    spread = var_first + var_second
    if spread == 0.0:
        t = 0.0 if difference == 0.0 else math.copysign(math.inf, difference)
        return WelchResult(difference, t, float(len(first) + len(second) - 2), 1.0 if difference == 0.0 else 0.0)
    t = difference / math.sqrt(spread)
    nu = spread**2 / (var_first**2 / (len(first) - 1) + var_second**2 / (len(second) - 1))
    return WelchResult(difference, t, nu, t_two_sided_p(t, nu))
