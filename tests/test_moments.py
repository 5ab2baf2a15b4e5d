"""Tests of dropout_lib.theory.moments: exact means and variances of the two variants.

Notation: keep_prob = p (the paper's keep probability); Keras's rate = 1 - p.
standard: E = p x, Var = p (1 - p) x^2; inverted: E = x, Var = (1 - p) x^2 / p.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dropout_lib import reference as R
from dropout_lib.theory import moments as M

# Hypothesis: enough examples to find edge cases, few enough to stay fast; no
# per-example deadline, since the 2-core test machine is shared.
fast = settings(max_examples=60, deadline=None)

EPS = np.finfo(np.float64).eps
keep_probs = st.floats(min_value=1e-3, max_value=1.0)
# |x| in [1e-100, 1e100] or 0: x**2 and x**2 / p stay normal floats, so the
# roundings below are all relative errors of at most u = EPS / 2
magnitudes = st.floats(1e-100, 1e100)
values = st.one_of(st.just(0.0), magnitudes, magnitudes.map(lambda v: -v))
arrays = hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=5), elements=values)
variants = st.sampled_from(R.VARIANTS)


@fast
@given(x=arrays, p=keep_probs)
def test_standard_enumeration_is_exactly_the_closed_form(x, p):
    # f(1) = x and f(0) = 0 exactly, so the exact enumerated moments are p x and
    # p (1 - p) x^2; rounded once, they equal the correctly rounded closed forms
    enum = M.enumerate_moments("standard", x, p)
    np.testing.assert_array_equal(enum.mean, M.output_mean("standard", x, p, exact=True))
    np.testing.assert_array_equal(enum.variance, M.output_variance("standard", x, p, exact=True))
    # and the mean is what inference computes: one multiplication, fl(p x)
    np.testing.assert_array_equal(enum.mean, R.standard_dropout(x, p, training=False))


@fast
@given(x=arrays, p=keep_probs)
def test_inverted_enumeration_is_within_rounding_of_the_closed_form(x, p):
    # f(1) = fl(x / p) = (x / p)(1 + d), |d| <= u: the mean p fl(x/p) rounds to x
    # or a neighbour (1 ulp); the variance is off by (1+u)^3/(1-u) - 1 < 2 EPS (1 + EPS)
    enum = M.enumerate_moments("inverted", x, p)
    np.testing.assert_array_max_ulp(enum.mean, R.inverted_dropout(x, p, training=False), maxulp=1)
    np.testing.assert_allclose(
        enum.variance, M.output_variance("inverted", x, p, exact=True), rtol=2 * EPS * (1 + EPS), atol=0
    )


@fast
@given(x=arrays, p=keep_probs, variant=variants)
def test_float_and_exact_closed_forms_agree(x, p, variant):
    # the float closed forms take at most 4 roundings: relative error < 5 u
    np.testing.assert_allclose(
        M.output_mean(variant, x, p), M.output_mean(variant, x, p, exact=True), rtol=2.5 * EPS, atol=0
    )
    np.testing.assert_allclose(
        M.output_variance(variant, x, p), M.output_variance(variant, x, p, exact=True), rtol=2.5 * EPS, atol=0
    )


@fast
@given(x=arrays, p=keep_probs, variant=variants)
def test_float_enumeration_is_close_to_exact(x, p, variant):
    flt = M.enumerate_moments(variant, x, p, exact=False)
    ex = M.enumerate_moments(variant, x, p, exact=True)
    assert flt.mean.dtype == flt.variance.dtype == np.float64
    # f(0) = 0, so the float mean is the single product fl(p f(1)): within 1 ulp
    # of the correctly rounded exact mean
    np.testing.assert_array_max_ulp(flt.mean, ex.mean, maxulp=1)
    # the float variance p (f1 - mu)^2 + (1 - p) mu^2: the mean's relative error u
    # costs each term at most 2u of the variance p (1 - p) f1^2 (the cancellation in
    # f1 - mu when p -> 1 is absorbed by the factor 1 - p), plus 5 roundings, plus
    # the exact side's one: under 10 u in all; allow 16 u = 8 EPS
    np.testing.assert_allclose(flt.variance, ex.variance, rtol=8 * EPS, atol=0)


fractions = st.fractions(min_value=-10, max_value=10, max_denominator=50)
fraction_probs = st.fractions(min_value=0, max_value=1, max_denominator=50).filter(lambda q: q > 0)


@fast
@given(a=fractions, b=fractions, p=fraction_probs)
def test_two_point_moments_lemma_exactly(a, b, p):
    m = M.two_point_moments(a, b, p)
    assert m.mean == p * a + (1 - p) * b
    assert m.variance == p * (1 - p) * (a - b) ** 2


@fast
@given(x=fractions, p=fraction_probs)
def test_scale_free_ratio_is_the_same_for_both_variants(x, p):
    std = M.two_point_moments(x, 0, p)
    inv = M.two_point_moments(x / p, 0, p)
    assert inv.mean == std.mean / p and inv.variance == std.variance / p**2
    if x != 0:
        assert std.variance / std.mean**2 == inv.variance / inv.mean**2 == (1 - p) / p


def test_closed_forms_on_a_known_case():
    x = np.array([2.0, -1.0])
    np.testing.assert_array_equal(M.output_mean("standard", x, 0.5), [1.0, -0.5])
    np.testing.assert_array_equal(M.output_mean("inverted", x, 0.5), x)
    np.testing.assert_array_equal(M.output_variance("standard", x, 0.5), [1.0, 0.25])
    np.testing.assert_array_equal(M.output_variance("inverted", x, 0.5), [4.0, 1.0])
    np.testing.assert_array_equal(M.output_variance("standard", x, 1.0), [0.0, 0.0])


@fast
@given(x=arrays)
def test_as_fractions_and_back_is_exact(x):
    q = M.as_fractions(x)
    assert q.shape == x.shape and q.dtype == object
    assert all(isinstance(v, Fraction) for v in q.ravel())
    np.testing.assert_array_equal(M.to_float64(q), x)


def test_to_float64_rounds_correctly():
    # 1/3 is not a float: the nearest float is 0.3333333333333333
    assert M.to_float64(np.array([Fraction(1, 3)], dtype=object))[0] == 1 / 3
    # halfway between 1 and the next float rounds to even (1.0)
    assert M.to_float64(np.array([1 + Fraction(1, 2**53)], dtype=object))[0] == 1.0


def test_as_fractions_rejects_non_finite():
    with pytest.raises(ValueError, match="nan or inf"):
        M.as_fractions([1.0, float("nan")])


@pytest.mark.parametrize("variant", R.VARIANTS)
def test_sample_training_outputs(variant):
    x = np.array([-1.5, 0.0, 2.0])
    y = M.sample_training_outputs(variant, x, 0.8, 500, rng=3)
    again = M.sample_training_outputs(variant, x, 0.8, 500, rng=np.random.default_rng(3))
    assert y.shape == (500, 3)
    np.testing.assert_array_equal(y, again)
    kept = x / 0.8 if variant == "inverted" else x
    assert np.all((y == 0) | (y == kept)), "each output is 0 or the kept value"
    assert 0 < np.mean(y[:, 0] != 0) < 1, "rows draw independent masks"


def test_validation():
    with pytest.raises(ValueError, match="variant must be one of"):
        M.output_mean("keras", [1.0], 0.5)
    with pytest.raises(ValueError, match="variant must be one of"):
        M.enumerate_moments("paper", [1.0], 0.5)
    with pytest.raises(ValueError, match="keep_prob must be in"):
        M.output_variance("standard", [1.0], 0.0)
    with pytest.raises(ValueError, match="keep_prob must be in"):
        M.two_point_moments(1.0, 0.0, Fraction(3, 2))
    with pytest.raises(ValueError, match="keep_prob must be in"):
        M.two_point_moments(1.0, 0.0, 1.5)
    with pytest.raises(ValueError, match="n_draws must be a positive integer"):
        M.sample_training_outputs("standard", [1.0], 0.5, 0)
