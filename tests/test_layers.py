"""Tests of dropout_lib.layers.StandardDropout, the paper's dropout as a Keras layer.

Notation: Keras's ``rate`` is the drop probability; keep_prob = p = 1 - rate.
StandardDropout computes ``m * x`` in training and ``p * x`` at inference;
keras.layers.Dropout computes ``m * x * fl(1/p)`` and ``x``.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dropout_lib  # noqa: F401  (silences TensorFlow before it is imported)
from dropout_lib.book import keras_probe as kp
from dropout_lib.layers import StandardDropout

FAST = settings(max_examples=8, deadline=None)
rates = st.floats(0.05, 0.9)
dtypes = st.sampled_from(["float32", "float64"])
seeds = st.integers(0, 2**31 - 1)
SHAPE = (6, 5, 4)
NOISE_SHAPES = [None, (6, 5, 4), (1, 5, 4), (6, 1, 4), (None, 1, None), (1, 1, 1)]


def normal(shape: tuple[int, ...], dtype: str = "float32", seed: int = 0) -> np.ndarray:
    """Standard normal entries, none exactly zero (so y == 0 marks a dropped unit)."""
    x = np.random.default_rng(seed).normal(size=shape).astype(dtype)
    assert np.all(x != 0)
    return x


def np_out(y) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(y))


# --------------------------------------------------------------------------- #
# the twin property: same seed, same masks as keras.layers.Dropout
# --------------------------------------------------------------------------- #


@FAST
@given(
    rate=rates,
    dtype=dtypes,
    seed=seeds,
    noise_shape=st.sampled_from(NOISE_SHAPES),
)
def test_same_seed_draws_the_same_masks_as_keras_dropout_call_after_call(rate, dtype, seed, noise_shape):
    x = normal(SHAPE, dtype, seed % 997)
    ours = StandardDropout(rate, noise_shape=noise_shape, seed=seed, dtype=dtype)
    theirs = keras.layers.Dropout(rate, noise_shape=noise_shape, seed=seed, dtype=dtype)
    for _ in range(3):
        y_std = np_out(ours(x, training=True))
        y_inv = np_out(theirs(x, training=True))
        assert y_std.dtype == y_inv.dtype == np.dtype(dtype)
        mask = y_std != 0
        np.testing.assert_array_equal(y_inv != 0, mask)  # same mask
        np.testing.assert_array_equal(y_std, np.where(mask, x, 0))  # m * x exactly
        np.testing.assert_array_equal(y_inv, kp.expected_inverted_output(x, mask, rate))
        if noise_shape is not None:  # the mask is constant along the shared axes
            shared = tuple(i for i, n in enumerate(noise_shape) if n == 1)
            np.testing.assert_array_equal(
                mask, np.broadcast_to(mask.any(axis=shared, keepdims=True), mask.shape)
            )


def test_keep_mask_matches_the_next_training_call_of_keras_dropout():
    x = normal((8, 8))
    ours = StandardDropout(0.4, seed=5)
    theirs = keras.layers.Dropout(0.4, seed=5)
    for _ in range(2):
        mask = np_out(ours.keep_mask(x))
        assert set(np.unique(mask)) <= {0.0, 1.0}
        np.testing.assert_array_equal(mask != 0, np_out(theirs(x, training=True)) != 0)
    # negative control: another seed draws another mask, so the equality above is not vacuous
    other = np_out(StandardDropout(0.4, seed=6).keep_mask(x))
    assert np.any(other != np_out(StandardDropout(0.4, seed=5).keep_mask(x)))


# --------------------------------------------------------------------------- #
# training and inference maps, exactly
# --------------------------------------------------------------------------- #


@FAST
@given(rate=rates, dtype=dtypes)
def test_inference_is_keep_prob_times_x_exactly(rate, dtype):
    x = normal((5, 7), dtype)
    layer = StandardDropout(rate, dtype=dtype)
    expected = x * np.dtype(dtype).type(1.0 - rate)
    np.testing.assert_array_equal(np_out(layer(x, training=False)), expected)
    np.testing.assert_array_equal(np_out(layer(x)), expected)  # default: inference
    assert layer.keep_prob == 1.0 - rate


def test_twins_differ_by_the_factor_keep_prob_in_both_phases():
    rate, x = 0.3, normal((64, 16))
    p = 1.0 - rate
    ours, theirs = StandardDropout(rate, seed=3), keras.layers.Dropout(rate, seed=3)
    y_std, y_inv = np_out(ours(x, training=True)), np_out(theirs(x, training=True))
    kept = y_std != 0
    # two roundings (fl(1/p), then the product): relative error <= 2 eps_32
    np.testing.assert_allclose(y_std[kept], p * y_inv[kept], rtol=2 * np.finfo(np.float32).eps)
    np.testing.assert_allclose(np_out(ours(x)), p * np_out(theirs(x)), rtol=np.finfo(np.float32).eps)


def test_rate_zero_is_the_identity_in_both_phases():
    x = normal((4, 4))
    layer = StandardDropout(0.0, seed=1)
    np.testing.assert_array_equal(np_out(layer(x, training=True)), x)
    np.testing.assert_array_equal(np_out(layer(x, training=False)), x)
    np.testing.assert_array_equal(np_out(layer.keep_mask(x)), np.ones_like(x))
    assert StandardDropout(0).rate == 0.0


def test_default_dtype_layer_autocasts_float64_like_keras_dropout():
    x = normal((3, 3), "float64")
    assert np_out(StandardDropout(0.3)(x)).dtype == np.float32
    assert np_out(keras.layers.Dropout(0.3)(x)).dtype == np.float32
    assert np_out(StandardDropout(0.3, dtype="float64")(x)).dtype == np.float64


def test_dropped_non_finite_and_negative_inputs_match_keras_exactly():
    # A dropped inf or nan gives 0, a dropped negative +0.0, as in keras.layers.Dropout.
    x = np.full((4, 16), np.inf, dtype="float32")
    x[1] = np.nan
    x[2] = -1.0
    std = np_out(StandardDropout(0.5, seed=2)(x, training=True))
    inv = np_out(keras.layers.Dropout(0.5, seed=2)(x, training=True))
    dropped = inv == 0
    assert dropped.any() and (~dropped).any()
    assert np.all(std[dropped] == 0) and not np.signbit(std[dropped]).any()
    np.testing.assert_array_equal(std[~dropped], x[~dropped])


def test_numpy_scalar_rate_is_accepted_like_keras():
    assert StandardDropout(np.float32(0.25)).rate == 0.25


# --------------------------------------------------------------------------- #
# serialisation
# --------------------------------------------------------------------------- #


def test_get_config_from_config_round_trip():
    layer = StandardDropout(0.25, noise_shape=(None, 1, 4), seed=11, name="std")
    config = layer.get_config()
    assert config["rate"] == 0.25 and config["seed"] == 11 and config["noise_shape"] == (None, 1, 4)
    clone = StandardDropout.from_config(config)
    assert clone.get_config() == config
    x = normal(SHAPE)
    np.testing.assert_array_equal(np_out(clone(x, training=True)), np_out(layer(x, training=True)))


def test_model_json_round_trip():
    model = keras.Sequential([keras.Input((3, 4)), StandardDropout(0.4, noise_shape=(None, 1, None), seed=2)])
    text = model.to_json()
    assert json.loads(text)["config"]["layers"][1]["class_name"] == "StandardDropout"
    restored = keras.models.model_from_json(text)
    layer = restored.layers[0]
    assert isinstance(layer, StandardDropout)
    assert (layer.rate, layer.noise_shape, layer.seed) == (0.4, (None, 1, None), 2)
    x = normal((2, 3, 4))
    np.testing.assert_array_equal(np_out(restored.predict(x, verbose=0)), x * np.float32(0.6))


# --------------------------------------------------------------------------- #
# in models: Sequential, functional, subclassed; fit / evaluate / predict
# --------------------------------------------------------------------------- #


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.drop = StandardDropout(0.3, seed=4)
        self.rec = kp.TrainingFlagRecorder()
        self.head = keras.layers.Dense(1)

    def build(self, input_shape):
        self.head.build(input_shape)

    def call(self, x, training=None):
        return self.head(self.rec(self.drop(x, training=training)))


def _build(kind: str):
    drop, rec = StandardDropout(0.3, seed=4), kp.TrainingFlagRecorder()
    if kind == "sequential":
        model = keras.Sequential([keras.Input((4,)), drop, rec, keras.layers.Dense(1)])
    elif kind == "functional":
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(1)(rec(drop(inputs))))
    else:
        model = _Subclassed()
        rec = model.rec
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", run_eagerly=True)
    return model, rec


@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_fit_evaluate_predict_apply_the_paper_maps(kind):
    keras.utils.set_random_seed(0)
    x = normal((16, 4))
    model, rec = _build(kind)
    history = model.fit(x, x[:, :1], epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert math.isfinite(history.history["loss"][0])
    assert rec.flags == [True]
    seen = rec.seen[0]
    kept = seen != 0
    assert 0 < kept.sum() < kept.size
    np.testing.assert_array_equal(seen, np.where(kept, x, 0))  # m * x during fit
    for run in (lambda: model.evaluate(x, x[:, :1], verbose=0), lambda: model.predict(x, verbose=0)):
        rec.reset()
        run()
        assert rec.flags == [False]
        np.testing.assert_array_equal(rec.seen[0], x * np.float32(0.7))  # p * x


def test_predict_and_evaluate_of_a_bare_layer_are_keep_prob_times_x():
    x = normal((10, 4))
    model = keras.Sequential([keras.Input((4,)), StandardDropout(0.3, seed=1)])
    model.compile(loss="mean_absolute_error")
    np.testing.assert_array_equal(model.predict(x, verbose=0), x * np.float32(0.7))
    assert model.evaluate(x, x * np.float32(0.7), verbose=0) == 0.0


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, math.nan, math.inf, -math.inf])
def test_rate_outside_0_1_raises_value_error(rate):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        StandardDropout(rate)


@pytest.mark.parametrize("rate", [True, False, "0.5", None, [0.5]])
def test_rate_of_wrong_type_raises_type_error(rate):
    with pytest.raises(TypeError, match="rate must be"):
        StandardDropout(rate)


@pytest.mark.parametrize("noise_shape", ["abc", 3, (0, 4), (-1, 4), (2.0, 4), (True, 4)])
def test_malformed_noise_shape_raises_value_error(noise_shape):
    with pytest.raises(ValueError, match="noise_shape"):
        StandardDropout(0.5, noise_shape=noise_shape)


def test_noise_shape_that_does_not_broadcast_raises_at_call():
    layer = StandardDropout(0.5, noise_shape=(6, 3, 4), seed=1)
    with pytest.raises(ValueError, match="does not broadcast"):
        layer(normal(SHAPE), training=True)


def test_noise_shape_of_wrong_rank_raises_at_call():
    layer = StandardDropout(0.5, noise_shape=(1, 4), seed=1)
    with pytest.raises(ValueError, match="dimensions but the input has 3"):
        layer(normal(SHAPE), training=True)


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
@pytest.mark.parametrize("training", [True, False])
def test_non_float_input_raises_type_error(dtype, training):
    x = np.ones((2, 3), dtype=dtype)
    with pytest.raises(TypeError, match="floating-point inputs"):
        StandardDropout(0.5, seed=1)(x, training=training)


def test_seed_must_be_an_integer():
    with pytest.raises(TypeError, match="seed"):
        StandardDropout(0.5, seed=1.5)
    with pytest.raises(TypeError, match="seed"):
        StandardDropout(0.5, seed=True)
