"""The global map for global-norm clipping (dropout_lib.theory.homogeneous) and
the shared layer called twice (dropout_lib.theory.limits.fit_standard_shared_layer)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dropout_lib.exact import mlp
from dropout_lib.exact.compare import trajectory_gaps
from dropout_lib.exact.optimizers import SGD
from dropout_lib.reference import sample_mask
from dropout_lib.theory import homogeneous as hom
from dropout_lib.theory import limits

MAP_TOL = 1e-13  # float64 runs of 60 steps: ~900 units of 2^-53
GAP = 1e-3
KP = (0.8, 0.7, 0.6)
SIZES = (5, 8, 6, 3)


def _setup(seed=0, steps=60, bias_scale=0.0):
    rng = np.random.default_rng(seed)
    net = mlp.init_params(SIZES, rng, bias_scale=bias_scale)
    if bias_scale == 0.0:
        net = {n: v for n, v in net.items() if n.startswith("W")}
    batches = [(rng.normal(size=(16, SIZES[0])), rng.normal(size=(16, SIZES[-1]))) for _ in range(3)]
    masks = [mlp.sample_masks(SIZES, KP, 16, rng) for _ in range(steps)]
    return net, batches, masks


def _gap(net, batches, masks, scales, opt_inv, opt_std):
    kw = dict(batches=batches, masks=masks, keep_probs=KP, steps=len(masks))
    inv = hom.train(net, variant="inverted", optimizer=opt_inv, **kw)
    std = hom.train(hom.rescale(net, scales), variant="standard", optimizer=opt_std, **kw)
    back = {n: 1.0 / scales[n] for n in net} if isinstance(scales, dict) else 1.0 / scales
    return trajectory_gaps(inv.history, std.history, lambda q: hom.rescale(q, back))[0].max(), inv


def test_global_scale_is_the_geometric_mean():
    lam = hom.global_scale(KP)
    assert lam**3 == pytest.approx(math.prod(KP), rel=1e-15)
    assert hom.global_scale((1.0, 0.5)) == pytest.approx(math.sqrt(0.5), rel=1e-15)
    with pytest.raises(ValueError):
        hom.global_scale((1.5,))


def test_global_map_keeps_the_function_at_test_time():
    net, batches, _ = _setup(1)
    lam = hom.global_scale(KP)
    zero = {f"b{k}": np.zeros(SIZES[k]) for k in (1, 2, 3)}
    x = batches[0][0]
    inv = mlp.predict({**net, **zero}, x, variant="inverted", keep_probs=KP)
    std = mlp.predict({**hom.rescale(net, 1 / lam), **zero}, x, variant="standard", keep_probs=KP)
    assert limits.relative_mismatch(std, inv) < 1e-14
    # the consumer map's kernels divided by lambda on every layer is not the consumer map
    cons = mlp.predict({**mlp.to_standard_params({**net, **zero}, KP)}, x, variant="standard", keep_probs=KP)
    assert limits.relative_mismatch(cons, inv) < 1e-14


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_global_map_with_global_clipping(momentum):
    net, batches, masks = _setup(2)
    eta, tau = 0.05, 0.2
    eta_s, tau_s = hom.global_clip_map(eta, tau, KP)
    lam = hom.global_scale(KP)
    inv_opt = lambda: SGD(eta, momentum=momentum, global_clipnorm=tau)  # noqa: E731
    gap, inv = _gap(
        net, batches, masks, 1 / lam, inv_opt(), SGD(eta_s, momentum=momentum, global_clipnorm=tau_s)
    )
    assert inv.norms.min() > tau or momentum, "the inverted run should clip at every step"
    assert gap < MAP_TOL
    np.testing.assert_allclose(inv.norm_ratios({n: 1 / lam for n in net}), lam, rtol=1e-14)
    # wrong threshold, wrong learning rate: a real difference
    assert (
        _gap(net, batches, masks, 1 / lam, inv_opt(), SGD(eta_s, momentum=momentum, global_clipnorm=tau))[0]
        > GAP
    )
    assert (
        _gap(
            net, batches, masks, 1 / lam, inv_opt(), SGD(eta / lam, momentum=momentum, global_clipnorm=tau_s)
        )[0]
        > GAP
    )


def test_with_biases_the_map_holds_without_clipping_and_fails_with_it():
    net, batches, masks = _setup(3, bias_scale=0.1)
    eta, tau = 0.05, 0.2
    lam = hom.global_scale(KP)
    s = hom.bias_scales(KP, 1 / lam)
    assert s["b3"] == pytest.approx(1.0, rel=1e-15)
    lr = {n: eta * v**2 for n, v in s.items()}
    assert _gap(net, batches, masks, s, SGD(eta), SGD(lr))[0] < MAP_TOL
    gap, inv = _gap(net, batches, masks, s, SGD(eta, global_clipnorm=tau), SGD(lr, global_clipnorm=lam * tau))
    assert gap > GAP
    ratios = inv.norm_ratios(s)
    assert ratios.max() / ratios.min() - 1 > GAP


def test_loss_and_grads_of_a_bias_free_net_names_only_kernels():
    net, batches, masks = _setup(4)
    _, g = hom.loss_and_grads(net, *batches[0], variant="inverted", keep_probs=KP, masks=masks[0])
    assert sorted(g) == ["W1", "W2", "W3"]
    assert hom.global_norms(g) == pytest.approx(
        math.sqrt(sum(float(np.sum(v**2)) for v in g.values())), rel=1e-15
    )


def test_shared_layer_has_no_map_but_two_layers_do():
    rng = np.random.default_rng(5)
    n, k, p = 6, 4, 0.6
    layer = {"W": rng.normal(size=(n, k)), "b": 0.1 * rng.normal(size=k)}
    h1, h2 = rng.normal(size=(32, n)), rng.normal(size=(32, n))
    masks = [sample_mask((32, n), p, rng) for _ in range(4)]
    shared = limits.fit_standard_shared_layer(layer, h1, h2, masks, p, share=True)
    two = limits.fit_standard_shared_layer(layer, h1, h2, masks, p, share=False)
    assert shared.residual > GAP
    assert two.residual < 1e-13
    expected = {
        "W_dropped": layer["W"] / p,
        "b_dropped": layer["b"],
        "W_clean": layer["W"],
        "b_clean": layer["b"],
    }
    assert mlp.relative_difference(two.params, expected) < 1e-13
    # one output per call, each with its own bias add
    out = limits.shared_layer_outputs(layer, h1, h2, [], variant="inverted", keep_prob=p)
    np.testing.assert_array_equal(out[32:], h2 @ layer["W"] + layer["b"])
    with pytest.raises(ValueError):
        limits.shared_layer_outputs({"W": layer["W"]}, h1, h2, [], variant="inverted", keep_prob=p)


def test_tied_embedding_map_keeps_the_function_and_needs_the_input_kernel():
    from dropout_lib.book import limits_checks as lc

    rng = np.random.default_rng(6)
    vocab, d, pe, pk = 7, 4, 0.9, 0.6
    lm = {
        "E": rng.normal(size=(vocab, d)),
        "W_in": rng.normal(size=(d, d)),
        "b_in": 0.1 * rng.normal(size=d),
        "c": 0.1 * rng.normal(size=vocab),
    }
    tokens = np.eye(vocab)[rng.integers(0, vocab, 16)]
    masks = [(sample_mask((16, d), pe, rng), sample_mask((16, d), pk, rng)) for _ in range(4)]
    out = lambda q, v: lc.tied_lm_outputs(q, tokens, masks, variant=v, keep_emb=pe, keep_out=pk)  # noqa: E731
    ref = out(lm, "inverted")
    assert limits.relative_mismatch(out(lc.tied_lm_to_standard(lm, pe, pk), "standard"), ref) < 1e-14
    assert limits.relative_mismatch(out({**lm, "E": lm["E"] / pk}, "standard"), ref) > GAP
    # without embedding dropout the input kernel takes the whole factor p
    masks1 = [(None, m_h) for _, m_h in masks]
    out1 = lambda q, v: lc.tied_lm_outputs(q, tokens, masks1, variant=v, keep_emb=1.0, keep_out=pk)  # noqa: E731
    std = lc.tied_lm_to_standard(lm, 1.0, pk)
    np.testing.assert_allclose(std["W_in"], lm["W_in"] * pk, rtol=1e-15)
    assert limits.relative_mismatch(out1(std, "standard"), out1(lm, "inverted")) < 1e-14


def test_global_map_with_adam_and_global_clipping():
    """thm-global-clip-homogeneous, part 4: Adam with eta / lambda, lambda eps, lambda c."""
    from dropout_lib.exact.optimizers import Adam

    net, batches, masks = _setup(7)
    # Adam divides out a gradient scale common to all steps: an unmapped threshold shows
    # only through eps and the unclipped steps, so eps is 1e-3 here, not Keras's 1e-7
    eta, eps, tau = 0.01, 1e-3, 0.2
    lam = hom.global_scale(KP)
    inv_opt = lambda: Adam(eta, eps=eps, global_clipnorm=tau)  # noqa: E731
    mapped = Adam(eta / lam, eps=lam * eps, global_clipnorm=lam * tau)
    gap, inv = _gap(net, batches, masks, 1 / lam, inv_opt(), mapped)
    assert (inv.norms > tau).sum() > len(masks) // 2, "Adam's inverted run should clip often"
    assert gap < MAP_TOL
    wrong = Adam(eta / lam, eps=lam * eps, global_clipnorm=tau)  # threshold not mapped
    assert _gap(net, batches, masks, 1 / lam, inv_opt(), wrong)[0] > GAP


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_one_keep_prob_on_kernels_only_maps_the_threshold(activation):
    """cor-global-clip-uniform: every clipped tensor a consuming kernel with one p -> c p."""
    from dropout_lib.exact.optimizers import Adam

    p, eta, tau = 0.7, 0.05, 0.2
    kp = (p, p, p)
    rng = np.random.default_rng(8)
    net = {n: v for n, v in mlp.init_params(SIZES, rng).items() if n.startswith("W")}
    batches = [(rng.normal(size=(16, SIZES[0])), rng.normal(size=(16, SIZES[-1]))) for _ in range(3)]
    masks = [mlp.sample_masks(SIZES, kp, 16, rng) for _ in range(40)]
    scales = {n: 1 / p for n in net}

    def gap(opt_std, opt_inv):
        return hom.compare_runs(net, scales, batches, masks, kp, opt_inv, opt_std, activation=activation)

    sgd, inv = gap(SGD(eta / p**2, global_clipnorm=p * tau), SGD(eta, global_clipnorm=tau))
    assert inv.norms.min() > tau
    assert sgd < MAP_TOL
    adam = gap(
        Adam(0.01 / p, eps=p * 1e-3, global_clipnorm=p * tau), Adam(0.01, eps=1e-3, global_clipnorm=tau)
    )[0]
    assert adam < MAP_TOL
    assert gap(SGD(eta / p**2, global_clipnorm=tau), SGD(eta, global_clipnorm=tau))[0] > GAP


def test_shared_layer_downstream_map_needs_a_bias_free_layer():
    """prop-shared-downstream: a bias-free shared layer, ReLU, an unshared head K -> K / p."""
    rng = np.random.default_rng(9)
    n, k, p = 6, 4, 0.6
    layer = {"W": rng.normal(size=(n, k)), "b": 0.2 * rng.normal(size=k)}
    head = {"K": rng.normal(size=(k, 2)), "c": 0.1 * rng.normal(size=2)}
    h1, h2 = np.abs(rng.normal(size=(16, n))), rng.normal(size=(16, n))
    masks = [sample_mask((16, n), p, rng) for _ in range(4)]

    def mismatch(lay):
        def out(K, v):
            return limits.shared_downstream_outputs(
                lay, {**head, "K": K}, h1, h2, masks, variant=v, keep_prob=p
            )

        return limits.relative_mismatch(out(head["K"] / p, "standard"), out(head["K"], "inverted"))

    assert mismatch({**layer, "b": np.zeros(k)}) < 1e-14
    assert mismatch(layer) > GAP
    out = limits.shared_downstream_outputs(layer, head, h1, h2, [], variant="inverted", keep_prob=p)
    assert out.shape == (16 * 2 + 16 * k,)  # y at inference, then z_2
    np.testing.assert_array_equal(out[32:], (h2 @ layer["W"] + layer["b"]).ravel())
