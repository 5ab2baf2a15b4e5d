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
    inv, std, absorb = ps.twin_models(build, kw, pattern, P)
    assert absorb and set(absorb.values()) == {P}
    x = np.random.default_rng(0).normal(size=(8,) + tuple(inv.input_shape[1:]))
    gap = max(ps.function_gaps(inv, std, x))  # training (shared masks) and inference
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
        ps.absorbing(model, r"nope/kernel", P)
    with pytest.raises(ValueError, match="not trainable variables"):
        ps.mapped_optimizer(model, keras.optimizers.SGD(0.1), {"nope/kernel": P})
    with pytest.raises(ValueError, match="keep_prob must be in"):
        ps.absorbing(model, r"head/kernel", RATE + 1)


def test_combine_multiplies_keep_probs_of_a_variable_that_absorbs_two_dropouts():
    a = {"w": 0.5, "b": 0.5}
    assert ps.combine(a, {"w": 0.8}) == {"w": 0.4, "b": 0.5}


def test_block_needs_the_bias_divided_by_the_residual_factor_only():
    kw = dict(ATT, attention_rate=RATE, residual_rate=0.5)
    del kw["rate"]
    keras.utils.set_random_seed(3)
    inv = ps.transformer_block_model("inverted", **kw)
    std = ps.transformer_block_model("standard", **kw)
    right = ps.combine(
        ps.absorbing(inv, r"mha/attention_output/kernel", P),
        ps.absorbing(inv, r"mha/attention_output/(kernel|bias)", 0.5),
    )
    x = np.random.default_rng(0).normal(size=(4, 3, 2))
    ps.copy_scaled(inv, std, right)
    a, b = np.asarray(inv(x, training=True)), np.asarray(std(x, training=True))
    assert np.max(np.abs(a - b)) <= 64 * 2.0**-53 * np.max(np.abs(a))


def test_scaled_gaps_maps_back_before_comparing():
    ref = [[np.ones(2), np.full(3, 2.0)]]
    other = [[np.ones(2) / P, np.full(3, 2.0)]]
    assert ps.scaled_gaps(ref, other, [P, 1.0])[0] <= 1e-15
    assert ps.scaled_gaps(ref, other, [1.0, 1.0])[0] > 0.1


def test_trajectory_gaps_mapped_twin_follows_and_unmapped_does_not():
    x, y = (np.random.default_rng(1).normal(size=(16, n)) for n in (RES["features"], RES["outputs"]))
    twins = {"mapped": (r"ffn_out/(kernel|bias)", True), "control": (r"ffn_out/(kernel|bias)", False)}
    steps = 5
    gaps = ps.trajectory_gaps(
        ps.residual_model,
        RES,
        keras.optimizers.Adam(0.05),
        twins,
        x,
        y,
        keep_prob=P,
        steps=steps,
        min_moved=0.01,
    )
    assert gaps["mapped"] <= steps * 64 * 2.0**-53  # rounding, as chapter 8 bounds it
    assert gaps["control"] > 1e-3  # Adam unmapped: another run
    with pytest.raises(ValueError, match="min_moved"):  # a run that hardly moves proves nothing
        ps.trajectory_gaps(
            ps.residual_model,
            RES,
            keras.optimizers.SGD(1e-12),
            twins,
            x,
            y,
            keep_prob=P,
            steps=1,
            min_moved=0.01,
        )
