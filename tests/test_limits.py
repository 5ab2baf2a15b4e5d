"""Tests of dropout_lib.theory.limits: where the inverted/standard equivalence ends (PLAN #8, #9)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropout_lib.exact import mlp
from dropout_lib.exact.compare import trajectory_gaps
from dropout_lib.exact.optimizers import SGD, Adam, RMSprop
from dropout_lib.exact.training import train
from dropout_lib.reference import sample_mask
from dropout_lib.theory import limits

# An exact map leaves float64 rounding, observed ~1e-15; a missing map leaves O(1e-2) or more.
MAP_TOL = 1e-12
GAP = 1e-3
FUNC_TOL = 1e-14

seeds = st.integers(min_value=0, max_value=2**32 - 1)
keep_probs = st.floats(min_value=0.2, max_value=0.95)


def _layer(seed, n=5, k=3, batch=20, p=0.6, n_masks=6):
    rng = np.random.default_rng(seed)
    layer = {"W": rng.normal(size=(n, k)), "b": 0.1 * rng.normal(size=k)}
    h1, h2 = rng.normal(size=(batch, n)), rng.normal(size=(batch, n))
    masks = [sample_mask((batch, n), p, rng) for _ in range(n_masks)]
    return layer, h1, h2, masks


def _ae(seed, n=5, k=3, batch=12, p=0.6, steps=8):
    rng = np.random.default_rng(seed)
    ae = {"W": 0.7 * rng.normal(size=(n, k)), "b1": 0.3 * rng.normal(size=k), "b2": 0.1 * rng.normal(size=n)}
    xs = [rng.normal(size=(batch, n)) for _ in range(3)]
    masks = [sample_mask((batch, n), p, rng) for _ in range(steps)]
    return ae, xs, masks


# ------------------------------------------------------- a shared matrix


def test_shared_matrix_is_a_pair_of_equal_matrices():
    layer, h1, h2, masks = _layer(0)
    pair = {"W_dropped": layer["W"], "W_clean": layer["W"], "b": layer["b"]}
    for variant in ("standard", "inverted"):
        a = limits.two_input_layer(
            layer, h1, h2, variant=variant, keep_prob=0.6, mask=masks[0], training=True
        )
        b = limits.two_input_layer(pair, h1, h2, variant=variant, keep_prob=0.6, mask=masks[0], training=True)
        assert np.array_equal(a, b)
    # by hand: inverted training d(h1) = m h1 / p
    expected = (masks[0] * h1 / 0.6) @ layer["W"] + h2 @ layer["W"] + layer["b"]
    got = limits.two_input_layer(
        layer, h1, h2, variant="inverted", keep_prob=0.6, mask=masks[0], training=True
    )
    assert np.allclose(got, expected, rtol=1e-15, atol=1e-15)


@settings(max_examples=10, deadline=None)
@given(seed=seeds, p=keep_probs)
def test_no_shared_matrix_matches_but_two_matrices_do(seed, p):
    layer, h1, h2, masks = _layer(seed, p=p)
    shared = limits.fit_standard_two_input_layer(layer, h1, h2, masks, p, share=True)
    two = limits.fit_standard_two_input_layer(layer, h1, h2, masks, p, share=False)
    # the residual's size scales with 1 - p; even p = 0.95 leaves > 1e-2 here
    assert shared.residual > GAP
    assert two.residual < MAP_TOL
    expected = {"W_dropped": layer["W"] / p, "W_clean": layer["W"], "b": layer["b"]}
    assert mlp.relative_difference(two.params, expected) < MAP_TOL


def test_shared_fit_is_exact_when_w_is_zero_and_when_p_is_one():
    """The theorem's exceptions: W = 0, or no dropout at all."""
    layer, h1, h2, masks = _layer(1)
    zero = {"W": np.zeros_like(layer["W"]), "b": layer["b"]}
    assert limits.fit_standard_two_input_layer(zero, h1, h2, masks, 0.6, share=True).residual < MAP_TOL
    ones = [np.ones_like(m) for m in masks]
    assert limits.fit_standard_two_input_layer(layer, h1, h2, ones, 1.0, share=True).residual < MAP_TOL


def test_least_squares_beats_every_scale():
    """lstsq is the global optimum: no V = c W does better."""
    p = 0.6
    layer, h1, h2, masks = _layer(2, p=p)
    best = limits.fit_standard_two_input_layer(layer, h1, h2, masks, p, share=True).residual
    target = limits.two_input_layer_outputs(layer, h1, h2, masks, variant="inverted", keep_prob=p)
    for c in np.linspace(0.5, 2.5, 41):
        out = limits.two_input_layer_outputs(
            {"W": c * layer["W"], "b": layer["b"]}, h1, h2, masks, variant="standard", keep_prob=p
        )
        assert limits.relative_mismatch(out, target) >= best


# ------------------------------------------------------- the tied autoencoder


@pytest.mark.parametrize("variant", ["standard", "inverted"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_tied_autoencoder_is_the_untied_one_with_w2_transposed(variant, activation):
    ae, xs, masks = _ae(3)
    untied = {"W1": ae["W"], "b1": ae["b1"], "W2": ae["W"].T.copy(), "b2": ae["b2"]}
    kw = dict(variant=variant, keep_prob=0.6, activation=activation)
    for training, mask in ((True, masks[0]), (False, None)):
        a = limits.autoencoder(ae, xs[0], mask=mask, training=training, **kw)
        b = limits.autoencoder(untied, xs[0], mask=mask, training=training, **kw)
        assert np.allclose(a, b, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("variant", ["standard", "inverted"])
@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_tied_gradient_by_finite_differences(variant, activation):
    ae, xs, masks = _ae(4)
    kw = dict(variant=variant, keep_prob=0.6, mask=masks[0], activation=activation)
    _, grads, (enc, dec) = limits.autoencoder_loss_and_grads(ae, xs[0], return_terms=True, **kw)
    assert np.allclose(enc + dec, grads["W"], rtol=0, atol=0)
    s, worst = 1e-6, 0.0
    for name, w in ae.items():
        num = np.zeros_like(w)
        for i in np.ndindex(w.shape):
            up = {**ae, name: w.copy()}
            up[name][i] += s
            down = {**ae, name: w.copy()}
            down[name][i] -= s
            num[i] = (
                limits.autoencoder_loss_and_grads(up, xs[0], **kw)[0]
                - limits.autoencoder_loss_and_grads(down, xs[0], **kw)[0]
            ) / (2 * s)
        worst = max(worst, np.linalg.norm(num - grads[name]) / np.linalg.norm(num))
    assert worst < 1e-7  # truncation ~1e-12 + rounding ~1e-10; a wrong term is O(1)


@settings(max_examples=10, deadline=None)
@given(seed=seeds, p=keep_probs)
def test_sqrt_map_keeps_the_relu_function_only(seed, p):
    ae, xs, _ = _ae(seed, p=p)
    masks = [sample_mask(xs[0].shape, p, seed) for _ in range(3)]
    std = limits.tied_to_standard(ae, p)
    assert mlp.relative_difference(limits.tied_to_inverted(std, p), ae) < 1e-15

    def gap(params, activation):
        return limits.relative_mismatch(
            limits.autoencoder_outputs(
                params, xs[0], masks, variant="standard", keep_prob=p, activation=activation
            ),
            limits.autoencoder_outputs(
                ae, xs[0], masks, variant="inverted", keep_prob=p, activation=activation
            ),
        )

    assert gap(std, "relu") < FUNC_TOL
    assert gap({"W": ae["W"] / p, "b1": ae["b1"], "b2": ae["b2"]}, "relu") > GAP  # the consumer map
    assert gap(std, "sigmoid") > GAP


def test_tied_learning_rate_maps():
    p, eta = 0.6, 0.05
    ae, xs, _ = _ae(5, steps=0)
    masks = [sample_mask(xs[0].shape, p, 5) for _ in range(80)]
    std = limits.tied_to_standard(ae, p)

    def gap(opt_inv, opt_std):
        inv = limits.train_autoencoder(
            ae, xs, masks, variant="inverted", keep_prob=p, optimizer=opt_inv, steps=80
        )
        run = limits.train_autoencoder(
            std, xs, masks, variant="standard", keep_prob=p, optimizer=opt_std, steps=80
        )
        return trajectory_gaps(inv.history, run.history, lambda q: limits.tied_to_inverted(q, p))[0].max()

    assert gap(SGD(eta, momentum=0.9), SGD(limits.tied_per_parameter(eta, p, 2), momentum=0.9)) < MAP_TOL
    assert (
        gap(
            Adam(0.01, eps=1e-3),
            Adam(limits.tied_per_parameter(0.01, p, 1), eps=limits.tied_per_parameter(1e-3, p, -1)),
        )
        < MAP_TOL
    )
    assert gap(SGD(eta, momentum=0.9), SGD(eta, momentum=0.9)) > GAP
    assert gap(SGD(eta, momentum=0.9), SGD({"W": eta / p, "b1": eta, "b2": eta}, momentum=0.9)) > GAP
    assert limits.tied_per_parameter(1.0, 0.25, 2) == {"W": 4.0, "b1": 0.25, "b2": 1.0}


def test_search_finds_the_relu_map_and_stalls_for_sigmoid():
    p = 0.6
    ae, xs, masks = _ae(6, steps=4)
    relu = limits.fit_standard_autoencoder(ae, xs[0], masks, p, activation="relu", starts=[ae])
    assert relu.residual < MAP_TOL
    assert mlp.relative_difference(relu.params, limits.tied_to_standard(ae, p)) < 1e-10
    sigmoid = limits.fit_standard_autoencoder(
        ae, xs[0], masks, p, activation="sigmoid", starts=[ae, limits.tied_to_standard(ae, p)]
    )
    assert len(sigmoid.residuals) == 2 and sigmoid.residual == min(sigmoid.residuals)
    assert sigmoid.residual > GAP
    untied_start = {"W1": ae["W"], "b1": ae["b1"], "W2": ae["W"].T.copy(), "b2": ae["b2"]}
    untied = limits.fit_standard_autoencoder(ae, xs[0], masks, p, activation="sigmoid", starts=[untied_start])
    assert untied.residual < MAP_TOL


# ------------------------------------------------------- a changing keep probability

SIZES, BATCH = (4, 6, 3), 8


def _schedule(make_inv, make_std, rescale_state, seed=7, t1=30, t2=30):
    rng = np.random.default_rng(seed)
    kp_a, kp_b = (0.9, 0.7), (0.6, 0.5)
    net = mlp.init_params(SIZES, rng, bias_scale=0.1)
    batches = [(rng.normal(size=(BATCH, SIZES[0])), rng.normal(size=(BATCH, SIZES[-1]))) for _ in range(3)]
    masks = [mlp.sample_masks(SIZES, kp_a, BATCH, rng) for _ in range(t1)] + [
        mlp.sample_masks(SIZES, kp_b, BATCH, rng) for _ in range(t2)
    ]

    def run(params, variant, opt, switch):
        a = train(params, batches, masks[:t1], variant=variant, keep_probs=kp_a, optimizer=opt, steps=t1)
        mid = switch(a.params, opt) if switch else a.params
        b = train(mid, batches, masks[t1:], variant=variant, keep_probs=kp_b, optimizer=opt, steps=t2)
        return a.history + b.history[1:]

    inv = run(net, "inverted", make_inv(), None)
    std = run(
        mlp.to_standard_params(net, kp_a),
        "standard",
        make_std(net, kp_a),
        lambda q, o: limits.switch_keep_probs(q, o, kp_a, kp_b, rescale_state=rescale_state),
    )
    back = [kp_a] * (t1 + 1) + [kp_b] * t2
    return trajectory_gaps(inv, [mlp.to_inverted_params(q, kp) for q, kp in zip(std, back)])[0]


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_switch_keep_probs(name):
    P = mlp.per_parameter
    make = {
        "sgd": (lambda: SGD(0.05), lambda net, kp: SGD(P(0.05, net, kp, -2))),
        "momentum": (
            lambda: SGD(0.05, momentum=0.9),
            lambda net, kp: SGD(P(0.05, net, kp, -2), momentum=0.9),
        ),
        "adam": (
            lambda: Adam(0.01, eps=1e-3),
            lambda net, kp: Adam(P(0.01, net, kp, -1), eps=P(1e-3, net, kp, 1)),
        ),
    }[name]
    assert _schedule(*make, rescale_state=True).max() < MAP_TOL
    weights_only = _schedule(*make, rescale_state=False).max()
    if name == "sgd":
        assert weights_only < MAP_TOL  # no state to rescale
    else:
        assert weights_only > GAP


def test_switch_keep_probs_refuses_what_it_cannot_map():
    net = mlp.init_params(SIZES, 0)
    kp = (0.8, 0.8)
    with pytest.raises(ValueError, match="supports SGD and Adam"):
        limits.switch_keep_probs(net, RMSprop({n: 0.1 for n in net}), kp, kp)
    with pytest.raises(ValueError, match="weight decay or clipping"):
        limits.switch_keep_probs(net, SGD({n: 0.1 for n in net}, clipnorm=1.0), kp, kp)
    with pytest.raises(ValueError, match="per-parameter dicts"):
        limits.switch_keep_probs(net, SGD(0.1), kp, kp)
    with pytest.raises(ValueError, match="one entry per layer input"):
        limits.switch_keep_probs(net, SGD({n: 0.1 for n in net}), kp, (0.5,))


# ------------------------------------------------------- global-norm clipping


def test_weighted_global_clip_reproduces_global_clipping_and_no_threshold_does():
    rng = np.random.default_rng(8)
    kp = (1.0, 0.7)
    net = mlp.init_params(SIZES, rng, bias_scale=0.1)
    batches = [(rng.normal(size=(BATCH, SIZES[0])), rng.normal(size=(BATCH, SIZES[-1]))) for _ in range(3)]
    masks = [mlp.sample_masks(SIZES, kp, BATCH, rng) for _ in range(40)]
    eta, c = 0.1, 0.3
    inv = train(
        net,
        batches,
        masks,
        variant="inverted",
        keep_probs=kp,
        optimizer=SGD(eta, global_clipnorm=c),
        steps=40,
    )
    split = limits.gradient_norm_split(inv.history, batches, masks, keep_probs=kp)
    assert split.inverted.min() > c  # clipped at every step
    total = np.sqrt(sum(f**2 for f in split.fractions.values()))
    assert np.allclose(total, split.ratios, rtol=1e-14)
    lr = mlp.per_parameter(eta, net, kp, -2)

    def gap(opt):
        std = train(
            mlp.to_standard_params(net, kp),
            batches,
            masks,
            variant="standard",
            keep_probs=kp,
            optimizer=opt,
            steps=40,
        )
        return trajectory_gaps(inv.history, std.history, lambda q: mlp.to_inverted_params(q, kp))[0].max()

    assert gap(limits.WeightedGlobalClip(SGD(lr), c, mlp.consuming_weights(kp))) < MAP_TOL
    for factor in (split.ratios.min(), np.median(split.ratios), split.ratios.max(), 0.7):
        assert gap(SGD(lr, global_clipnorm=c * factor)) > GAP


def test_norm_split_without_dropout_is_trivial():
    rng = np.random.default_rng(9)
    net = mlp.init_params(SIZES, rng)
    batches = [(rng.normal(size=(BATCH, SIZES[0])), rng.normal(size=(BATCH, SIZES[-1])))]
    hist = train(
        net,
        batches,
        [[None, None]] * 3,
        variant="inverted",
        keep_probs=(1.0, 1.0),
        optimizer=SGD(0.1),
        steps=3,
    ).history
    split = limits.gradient_norm_split(hist, batches, [[None, None]] * 3, keep_probs=(1.0, 1.0))
    assert np.array_equal(split.ratios, np.ones(3))


def test_weighted_clip_validation():
    with pytest.raises(ValueError, match="clips already"):
        limits.WeightedGlobalClip(SGD(0.1, global_clipnorm=1.0), 1.0, {})
    with pytest.raises(ValueError, match="clipnorm must be"):
        limits.WeightedGlobalClip(SGD(0.1), 0.0, {})
    with pytest.raises(ValueError, match=r"weights\['W1'\]"):
        limits.WeightedGlobalClip(SGD(0.1), 1.0, {"W1": -0.5})


# ------------------------------------------------------- helpers


def test_scan_and_refine_finds_a_minimum_between_grid_points():
    x, fx, values = limits.scan_and_refine(lambda v: (v - math.pi / 3) ** 2 + 0.25, np.linspace(0, 2, 11))
    assert abs(x - math.pi / 3) < 1e-8 and abs(fx - 0.25) < 1e-15 and values.shape == (11,)
    with pytest.raises(ValueError, match="increasing"):
        limits.scan_and_refine(abs, [1.0, 0.0, 2.0])


@settings(max_examples=10, deadline=None)
@given(p=keep_probs, seed=seeds)
def test_mask_expectation_is_exact(p, seed):
    x = np.random.default_rng(seed).normal(size=(2, 5))
    assert np.allclose(limits.mask_expectation(lambda m: m, 5, p), np.full((1, 5), p), rtol=1e-14)
    assert np.allclose(limits.mask_expectation(lambda m: m * x / p, 5, p), x, rtol=1e-13, atol=1e-15)


def test_clear_errors():
    layer, h1, h2, masks = _layer(0)
    with pytest.raises(ValueError, match="params must have keys"):
        limits.two_input_layer({"W": layer["W"]}, h1, h2, variant="inverted", keep_prob=0.5, training=False)
    with pytest.raises(ValueError, match="needs the binary mask"):
        limits.two_input_layer(layer, h1, h2, variant="inverted", keep_prob=0.5, training=True)
    with pytest.raises(ValueError, match="inference uses no mask"):
        limits.two_input_layer(
            layer, h1, h2, variant="inverted", keep_prob=0.5, mask=masks[0], training=False
        )
    with pytest.raises(ValueError, match="keep_prob must be in"):
        limits.two_input_layer(layer, h1, h2, variant="inverted", keep_prob=1.5, training=False)
    with pytest.raises(ValueError, match="variant"):
        limits.two_input_layer(layer, h1, h2, variant="paper", keep_prob=0.5, training=False)
    with pytest.raises(ValueError, match="h_dropped must have shape"):
        limits.two_input_layer(layer, h1[:, :2], h2, variant="inverted", keep_prob=0.5, training=False)
    ae, xs, _ = _ae(0)
    with pytest.raises(ValueError, match="autoencoder params must be"):
        limits.autoencoder({"W": ae["W"]}, xs[0], variant="inverted", keep_prob=0.5, training=False)
    with pytest.raises(ValueError, match="activation must be one of"):
        limits.autoencoder(ae, xs[0], variant="inverted", keep_prob=0.5, training=False, activation="gelu")
    with pytest.raises(ValueError, match="tied autoencoder"):
        limits.tied_to_standard({"W1": ae["W"], "b1": ae["b1"], "W2": ae["W"].T, "b2": ae["b2"]}, 0.5)
    with pytest.raises(ValueError, match="starts is empty"):
        limits.fit_standard_autoencoder(ae, xs[0], [], 0.5, activation="relu", starts=[])
    with pytest.raises(ValueError, match="no outputs requested"):
        limits.autoencoder_outputs(ae, xs[0], [], variant="inverted", keep_prob=0.5, inference=False)
    with pytest.raises(ValueError, match="shape"):
        limits.relative_mismatch(np.zeros(3), np.ones(4))
    with pytest.raises(ValueError, match="all zero"):
        limits.relative_mismatch(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="masks holds"):
        limits.train_autoencoder(ae, xs, [], variant="inverted", keep_prob=0.5, optimizer=SGD(0.1), steps=2)
