"""Tests of dropout_lib.book.probes (chapter 1's unit checks)."""

import numpy as np
import pytest

from dropout_lib.book import probes


def test_exact_inputs_are_reproducible_and_exact():
    a = probes.exact_inputs(500, np.random.default_rng(3))
    b = probes.exact_inputs(500, np.random.default_rng(3))
    assert a[0] == 0 and a.shape == (500,)
    np.testing.assert_array_equal(a, b)
    mags = np.abs(a[1:])
    assert mags.min() >= 2.0**-10 and mags.max() < 2.0**11
    # each value is a 53-bit integer times a power of two: frexp gives it back exactly
    mant, exp = np.frexp(a[1:])
    ints = mant * 2.0**53
    np.testing.assert_array_equal(ints, np.round(ints))
    assert (a[1:] < 0).any() and (a[1:] > 0).any()


def test_exact_inputs_rejects_bad_n():
    with pytest.raises(ValueError):
        probes.exact_inputs(0, np.random.default_rng(0))


def test_gamma():
    u = 2.0**-53
    assert probes.gamma(1) == pytest.approx(u / (1 - u), rel=1e-15)
    assert probes.gamma(10, np.float32) == pytest.approx(10 * 2.0**-24 / (1 - 10 * 2.0**-24))
    with pytest.raises(ValueError):
        probes.gamma(2**60, np.float16)


def test_fold_check_passes_the_right_fold_and_catches_the_bias():
    rng = np.random.default_rng(0)
    W, h, b = rng.normal(size=(64, 8)), rng.normal(size=64), rng.normal(size=8)
    res = probes.fold_check(W, h, b, 0.8)
    assert res.gap_ratio <= 1 < res.bias_ratio


def test_fold_check_fails_a_wrong_identity():
    # a bound that held for a wrong claim would be useless: with p = 1 the bias
    # is not scaled either, so the "miss" is 0 and the bias check must fail
    rng = np.random.default_rng(1)
    W, h, b = rng.normal(size=(16, 4)), rng.normal(size=16), rng.normal(size=4)
    assert probes.fold_check(W, h, b, 1.0).bias_ratio == 0


def test_fold_check_shapes():
    with pytest.raises(ValueError):
        probes.fold_check(np.ones((3, 2)), np.ones(2), np.ones(2), 0.5)
