"""Tests of dropout_lib.book.producer_side: maps that a wrong implementation would fail."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from dropout_lib.book import producer_side as ps

RATE = 0.4
P = 1 - RATE


@pytest.fixture(autouse=True)
def _float64():
    old_floatx, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(old_floatx)
    keras.config.set_dtype_policy(old_policy)


def _twins(build, pattern, factor, **kw):
    keras.utils.set_random_seed(3)
    inv, std = build("inverted", **kw), build("standard", **kw)
    paths = ps.variable_paths(inv, pattern)
    ps.copy_scaled(inv, std, paths, factor)
    return inv, std


RES = dict(features=3, hidden=5, outputs=2, rate=RATE, seed=1)
ATT = dict(steps=3, features=2, heads=2, key_dim=2, outputs=2, rate=RATE, seed=2)


@pytest.mark.parametrize(
    ("build", "kw", "pattern", "same"),
    [
        (ps.residual_model, RES, r"ffn_out/(kernel|bias)", True),
        (ps.residual_model, RES, r"ffn_out/kernel", False),  # the bias must scale too
        (ps.residual_model, RES, r"head/kernel", False),  # no consumer-side map here
        (ps.attention_model, ATT, r"mha/attention_output/kernel", True),
        (ps.attention_model, ATT, r"mha/value/(kernel|bias)", True),
        (ps.attention_model, ATT, r"mha/value/kernel", False),
    ],
)
def test_same_function_only_under_the_right_map(build, kw, pattern, same):
    inv, std = _twins(build, pattern, 1 / P, **kw)
    x = np.random.default_rng(0).normal(size=(8,) + tuple(inv.input_shape[1:]))
    train = [np.asarray(m(x, training=True)) for m in (inv, std)]  # shared masks: same seed
    test = [np.asarray(m(x)) for m in (inv, std)]
    gap = max(np.max(np.abs(a - b)) / np.max(np.abs(a)) for a, b in (train, test))
    if same:
        assert gap <= 64 * 2.0**-53
    else:
        assert gap > 1e-3


def test_standard_attention_draws_keras_masks_and_scales_at_inference():
    keras.utils.set_random_seed(0)
    layer = ps.StandardDropoutAttention(num_heads=1, key_dim=2, dropout=RATE, seed=5)
    x = np.random.default_rng(1).normal(size=(2, 3, 2))
    layer(x, x)
    drop = layer._dropout_layer
    s = np.random.default_rng(2).uniform(size=(2, 1, 3, 3))
    assert np.allclose(np.asarray(drop(s, training=False)), P * s, rtol=0, atol=1e-15)
    keras_drop = keras.layers.Dropout(RATE, seed=5)
    kept = np.asarray(keras_drop(s, training=True)) != 0
    assert np.array_equal(np.asarray(drop(s, training=True)) != 0, kept)


def test_mapped_optimizer_refuses_unknown_paths_and_patterns():
    keras.utils.set_random_seed(0)
    model = ps.residual_model("standard", **RES)
    with pytest.raises(ValueError, match="no trainable variable"):
        ps.variable_paths(model, r"nope/kernel")
    with pytest.raises(ValueError, match="not a trainable variable"):
        ps.mapped_optimizer(model, keras.optimizers.SGD(0.1), ["nope/kernel"], P)


def test_scaled_gaps_maps_back_before_comparing():
    ref = [[np.ones(2), np.full(3, 2.0)]]
    other = [[np.ones(2) / P, np.full(3, 2.0)]]
    assert ps.scaled_gaps(ref, other, [P, 1.0])[0] <= 1e-15
    assert ps.scaled_gaps(ref, other, [1.0, 1.0])[0] > 0.1
