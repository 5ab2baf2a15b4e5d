"""Tests of dropout_lib.exact.mlp: exact backprop and the same-function theorem (PLAN #1, #2)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropout_lib.exact import mlp

SIZES = (5, 8, 6, 3)
BATCH = 16

keep_prob = st.floats(min_value=0.2, max_value=0.95)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _net(seed: int, kp, sizes=SIZES, batch=BATCH, classes: bool = False):
    rng = np.random.default_rng(seed)
    params = mlp.init_params(sizes, rng, bias_scale=0.3)
    x = rng.normal(size=(batch, sizes[0]))
    if classes:
        y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], batch)]
    else:
        y = rng.normal(size=(batch, sizes[-1]))
    masks = mlp.sample_masks(sizes, kp, batch, rng)
    return params, x, y, masks


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ------------------------------------------------------------ gradient check

# Central differences with step s = 1e-5 have truncation error ~ s^2 |L'''| ~ 1e-10
# and rounding error ~ eps_64 |L| / s ~ 1e-11 relative to gradients of order 1, so a
# correct backprop lands near 1e-9; a wrong one (a missing 1/p, a wrong transpose,
# a dropped L2 term) is off by O(1). 1e-7 sits far from both.
GRADCHECK_TOL = 1e-7


@settings(max_examples=12, deadline=None)
@given(
    seed=seeds,
    kp=st.tuples(keep_prob, st.sampled_from([1.0, 0.5, 0.8]), keep_prob),
    variant=st.sampled_from(["standard", "inverted"]),
    activation=st.sampled_from(["relu", "tanh", "sigmoid", "linear"]),
    loss=st.sampled_from(["mse", "softmax_xent"]),
    use_l2=st.booleans(),
)
def test_gradient_check(seed, kp, variant, activation, loss, use_l2):
    sizes = (4, 5, 4, 3)
    params, x, y, masks = _net(seed, kp, sizes=sizes, batch=6, classes=loss == "softmax_xent")
    l2 = {"W1": 0.03, "W3": 0.1, "b2": 0.05} if use_l2 else None
    err = mlp.gradient_check(
        params, x, y, variant=variant, keep_probs=kp, masks=masks, activation=activation, loss=loss, l2=l2
    )
    assert err < GRADCHECK_TOL, f"backprop disagrees with finite differences: {err:.2e}"


def test_gradient_check_catches_a_wrong_gradient(monkeypatch):
    """The check can fail: double one gradient and it reports an O(1) error."""
    kp = (0.8, 0.7, 0.6)
    params, x, y, masks = _net(0, kp)
    real = mlp.loss_and_grads

    def wrong(*args, **kwargs):
        value, grads = real(*args, **kwargs)
        grads["W2"] = 2.0 * grads["W2"]
        return value, grads

    monkeypatch.setattr(mlp, "loss_and_grads", wrong)
    err = mlp.gradient_check(params, x, y, variant="inverted", keep_probs=kp, masks=masks)
    assert err > 0.1


# ---------------------------------------------------- same function (PLAN #1)

# Both nets compute the same real numbers; in floating point they differ by a
# few rounding errors (the division by p moves from the activations to the
# weights), i.e. a few units of eps_64 = 2.2e-16. Over 1200 random cases the
# worst relative difference was 7.2e-16; 2e-15 allows ~9 ulp, and any real
# mismatch (a missing p, a scaled bias) is O(1e-2) or more.
SAME_FUNCTION_TOL = 2e-15


@settings(max_examples=30, deadline=None)
@given(
    seed=seeds,
    kp=st.tuples(keep_prob, keep_prob, keep_prob),
    activation=st.sampled_from(["relu", "tanh", "sigmoid"]),
)
def test_same_function_train_and_test(seed, kp, activation):
    params_inv, x, _, masks = _net(seed, kp)
    params_std = mlp.to_standard_params(params_inv, kp)
    for training, m in ((True, masks), (False, None)):
        z_inv, _ = mlp.forward(
            params_inv,
            x,
            variant="inverted",
            keep_probs=kp,
            masks=m,
            training=training,
            activation=activation,
        )
        z_std, _ = mlp.forward(
            params_std,
            x,
            variant="standard",
            keep_probs=kp,
            masks=m,
            training=training,
            activation=activation,
        )
        assert _rel(z_std, z_inv) < SAME_FUNCTION_TOL, (training, _rel(z_std, z_inv))


def test_same_function_is_bitwise_for_p_one_half():
    """With p = 1/2 dividing by p is exact, so both nets round identically."""
    kp = (0.5, 0.5, 0.5)
    params_inv, x, _, masks = _net(1, kp)
    params_std = mlp.to_standard_params(params_inv, kp)
    z_inv, _ = mlp.forward(params_inv, x, variant="inverted", keep_probs=kp, masks=masks, training=True)
    z_std, _ = mlp.forward(params_std, x, variant="standard", keep_probs=kp, masks=masks, training=True)
    assert np.array_equal(z_inv, z_std)
    assert np.array_equal(
        mlp.predict(params_inv, x, variant="inverted", keep_probs=kp),
        mlp.predict(params_std, x, variant="standard", keep_probs=kp),
    )


@settings(max_examples=15, deadline=None)
@given(seed=seeds, kp=st.tuples(keep_prob, keep_prob, keep_prob))
def test_scaling_the_bias_too_breaks_it(seed, kp):
    """Negative control: map b -> b/p as well and the outputs differ."""
    params_inv, x, _, masks = _net(seed, kp)
    wrong = mlp.to_standard_params(params_inv, kp)
    for k, p in enumerate(kp, start=1):
        wrong[f"b{k}"] = wrong[f"b{k}"] / p
    z_inv, _ = mlp.forward(params_inv, x, variant="inverted", keep_probs=kp, masks=masks, training=True)
    z_bad, _ = mlp.forward(wrong, x, variant="standard", keep_probs=kp, masks=masks, training=True)
    assert _rel(z_bad, z_inv) > 1e-3


def test_same_parameters_differ_at_test_time_without_the_map():
    """Negative control: the same weights in both variants give different predictions."""
    kp = (0.8, 0.7, 0.6)
    params, x, _, _ = _net(2, kp)
    a = mlp.predict(params, x, variant="inverted", keep_probs=kp)
    b = mlp.predict(params, x, variant="standard", keep_probs=kp)
    assert _rel(b, a) > 1e-2


def test_inference_is_the_no_dropout_net_for_inverted_and_p_scaled_weights_for_standard():
    kp = (0.8, 0.7, 0.6)
    params, x, _, _ = _net(3, kp)
    plain = mlp.predict(params, x, variant="inverted", keep_probs=(1.0, 1.0, 1.0))
    assert np.array_equal(mlp.predict(params, x, variant="inverted", keep_probs=kp), plain)
    scaled = {n: (w * kp[int(n[1:]) - 1] if n[0] == "W" else w) for n, w in params.items()}
    std = mlp.predict(params, x, variant="standard", keep_probs=kp)
    assert _rel(std, mlp.predict(scaled, x, variant="inverted", keep_probs=(1.0, 1.0, 1.0))) < 1e-14


def test_parameter_maps_round_trip_and_leave_biases():
    kp = (1.0, 0.7, 0.3)
    params, *_ = _net(4, kp)
    std = mlp.to_standard_params(params, kp)
    assert np.array_equal(std["W1"], params["W1"])
    assert np.array_equal(std["W2"], params["W2"] / 0.7)
    for k in (1, 2, 3):
        assert np.array_equal(std[f"b{k}"], params[f"b{k}"])
    assert mlp.relative_difference(mlp.to_inverted_params(std, kp), params) < 1e-15
    assert mlp.consuming_weights(kp) == {"W2": 0.7, "W3": 0.3}
    lr = mlp.per_parameter(0.1, params, kp, -2)
    assert lr["W3"] == pytest.approx(0.1 / 0.09) and lr["W1"] == lr["b3"] == 0.1


# ------------------------------------------------------- gradients (PLAN #2)


@settings(max_examples=25, deadline=None)
@given(
    seed=seeds,
    kp=st.tuples(st.just(1.0), keep_prob, keep_prob),
    loss=st.sampled_from(["mse", "softmax_xent"]),
)
def test_gradient_relation(seed, kp, loss):
    """dL/dW_inv = dL/dW_std / p on consuming weights; every other gradient equal.

    keep_probs[0] = 1, so W1 consumes no dropped layer and must be unchanged.
    """
    params_inv, x, y, masks = _net(seed, kp, classes=loss == "softmax_xent")
    params_std = mlp.to_standard_params(params_inv, kp)
    l_inv, g_inv = mlp.loss_and_grads(
        params_inv, x, y, variant="inverted", keep_probs=kp, masks=masks, loss=loss
    )
    l_std, g_std = mlp.loss_and_grads(
        params_std, x, y, variant="standard", keep_probs=kp, masks=masks, loss=loss
    )
    assert l_std == pytest.approx(l_inv, rel=1e-14)
    consumers = mlp.consuming_weights(kp)
    assert set(consumers) == {"W2", "W3"}
    for name in params_inv:
        expected = g_std[name] / consumers[name] if name in consumers else g_std[name]
        diff = np.linalg.norm(g_inv[name] - expected)
        assert diff <= 1e-13 * np.linalg.norm(g_inv[name]) + 1e-300, name
    # and the relation is not an identity: the consuming gradients do differ
    assert _rel(g_std["W3"], g_inv["W3"]) > 1e-2


# ---------------------------------------------------------------- validation


def test_clear_errors():
    kp = (0.8, 1.0, 0.6)
    params, x, y, masks = _net(5, kp)
    assert masks[1] is None
    kw = dict(variant="inverted", keep_probs=kp)
    with pytest.raises(ValueError, match="one keep probability per layer input"):
        mlp.forward(params, x, variant="inverted", keep_probs=(0.5, 0.5), masks=masks, training=True)
    with pytest.raises(ValueError, match="rate"):
        mlp.forward(params, x, variant="inverted", keep_probs=(0.5, 1.5, 0.5), training=False)
    with pytest.raises(ValueError, match=r"masks\[1\]"):
        mlp.forward(params, x, masks=[masks[0], np.ones((BATCH, 8)), masks[2]], training=True, **kw)
    with pytest.raises(ValueError, match=r"masks\[0\]"):
        mlp.forward(params, x, masks=[None, None, masks[2]], training=True, **kw)
    with pytest.raises(ValueError, match="binary"):
        mlp.forward(params, x, masks=[masks[0] / 0.8, None, masks[2]], training=True, **kw)
    with pytest.raises(ValueError, match="broadcast"):
        mlp.forward(params, x, masks=[masks[0][:, :3], None, masks[2]], training=True, **kw)
    with pytest.raises(ValueError, match="inference uses no mask"):
        mlp.forward(params, x, masks=masks, training=False, **kw)
    with pytest.raises(ValueError, match=r"x\[None, :\]"):
        mlp.forward(params, x[0], masks=masks, training=True, **kw)
    with pytest.raises(ValueError, match="variant"):
        mlp.forward(params, x, variant="paper", keep_probs=kp, training=False)
    with pytest.raises(ValueError, match="loss"):
        mlp.loss_and_grads(params, x, y, masks=masks, loss="hinge", **kw)
    with pytest.raises(ValueError, match="not a parameter"):
        mlp.loss_and_grads(params, x, y, masks=masks, l2={"W9": 0.1}, **kw)
