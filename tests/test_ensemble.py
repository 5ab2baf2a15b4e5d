"""Tests of dropout_lib.theory.ensemble: exact sub-network enumeration (result #10).

Notation: keep_prob = p (the paper's); Keras's rate = 1 - p.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropout_lib.theory import ensemble as E

FIELDS = ("arithmetic_mean", "nwgm", "weight_scaled")

keep_probs = st.floats(0.05, 0.95)
seeds = st.integers(0, 2**32 - 1)
variants = st.sampled_from(["standard", "inverted"])


# --------------------------------------------------------------------------- #
# helpers: random nets and an independent brute-force ensemble
# --------------------------------------------------------------------------- #


def random_net(seed: int, widths: list[int], ps: list[float]) -> E.DropoutNet:
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(a, b)) for a, b in zip(widths, widths[1:])]
    bs = [0.3 * rng.normal(size=b) for b in widths[1:]]
    return E.DropoutNet(ws, bs, ps)


def inverted_twin(net: E.DropoutNet) -> E.DropoutNet:
    """The inverted net with the same sub-networks: W_inv = p * W, biases unchanged."""
    ws = [p * w for w, p in zip(net.weights, net.keep_probs)]
    return E.DropoutNet(ws, net.biases, net.keep_probs)


def brute_force(net: E.DropoutNet, x: np.ndarray, variant: str) -> dict[str, np.ndarray]:
    """AM, NWGM, weight-scaled for ONE input x, by a plain loop over itertools.product."""
    dropped = [i for i, p in enumerate(net.keep_probs) if p < 1]
    sizes = [net.weights[i].shape[0] for i in dropped]

    def forward(masks: dict[int, np.ndarray] | None) -> np.ndarray:
        h = x
        for i, (w, b, p) in enumerate(zip(net.weights, net.biases, net.keep_probs)):
            if masks is None:  # test time
                d = h * p if variant == "standard" else h
            elif i in masks:
                d = masks[i] * h if variant == "standard" else masks[i] * h / p
            else:
                d = h
            h = d @ w + b
            if i < len(net.weights) - 1:
                h = np.maximum(h, 0)
        e = np.exp(h - h.max())
        return e / e.sum()

    am = 0.0
    log_gm = 0.0
    for bits in itertools.product((0.0, 1.0), repeat=sum(sizes)):
        masks, start, prob = {}, 0, 1.0
        for i, n in zip(dropped, sizes):
            masks[i] = np.array(bits[start : start + n])
            prob *= math.prod(net.keep_probs[i] if m else 1 - net.keep_probs[i] for m in masks[i])
            start += n
        s = forward(masks)
        am = am + prob * s
        log_gm = log_gm + prob * np.log(s)
    gm = np.exp(log_gm)
    return {"arithmetic_mean": am, "nwgm": gm / gm.sum(), "weight_scaled": forward(None)}


# --------------------------------------------------------------------------- #
# masks and their probabilities
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("chunk", [1, 3, 8, 1000])
def test_mask_blocks_list_every_mask_once_in_integer_order(chunk: int) -> None:
    n = 5
    blocks = list(E.mask_blocks(n, chunk))
    assert all(len(b) <= chunk for b in blocks)
    masks = np.concatenate(blocks)
    # row i is the binary expansion of i, unit j = bit j
    expected = np.array([bits[::-1] for bits in itertools.product((0, 1), repeat=n)])
    np.testing.assert_array_equal(masks, expected)


@given(n=st.integers(0, 12), p=keep_probs)
def test_mask_probabilities_sum_to_one(n: int, p: float) -> None:
    masks = np.concatenate(list(E.mask_blocks(n, 1 << 10)))
    prob = E.mask_probabilities(masks, p)
    assert prob.min() >= 0
    assert math.fsum(prob) == pytest.approx(1.0, abs=1e-14)
    k = masks.sum(axis=1)
    np.testing.assert_allclose(prob, p**k * (1 - p) ** (n - k), rtol=1e-15)


def test_mask_probabilities_per_layer_keep_probs() -> None:
    masks = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    prob = E.mask_probabilities(masks, [0.8, 0.5], sizes=(2, 1))
    np.testing.assert_allclose(prob, [0.8 * 0.2 * 0.5, 0.2 * 0.2 * 0.5], rtol=1e-15)


@given(seed=seeds, p1=keep_probs, p2=keep_probs)
@settings(max_examples=20, deadline=None)
def test_accumulated_total_probability_is_one(seed: int, p1: float, p2: float) -> None:
    net = random_net(seed, [5, 6, 3], [p1, p2])
    res = E.enumerate_ensemble(net, np.ones(5), chunk=64)
    assert res.n_subnetworks == 2**11
    assert res.total_probability == pytest.approx(1.0, abs=1e-14)


# --------------------------------------------------------------------------- #
# exact enumeration against brute force
# --------------------------------------------------------------------------- #


@given(seed=seeds, n=st.integers(1, 6), n_classes=st.integers(2, 5), p=keep_probs, variant=variants)
@settings(max_examples=30, deadline=None)
def test_single_layer_matches_itertools_brute_force(
    seed: int, n: int, n_classes: int, p: float, variant: str
) -> None:
    net = random_net(seed, [n, n_classes], [p])
    x = np.random.default_rng(seed + 1).normal(size=n)
    res = E.enumerate_ensemble(net, x, variant)
    ref = brute_force(net, x, variant)
    for f in FIELDS:
        np.testing.assert_allclose(getattr(res, f), ref[f], rtol=1e-12, atol=1e-15, err_msg=f)


@given(
    seed=seeds,
    ps=st.lists(st.sampled_from([1.0, 0.5, 0.8, 0.3]), min_size=2, max_size=3),
    variant=variants,
)
@settings(max_examples=25, deadline=None)
def test_deep_relu_net_matches_itertools_brute_force(seed: int, ps: list[float], variant: str) -> None:
    widths = [3, 4, 3, 2][: len(ps) + 1]
    net = random_net(seed, widths, ps)
    xs = np.random.default_rng(seed + 1).normal(size=(2, widths[0]))
    res = E.enumerate_ensemble(net, xs, variant, chunk=8)
    for b, x in enumerate(xs):
        ref = brute_force(net, x, variant)
        for f in FIELDS:
            np.testing.assert_allclose(getattr(res, f)[b], ref[f], rtol=1e-12, atol=1e-15, err_msg=f)


def test_subnetwork_logits_agree_with_the_streamed_table() -> None:
    # the general matmul path and the doubling table of enumerate_ensemble
    net = random_net(3, [5, 4, 3], [0.7, 0.6])
    x = np.random.default_rng(4).normal(size=(2, 5))
    masks = np.concatenate(list(E.mask_blocks(net.n_dropped, 100)))
    prob = E.mask_probabilities(masks, [0.7, 0.6], sizes=net.dropped_sizes)
    s = np.exp(E.log_softmax(E.subnetwork_logits(net, x, masks)))
    am = np.einsum("k,kbc->bc", prob, s)
    res = E.enumerate_ensemble(net, x, chunk=16)
    np.testing.assert_allclose(am, res.arithmetic_mean, rtol=1e-13, atol=1e-16)


def test_no_dropout_is_a_single_network() -> None:
    net = random_net(0, [4, 3], [1.0])
    res = E.enumerate_ensemble(net, np.arange(4.0))
    assert res.n_subnetworks == 1
    for f in FIELDS:
        np.testing.assert_allclose(getattr(res, f), res.weight_scaled, rtol=1e-15)
    np.testing.assert_array_equal(res.output_variance, 0.0)


# --------------------------------------------------------------------------- #
# result #10: the single softmax layer
# --------------------------------------------------------------------------- #


def test_weight_scaling_is_the_nwgm_of_all_2_to_20_subnetworks() -> None:
    # The logits are linear in the mask, so E[log s_c] = z_c(p x) - E[logsumexp]
    # and the NWGM is softmax(z(p x)), the weight-scaled net. What is left is
    # rounding: each E[z_c] is a float64 sum of 2^20 terms, accumulated in blocks;
    # its relative error grows like eps * sqrt(terms per chain), far below 1e-14
    # (measured about 1e-15). A real gap would be O(1e-2), like AM's below.
    rng = np.random.default_rng(2014)
    n, n_classes, p = 20, 10, 0.5
    x, w, b = rng.normal(size=n), rng.normal(size=(n, n_classes)), rng.normal(size=n_classes)
    res = E.softmax_layer_ensemble(x, w, b, keep_prob=p)
    assert res.n_subnetworks == 2**20
    rel = np.abs(res.nwgm / res.weight_scaled - 1).max()
    assert rel < 1e-14, f"NWGM and weight scaling differ by {rel:.1e} relative"
    gap = np.abs(res.arithmetic_mean - res.weight_scaled).max()
    assert gap > 1e-2, f"AM equals weight scaling to {gap:.1e}: expected a clear gap"


@given(seed=seeds, n=st.integers(1, 12), batch=st.integers(1, 3), p=keep_probs, variant=variants)
@settings(max_examples=30, deadline=None)
def test_weight_scaling_equals_nwgm_for_any_single_softmax_layer(
    seed: int, n: int, batch: int, p: float, variant: str
) -> None:
    net = random_net(seed, [n, 4], [p])
    x = np.random.default_rng(seed + 1).normal(size=(batch, n))
    res = E.enumerate_ensemble(net, x, variant)
    np.testing.assert_allclose(res.nwgm, res.weight_scaled, rtol=1e-13, atol=0)


def test_arithmetic_mean_differs_from_weight_scaling() -> None:
    net = random_net(7, [10, 5], [0.5])
    res = E.enumerate_ensemble(net, np.random.default_rng(8).normal(size=10))
    gap = np.abs(res.arithmetic_mean - res.weight_scaled).max()
    assert gap > 1e-3, f"AM and weight scaling agree to {gap:.1e} for a generic input"


# --------------------------------------------------------------------------- #
# streaming, variants
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("widths, ps", [([10, 4], [0.6]), ([4, 5, 3], [0.8, 0.5])])
def test_chunk_size_does_not_change_the_result(widths: list[int], ps: list[float]) -> None:
    net = random_net(11, widths, ps)
    x = np.random.default_rng(12).normal(size=(2, widths[0]))
    ref = E.enumerate_ensemble(net, x, chunk=1 << 20)
    for chunk in (1, 3, 16, 100, None):
        res = E.enumerate_ensemble(net, x, chunk=chunk)
        for f in (*FIELDS, "output_variance", "expected_log_softmax"):
            np.testing.assert_allclose(
                getattr(res, f), getattr(ref, f), rtol=1e-13, atol=1e-16, err_msg=f"{f}, {chunk=}"
            )


@given(
    seed=seeds,
    ps=st.lists(st.sampled_from([1.0, 0.5, 0.8, 0.3, 0.9]), min_size=1, max_size=3),
)
@settings(max_examples=30, deadline=None)
def test_standard_and_inverted_variants_give_the_same_ensemble(seed: int, ps: list[float]) -> None:
    # standard: weights W, sub-networks m*h, test p*h;
    # inverted: weights p*W, sub-networks m*h/p, test h.
    widths = [4, 3, 3, 3][: len(ps) + 1]
    net = random_net(seed, widths, ps)
    x = np.random.default_rng(seed + 1).normal(size=(2, widths[0]))
    std = E.enumerate_ensemble(net, x, "standard")
    inv = E.enumerate_ensemble(inverted_twin(net), x, "inverted")
    for f in (*FIELDS, "output_variance"):
        np.testing.assert_allclose(getattr(std, f), getattr(inv, f), rtol=1e-13, atol=1e-15, err_msg=f)


# --------------------------------------------------------------------------- #
# deeper ReLU nets: weight scaling is only approximate
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("ps", [(0.8, 1.0), (0.8, 0.5)], ids=["inputs", "inputs+hidden"])
def test_weight_scaling_is_not_the_nwgm_behind_a_relu(ps: tuple[float, float]) -> None:
    net = random_net(1, [6, 8, 4], list(ps))
    res = E.enumerate_ensemble(net, np.random.default_rng(2).normal(size=6))
    gap = np.abs(res.nwgm - res.weight_scaled).max()
    assert gap > 1e-6, f"NWGM equals weight scaling to {gap:.1e} in a ReLU net"


def test_dropout_only_on_the_softmax_layers_inputs_is_still_exact() -> None:
    # the hidden layer is deterministic, so the softmax layer sees a fixed h
    net = random_net(1, [6, 8, 4], [1.0, 0.5])
    res = E.enumerate_ensemble(net, np.random.default_rng(2).normal(size=6))
    np.testing.assert_allclose(res.nwgm, res.weight_scaled, rtol=1e-13)


# --------------------------------------------------------------------------- #
# Monte Carlo dropout
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("variant", ["standard", "inverted"])
def test_mc_dropout_is_within_a_few_standard_errors_of_the_am(variant: str) -> None:
    net = random_net(5, [6, 8, 4], [0.8, 0.5])
    if variant == "inverted":
        net = inverted_twin(net)
    x = np.random.default_rng(6).normal(size=6)
    exact = E.enumerate_ensemble(net, x, variant)
    t = 4000
    mc = E.mc_dropout_predict(net, x, t, variant, rng=7)
    z = (mc - exact.arithmetic_mean) / np.sqrt(exact.output_variance / t)
    assert np.abs(z).max() < 5, f"MC estimate {np.abs(z).max():.1f} standard errors from AM"


def test_mc_error_falls_like_one_over_sqrt_t() -> None:
    net = random_net(5, [6, 8, 4], [0.8, 0.5])
    x = np.random.default_rng(6).normal(size=(2, 6))
    curve = E.mc_error_curve(net, x, [10, 100, 1000], n_repeats=30, rng=9)
    ratio = curve.rms_error / curve.predicted_rms
    # rms over 30 runs of a squared error with ~8 terms: ratio within 0.6-1.4
    assert np.all((ratio > 0.6) & (ratio < 1.4)), ratio
    slope = np.polyfit(np.log(curve.sample_sizes), np.log(curve.rms_error), 1)[0]
    assert -0.65 < slope < -0.35, f"error ~ T^{slope:.2f}, expected T^-0.5"


def test_mc_same_seed_same_masks_in_both_variants() -> None:
    net = random_net(5, [6, 8, 4], [0.8, 0.5])
    x = np.ones(6)
    a = E.mc_dropout_predict(net, x, 300, "standard", rng=1, chunk=7)
    b = E.mc_dropout_predict(inverted_twin(net), x, 300, "inverted", rng=1, chunk=7)
    np.testing.assert_allclose(a, b, rtol=1e-13)


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #


def test_errors_name_the_bad_value_and_the_fix() -> None:
    net = random_net(0, [3, 2], [0.5])
    with pytest.raises(ValueError, match=r"keep_prob must be in \(0, 1\]; got 1.5.*rate"):
        E.DropoutNet(net.weights, net.biases, [1.5])
    with pytest.raises(ValueError, match="variant must be one of.*'keras'"):
        E.enumerate_ensemble(net, np.ones(3), "keras")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"x must have shape \(3,\) or \(batch, 3\).*\(4,\)"):
        E.enumerate_ensemble(net, np.ones(4))
    with pytest.raises(ValueError, match="chunk must be a positive integer.*0"):
        E.enumerate_ensemble(net, np.ones(3), chunk=0)
    with pytest.raises(ValueError, match="2\\^40 sub-networks.*mc_dropout_predict"):
        E.enumerate_ensemble(random_net(0, [40, 2], [0.5]), np.ones(40))
    with pytest.raises(ValueError, match=r"biases\[0\] must have shape \(2,\)"):
        E.DropoutNet(net.weights, [np.zeros(3)], [0.5])
    with pytest.raises(ValueError, match=r"weights\[1\] takes 4 inputs but layer 0 has 2"):
        E.DropoutNet([np.ones((3, 2)), np.ones((4, 2))], [np.zeros(2)] * 2, [0.5, 0.5])
    with pytest.raises(ValueError, match="masks must have shape \\(k, 3\\)"):
        E.subnetwork_logits(net, np.ones(3), np.ones((2, 4)))
    with pytest.raises(ValueError, match="strictly increasing"):
        E.mc_error_curve(net, np.ones(3), [100, 10])


# --------------------------------------------------------------------------- #
# budget
# --------------------------------------------------------------------------- #


def test_all_2_to_20_subnetworks_of_a_softmax_layer_in_blocks_equal_one_block() -> None:
    """The chunked and the one-block enumeration of 2^16 sub-networks agree to float64
    summation rounding (the same terms added in another order: a sum of N terms moves by
    at most N u relative; 64 N eps leaves room for the log-sum-exp), and the 2^20
    enumeration is a probability vector. (Speed is not asserted: a unit test on a shared
    machine cannot time code reliably; this used to assert 2^20 in under 2 s.)"""
    rng = np.random.default_rng(0)
    n, n_classes = 16, 10
    x, w, b = rng.normal(size=n), rng.normal(size=(n, n_classes)), rng.normal(size=n_classes)
    whole = E.softmax_layer_ensemble(x, w, b, keep_prob=0.5)
    blocks = E.softmax_layer_ensemble(x, w, b, keep_prob=0.5, chunk=1 << 10)
    for field in ("arithmetic_mean", "nwgm", "expected_log_softmax"):
        a, c = np.asarray(getattr(whole, field)), np.asarray(getattr(blocks, field))
        np.testing.assert_allclose(a, c, rtol=64 * (1 << 16) * np.finfo(np.float64).eps, atol=0)
    x20, w20 = rng.normal(size=20), rng.normal(size=(20, n_classes))
    big = np.asarray(E.softmax_layer_ensemble(x20, w20, b, keep_prob=0.5).arithmetic_mean)
    assert np.all(big >= 0) and abs(big.sum() - 1) <= 1e-12


# --------------------------------------------------------------------------- #
# the spread of Monte Carlo dropout's squared error, exactly
# --------------------------------------------------------------------------- #


def test_mse_ratio_sd_is_the_exact_spread_of_two_draws():
    from dropout_lib.book.ensemble_checks import he_dropout_net

    net = he_dropout_net([3, 3, 2], (0.6, 0.7), 4)  # 6 dropped units: 64 sub-networks
    x = np.random.default_rng(2).normal(size=(2, 3))
    exact = E.enumerate_ensemble(net, x)
    tr, tr2, fourth = E.mc_error_moments(net, x, exact, chunk=16)
    np.testing.assert_allclose(tr, exact.output_variance.sum(), rtol=1e-12)
    # every pair of masks (T = 2) with its probability: the ratio's exact variance
    masks = np.concatenate(list(E.mask_blocks(net.n_dropped, 64)))
    prob = E.mask_probabilities(masks, [0.6, 0.7], net.dropped_sizes)
    s = np.exp(E.log_softmax(E.subnetwork_logits(net, x, masks))).reshape(len(masks), -1)
    d = s - exact.arithmetic_mean.reshape(-1)
    ratios, weights = [], []
    for i, j in itertools.product(range(len(masks)), repeat=2):
        ratios.append(np.sum(((d[i] + d[j]) / 2) ** 2) / (tr / 2))
        weights.append(prob[i] * prob[j])
    ratios, weights = np.array(ratios), np.array(weights)
    assert weights @ ratios == pytest.approx(1.0, rel=1e-12)  # expectation exactly 1
    var = weights @ (ratios - 1) ** 2
    sd = E.mse_ratio_sd((tr, tr2, fourth), [1, 2])
    assert sd[1] ** 2 == pytest.approx(var, rel=1e-10)
    assert sd[0] ** 2 == pytest.approx(fourth / tr**2 - 1, rel=1e-10)  # T = 1: Var ||d||^2 / (tr Sigma)^2
    with pytest.raises(ValueError, match="moments"):
        E.mse_ratio_sd((0.0, 1.0, 1.0), [1])
