"""Tests of dropout_lib.reference: the numpy reference dropouts.

Notation: keep_prob = p (the paper's keep probability); Keras's rate = 1 - p.

standard (the paper's): training m * x, inference p * x;
inverted (Keras's):     training m * x / p, inference x.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dropout_lib import reference as R

# Hypothesis: enough examples to find edge cases, few enough to stay fast; no
# per-example deadline, since the 2-core test machine is shared.
fast = settings(max_examples=60, deadline=None)

FUNCS = {"standard": R.standard_dropout, "inverted": R.inverted_dropout}

keep_probs = st.floats(min_value=1e-3, max_value=1.0)
values = st.floats(-1e100, 1e100, allow_nan=False, allow_infinity=False, allow_subnormal=False)
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5)
arrays = hnp.arrays(np.float64, shapes, elements=values)
bits = st.sampled_from([0.0, 1.0])
variants = st.sampled_from(R.VARIANTS)


# --------------------------------------------------------------------------- #
# the definitions, with given masks
# --------------------------------------------------------------------------- #


@fast
@given(x=arrays, p=keep_probs, data=st.data())
def test_training_with_given_mask_is_the_definition(x, p, data):
    mask = data.draw(hnp.arrays(np.float64, x.shape, elements=bits))
    std = R.standard_dropout(x, p, training=True, mask=mask)
    inv = R.inverted_dropout(x, p, training=True, mask=mask)
    np.testing.assert_array_equal(std, mask * x)
    np.testing.assert_array_equal(inv, mask * x / p)
    # one random variable, two scales: m x / p = (m x) / p, and m x is exact
    np.testing.assert_array_equal(inv, std / p)


@fast
@given(x=arrays, p=keep_probs)
def test_inference_is_p_x_and_identity(x, p):
    std = R.standard_dropout(x, p, training=False)
    inv = R.inverted_dropout(x, p, training=False)
    np.testing.assert_array_equal(std, p * x)
    np.testing.assert_array_equal(inv, x)
    assert inv is not x and not np.shares_memory(inv, x), "inference must return a copy"


@fast
@given(x=arrays, variant=variants, data=st.data())
def test_keep_prob_one_is_the_identity(x, variant, data):
    mask = data.draw(hnp.arrays(np.float64, x.shape, elements=st.just(1.0)))
    np.testing.assert_array_equal(R.dropout(variant, x, 1.0, training=True, mask=mask), x)
    np.testing.assert_array_equal(R.dropout(variant, x, 1.0, training=True, rng=0), x)
    np.testing.assert_array_equal(R.dropout(variant, x, 1.0, training=False), x)


@fast
@given(x=arrays, p=keep_probs, variant=variants, training=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_dropout_dispatches_by_name(x, p, variant, training, seed):
    np.testing.assert_array_equal(
        R.dropout(variant, x, p, training=training, rng=seed),
        FUNCS[variant](x, p, training=training, rng=seed),
    )


def test_mask_shared_across_a_batch_broadcasts():
    x = np.arange(12.0).reshape(3, 4)
    mask = np.array([[1.0, 0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(R.standard_dropout(x, 0.5, training=True, mask=mask), x * mask)
    np.testing.assert_array_equal(R.inverted_dropout(x, 0.5, training=True, mask=mask), x * mask * 2.0)


def test_boolean_mask_is_accepted():
    x = np.array([1.0, 2.0, 3.0])
    out = R.inverted_dropout(x, 0.5, training=True, mask=np.array([True, False, True]))
    np.testing.assert_array_equal(out, [2.0, 0.0, 6.0])


@pytest.mark.parametrize("variant", R.VARIANTS)
def test_dtypes(variant):
    x32 = np.array([1.0, -2.0, 3.0], dtype=np.float32)
    assert R.dropout(variant, x32, 0.8, training=True, rng=0).dtype == np.float32
    assert R.dropout(variant, x32, 0.8, training=False).dtype == np.float32
    assert R.dropout(variant, [1, 2, 3], 0.8, training=True, rng=0).dtype == np.float64
    assert R.dropout(variant, [1, 2, 3], 0.8, training=False).dtype == np.float64


# --------------------------------------------------------------------------- #
# seeded masks
# --------------------------------------------------------------------------- #


@fast
@given(x=arrays, p=keep_probs, variant=variants, seed=st.integers(0, 2**32 - 1))
def test_seeded_output_uses_sample_mask(x, p, variant, seed):
    out = R.dropout(variant, x, p, training=True, rng=seed)
    again = R.dropout(variant, x, p, training=True, rng=np.random.default_rng(seed))
    mask = R.sample_mask(x.shape, p, seed)
    np.testing.assert_array_equal(out, again)
    np.testing.assert_array_equal(out, R.dropout(variant, x, p, training=True, mask=mask))
    assert set(np.unique(mask)) <= {0.0, 1.0}


def test_a_generator_advances_between_calls():
    rng = np.random.default_rng(0)
    x = np.ones(200)
    first = R.inverted_dropout(x, 0.5, training=True, rng=rng)
    second = R.inverted_dropout(x, 0.5, training=True, rng=rng)
    # equal by chance with probability 2**-200
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.8, 0.95])
def test_mask_frequency_is_p(p):
    # The kept fraction of n Bernoulli(p) draws has standard error sqrt(p(1-p)/n);
    # |z| < 5 has false-alarm probability 5.7e-7 per case (normal approximation).
    n = 200_000
    mask = R.sample_mask((n,), p, rng=12345)
    z = (mask.mean() - p) / math.sqrt(p * (1 - p) / n)
    assert abs(z) < 5, f"kept fraction {mask.mean()} is {z:.1f} standard errors from p = {p}"


# --------------------------------------------------------------------------- #
# validation: bad keep_prob, bad mask, mask at inference
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("variant", R.VARIANTS)
@pytest.mark.parametrize("bad", [0.0, -0.1, 1.0000001, 1.5, 2, float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("training", [True, False])
def test_keep_prob_outside_unit_interval_is_rejected(variant, bad, training):
    with pytest.raises(ValueError, match=r"keep_prob must be in \(0, 1\]") as info:
        FUNCS[variant]([1.0, 2.0], bad, training=training, rng=0)
    assert repr(bad) in str(info.value), "the message must name the bad value"
    assert "rate" in str(info.value), "the message must say how Keras's rate relates"


@fast
@given(bad=st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True)), variant=variants)
def test_any_keep_prob_outside_unit_interval_is_rejected(bad, variant):
    with pytest.raises(ValueError, match="keep_prob"):
        R.dropout(variant, [1.0], bad, training=True, rng=0)


@pytest.mark.parametrize("bad", [None, [0.5], object(), 1j])
def test_keep_prob_of_wrong_type_is_rejected(bad):
    with pytest.raises(TypeError, match="keep_prob must be a real number"):
        R.standard_dropout([1.0], bad, training=True, rng=0)


@pytest.mark.parametrize("variant", R.VARIANTS)
@pytest.mark.parametrize("shape", [(2,), (3, 1), (2, 4), (1, 3, 3), (4, 3)])
def test_mask_of_wrong_shape_is_rejected(variant, shape):
    x = np.ones((2, 3))  # (3,) or (1, 3) would be valid: one mask shared by the batch
    with pytest.raises(ValueError, match="does not broadcast") as info:
        FUNCS[variant](x, 0.5, training=True, mask=np.ones(shape))
    assert str(shape) in str(info.value) and "(2, 3)" in str(info.value)


@pytest.mark.parametrize("variant", R.VARIANTS)
@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0, 1.25, float("nan")])
def test_non_binary_mask_is_rejected(variant, bad):
    # 1.25 = 1/0.8 is a mask already rescaled for inverted dropout: a classic double scaling.
    with pytest.raises(ValueError, match="mask must be binary"):
        FUNCS[variant]([1.0, 2.0, 3.0], 0.8, training=True, mask=[1.0, bad, 0.0])


@pytest.mark.parametrize("variant", R.VARIANTS)
def test_mask_with_training_false_is_rejected(variant):
    with pytest.raises(ValueError, match="training=False"):
        FUNCS[variant]([1.0, 2.0], 0.5, training=False, mask=[1.0, 0.0])


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="variant must be one of"):
        R.dropout("keras", [1.0], 0.5, training=True, rng=0)


# --------------------------------------------------------------------------- #
# Keras's rate <-> the paper's keep probability
# --------------------------------------------------------------------------- #


@fast
@given(rate=st.floats(0.0, 1.0, exclude_max=True))
def test_keep_prob_from_rate(rate):
    assert R.keep_prob_from_rate(rate) == 1.0 - rate


@fast
@given(p=st.floats(0.0, 1.0, exclude_min=True))
def test_rate_from_keep_prob(p):
    assert R.rate_from_keep_prob(p) == 1.0 - p


def test_keras_default_example():
    assert R.keep_prob_from_rate(0.2) == 0.8
    assert R.keep_prob_from_rate(0.0) == 1.0


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan"), float("inf")])
def test_rate_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        R.keep_prob_from_rate(bad)


@pytest.mark.parametrize("bad", [0.0, 1.5, float("nan")])
def test_rate_from_bad_keep_prob_is_rejected(bad):
    with pytest.raises(ValueError, match="keep_prob"):
        R.rate_from_keep_prob(bad)


# --------------------------------------------------------------------------- #
# the one numpy operation against the Keras layers, non-finite inputs included
# --------------------------------------------------------------------------- #


def test_numpy_dropout_matches_the_keras_layers_on_nan_inf_and_signed_zeros():
    """Keras drops with where(): a dropped nan or inf gives 0 (not nan), a dropped
    negative +0.0. The numpy operation does the same. StandardDropout keeps x
    itself: bit for bit. keras.layers.Dropout multiplies by fl(1/p) where numpy
    divides by p: kept entries agree to one rounding, |rel| <= eps (two roundings
    of u = eps/2 each); a kept nan or inf stays nan or inf in both."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from dropout_lib.layers import StandardDropout
    from dropout_lib.twins import drawn_masks

    rate, seed = 0.5, 12
    x = np.array([[np.nan, np.inf, -np.inf, -1.5, 2.0, -0.0, 3.0, np.nan] * 4], dtype=np.float32)
    (mask,) = drawn_masks(keras.layers.Dropout(rate, seed=seed), np.ones_like(x), calls=1)
    assert 0 < mask.sum() < mask.size  # some kept, some dropped
    p = 1 - rate
    std_keras = np.asarray(StandardDropout(rate, seed=seed)(x, training=True))
    inv_keras = np.asarray(keras.layers.Dropout(rate, seed=seed)(x, training=True))
    std_numpy = R.standard_dropout(x, p, training=True, mask=mask)
    inv_numpy = R.inverted_dropout(x, p, training=True, mask=mask)
    dropped = mask == 0
    for ours, theirs in ((std_numpy, std_keras), (inv_numpy, inv_keras)):
        assert ours.dtype == np.float32
        assert np.all(ours[dropped] == 0) and not np.any(np.signbit(ours[dropped]))
        assert np.array_equal(np.signbit(theirs[dropped]), np.signbit(ours[dropped]))
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_array_equal(std_numpy, std_keras)  # nan == nan for assert_array_equal
    finite = np.isfinite(inv_numpy)
    np.testing.assert_array_equal(inv_numpy[~finite], inv_keras[~finite])
    np.testing.assert_allclose(inv_numpy[finite], inv_keras[finite], rtol=np.finfo(np.float32).eps, atol=0)
    # the old m * x would have kept a dropped nan: the check can fail
    assert np.isnan((mask * x)[dropped & np.isnan(x)]).any()
