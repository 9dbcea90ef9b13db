"""Welch's t-test, against values computed by hand from its formulas (and, where noted, the t distribution's
closed forms)."""

import math

import pytest

from mae.jobs.welch import regularized_incomplete_beta, t_two_sided_p, welch


def test_the_statistic_and_degrees_of_freedom_by_hand():
    # Means 2 and 16/3, variances 1 and 7/3: s^2/n = 1/3 and 7/9, t = (-10/3) / sqrt(10/9), and
    # df = (10/9)^2 / ((1/3)^2 / 2 + (7/9)^2 / 2) = 3.3898...
    result = welch([1.0, 2.0, 3.0], [4.0, 5.0, 7.0])
    assert result.difference == pytest.approx(-10 / 3)
    assert result.t == pytest.approx(-(10 / 3) / math.sqrt(10 / 9))
    assert result.degrees_of_freedom == pytest.approx((10 / 9) ** 2 / ((1 / 3) ** 2 / 2 + (7 / 9) ** 2 / 2))


def test_p_values_of_the_t_distribution_in_closed_form():
    # One degree of freedom is the Cauchy distribution: P(|T| >= t) = 1 - 2 atan(t) / pi.
    for t in (0.0, 0.5, 1.0, 3.0, 20.0):
        assert t_two_sided_p(t, 1.0) == pytest.approx(1 - 2 * math.atan(t) / math.pi, abs=1e-12)
    # Two degrees of freedom: P(|T| >= t) = 1 - t / sqrt(2 + t^2).
    for t in (0.3, 1.0, 4.0):
        assert t_two_sided_p(t, 2.0) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)
    assert regularized_incomplete_beta(2.0, 3.0, 0.0) == 0.0 and regularized_incomplete_beta(2.0, 3.0, 1.0) == 1.0
    # I_x(1, 1) = x.
    assert regularized_incomplete_beta(1.0, 1.0, 0.37) == pytest.approx(0.37)


def test_too_few_seeds_give_no_test_and_identical_seeds_a_certain_one():
    assert welch([1.0], [2.0, 3.0]) is None
    same = welch([1.0, 1.0], [1.0, 1.0])
    assert same.t == 0.0 and same.p_value == 1.0
    apart = welch([2.0, 2.0], [1.0, 1.0])
    assert apart.t == math.inf and apart.p_value == 0.0
