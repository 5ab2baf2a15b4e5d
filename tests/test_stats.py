"""Tests of dropout_lib.theory.stats: Monte Carlo estimates, standard errors, z-scores.

The standard error of the sample variance rests on the formula
Var(s^2) = (mu_4 - (n-3)/(n-1) sigma^4) / n; it is checked here exactly, in
rational arithmetic, by enumerating every sample of small discrete
distributions. The plug-in standard errors are checked for calibration.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dropout_lib.theory import stats

# Hypothesis: enough examples to find edge cases, few enough to stay fast; no
# per-example deadline, since the 2-core test machine is shared.
fast = settings(max_examples=60, deadline=None)

EPS = np.finfo(np.float64).eps
# 0 or |y| in [1e-20, 1e3]: the smallest nonzero deviation is then about
# 1e-36, so fourth powers (even scaled by 2**-80) stay normal floats; every
# rounding is a relative error of at most u = EPS / 2
_magnitudes = st.floats(1e-20, 1e3)
moderate = st.one_of(st.just(0.0), _magnitudes, _magnitudes.map(lambda v: -v))
samples_1d = hnp.arrays(np.float64, st.integers(2, 60), elements=moderate)


# --------------------------------------------------------------------------- #
# sample mean and variance against exact rational arithmetic
# --------------------------------------------------------------------------- #


def _exact_mean_var(y):
    q = [Fraction(v) for v in y]
    n = len(q)
    mean = sum(q) / n
    return mean, sum((v - mean) ** 2 for v in q) / (n - 1)


@fast
@given(y=samples_1d)
def test_sample_mean_and_variance_match_exact_values(y):
    n = y.size
    scale = float(np.abs(y).max())
    mean, var = _exact_mean_var(y)
    m, v = stats.sample_mean(y), stats.sample_variance(y)
    assert m.n == v.n == n
    # a computed sum of n terms is within gamma_n sum|y_i| <= n u n max|y| of the
    # exact sum; dividing by n adds one rounding: |error| <= (n + 1) u max|y|.
    assert abs(float(m.value) - float(mean)) <= (n + 1) * EPS * scale
    # the variance: (n + 3) roundings per term relative to sum (y - ybar)^2, plus
    # the mean's error delta, which adds n delta^2 / (n - 1) (the cross term is 0).
    delta = (n + 1) * EPS * scale
    tol = 2 * (n + 3) * EPS * float(var) + 2 * n * delta**2 / (n - 1)
    assert abs(float(v.value) - float(var)) <= tol
    np.testing.assert_allclose(m.standard_error, math.sqrt(max(float(v.value), 0) / n), rtol=4 * EPS)


def test_axis_and_shapes():
    y = np.random.default_rng(0).normal(size=(5, 100, 3))
    m = stats.sample_mean(y, axis=1)
    v = stats.sample_variance(y, axis=-2)
    assert m.value.shape == m.standard_error.shape == (5, 3) and m.n == 100
    assert v.value.shape == v.standard_error.shape == (5, 3) and v.n == 100
    np.testing.assert_array_equal(m.value, y.mean(axis=1))
    np.testing.assert_allclose(v.value, y.var(axis=1, ddof=1), rtol=1e-14)


@fast
@given(y=samples_1d, k=st.integers(-20, 20))
def test_scaling_by_a_power_of_two_is_exact(y, k):
    # multiplying by 2**k commutes with every rounding: values and standard errors
    # scale by 2**k (mean) and 4**k (variance) bit for bit
    c = 2.0**k
    m, m2 = stats.sample_mean(y), stats.sample_mean(c * y)
    v, v2 = stats.sample_variance(y), stats.sample_variance(c * y)
    np.testing.assert_array_equal(m2.value, c * m.value)
    np.testing.assert_array_equal(m2.standard_error, c * m.standard_error)
    np.testing.assert_array_equal(v2.value, c * c * v.value)
    np.testing.assert_array_equal(v2.standard_error, c * c * v.standard_error)


@fast
@given(y=samples_1d)
def test_standard_errors_are_nonnegative_and_zero_only_for_constant_samples(y):
    m, v = stats.sample_mean(y), stats.sample_variance(y)
    assert m.standard_error >= 0 and v.standard_error >= 0
    if np.all(y == y[0]):
        assert m.standard_error == 0 and v.standard_error == 0 and v.value == 0


# --------------------------------------------------------------------------- #
# Var(s^2) = (mu_4 - (n-3)/(n-1) sigma^4) / n, exactly, by enumeration
# --------------------------------------------------------------------------- #

fractions = st.fractions(min_value=-5, max_value=5, max_denominator=16)
probabilities = st.lists(st.integers(1, 9), min_size=2, max_size=3)


@fast
@given(
    support=st.lists(fractions, min_size=3, max_size=3, unique=True),
    weights=probabilities,
    n=st.integers(2, 4),
)
def test_variance_of_sample_variance_formula_is_exact(support, weights, n):
    support = support[: len(weights)]
    total = sum(weights)
    probs = [Fraction(w, total) for w in weights]
    mu = sum(q * a for q, a in zip(probs, support))
    sigma2 = sum(q * (a - mu) ** 2 for q, a in zip(probs, support))
    mu4 = sum(q * (a - mu) ** 4 for q, a in zip(probs, support))
    # the exact distribution of s^2 over all len(support)**n samples
    e1 = e2 = Fraction(0)
    for idx in itertools.product(range(len(support)), repeat=n):
        weight = math.prod(probs[i] for i in idx)
        _, s2 = _exact_mean_var([support[i] for i in idx])
        e1 += weight * s2
        e2 += weight * s2 * s2
    assert e1 == sigma2, "s^2 must be unbiased"
    assert e2 - e1 * e1 == stats.variance_of_sample_variance(sigma2, mu4, n)


def test_variance_of_sample_variance_normal_case():
    # normal draws: mu_4 = 3 sigma^4 gives 2 sigma^4 / (n - 1)
    for n in (2, 3, 10, 1000):
        assert stats.variance_of_sample_variance(Fraction(1), Fraction(3), n) == Fraction(2, n - 1)


@pytest.mark.parametrize("bad", [1, 0, -3, 2.0, True, "5"])
def test_variance_of_sample_variance_rejects_bad_n(bad):
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        stats.variance_of_sample_variance(1.0, 3.0, bad)


# --------------------------------------------------------------------------- #
# calibration: z-scores built from the plug-in standard errors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "name, n, draw, mean, variance",
    [
        ("normal", 500, lambda rng, shape: rng.normal(2.0, 3.0, size=shape), 2.0, 9.0),
        # a dropout output x m / p with x = 1.5, p = 0.05: a skewed two-point variable
        (
            "dropout",
            2000,
            lambda rng, shape: 1.5 * (rng.random(shape) < 0.05) / 0.05,
            1.5,
            0.95 * 1.5**2 / 0.05,
        ),
    ],
)
def test_z_scores_are_calibrated(name, n, draw, mean, variance):
    # R independent experiments of n draws each. If the standard errors are right,
    # about 95.45% of the |z| are below 2. The observed fraction has binomial
    # standard error sqrt(0.9545 * 0.0455 / R) = 0.0033; allow 5 of them.
    R = 4000
    y = draw(np.random.default_rng(7), (n, R))
    z_mean = stats.sample_mean(y).z_scores(mean)
    z_var = stats.sample_variance(y).z_scores(variance)
    target = math.erf(2 / math.sqrt(2))
    tol = 5 * math.sqrt(target * (1 - target) / R)
    for z in (z_mean, z_var):
        assert abs(np.mean(np.abs(z) < 2) - target) < tol, f"{name}: coverage {np.mean(np.abs(z) < 2)}"


def test_normal_theory_error_would_be_miscalibrated_for_dropout():
    # The fourth moment matters: with the normal-theory sqrt(2/(n-1)) s^2 as the
    # standard error, the dropout variable of kurtosis (1 - 3pq)/(pq) = 18 at
    # p = 0.05 has its error understated about sqrt((18 - 1) / 2) = 2.9-fold, so
    # |z| < 2 holds only about as often as |Z| < 2 / 2.9, i.e. ~50% of the time,
    # far outside the tolerance that the plug-in error passes above.
    R, n, p = 4000, 2000, 0.05
    y = 1.5 * (np.random.default_rng(7).random((n, R)) < p) / p
    v = stats.sample_variance(y)
    z_naive = (v.value - (1 - p) * 1.5**2 / p) / (np.sqrt(2 / (n - 1)) * v.value)
    coverage = np.mean(np.abs(z_naive) < 2)
    target = math.erf(2 / math.sqrt(2))
    assert coverage < target - 5 * math.sqrt(target * (1 - target) / R), coverage


# --------------------------------------------------------------------------- #
# z-scores, tails and the family-wise bound
# --------------------------------------------------------------------------- #


def test_z_scores_basic_and_zero_standard_error():
    z = stats.z_scores([1.0, 2.0, 3.0, 3.0], [0.5, 0.0, 0.0, 0.0], [0.0, 2.0, 2.0, 4.0])
    np.testing.assert_array_equal(z, [2.0, 0.0, np.inf, -np.inf])


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_z_scores_reject_bad_standard_error(bad):
    with pytest.raises(ValueError, match="standard_error must be finite and >= 0"):
        stats.z_scores([1.0], [bad], [0.0])


def test_z_scores_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="do not broadcast"):
        stats.z_scores(np.ones(3), np.ones(2), 0.0)


def test_normal_two_sided_tail():
    assert stats.normal_two_sided_tail(0) == 1.0
    assert abs(stats.normal_two_sided_tail(1.959963984540054) - 0.05) < 1e-15
    # 5.733031437583878e-07 is P(|Z| > 5) to 16 digits (2 * Phi(-5))
    assert abs(stats.normal_two_sided_tail(5) / 5.733031437583878e-07 - 1) < 1e-13
    with pytest.raises(ValueError, match="threshold"):
        stats.normal_two_sided_tail(-1)


@fast
@given(t=st.floats(0, 40), k=st.integers(1, 10**6))
def test_family_false_alarm_bound_is_the_union_bound(t, k):
    bound = stats.family_false_alarm_bound(t, k)
    assert bound == min(1.0, k * stats.normal_two_sided_tail(t))
    assert 0 <= bound <= 1


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_family_false_alarm_bound_rejects_bad_k(bad):
    with pytest.raises(ValueError, match="n_comparisons must be a positive integer"):
        stats.family_false_alarm_bound(5.0, bad)


# --------------------------------------------------------------------------- #
# input validation
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("func", [stats.sample_mean, stats.sample_variance])
def test_bad_samples_are_rejected(func):
    with pytest.raises(ValueError, match="at least one dimension"):
        func(1.0)
    with pytest.raises(ValueError, match="at least 2 draws"):
        func([1.0])
    with pytest.raises(ValueError, match="out of range"):
        func(np.ones((3, 2)), axis=2)
    with pytest.raises(ValueError, match="non-finite"):
        func([1.0, float("nan"), 2.0])
