"""Tests of dropout_lib.book.ensemble_checks: twins, rounding bounds, MC rate fits.

Notation: keep_prob = p (the paper's); Keras's rate = 1 - p.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropout_lib.book import ensemble_checks as C
from dropout_lib.book import publish
from dropout_lib.theory import ensemble as E

seeds = st.integers(0, 2**32 - 1)
keep_probs = st.sampled_from([1.0, 0.9, 0.8, 0.5, 0.3])


# --------------------------------------------------------------------------- #
# twins
# --------------------------------------------------------------------------- #


@given(seed=seeds, ps=st.lists(keep_probs, min_size=1, max_size=3))
@settings(max_examples=30, deadline=None)
def test_inverted_twin_has_the_same_subnetworks_and_test_net(seed: int, ps: list[float]) -> None:
    widths = [4, 5, 3, 3][: len(ps) + 1]
    net = C.he_dropout_net(widths, ps, seed)
    twin = C.inverted_twin(net)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, widths[0]))
    masks = (rng.random((16, net.n_dropped)) < 0.5).astype(float)
    np.testing.assert_allclose(
        E.subnetwork_logits(twin, x, masks, "inverted"),
        E.subnetwork_logits(net, x, masks, "standard"),
        rtol=1e-13,
        atol=1e-13,
    )
    np.testing.assert_allclose(
        E.weight_scaled_logits(twin, x, "inverted"),
        E.weight_scaled_logits(net, x, "standard"),
        rtol=1e-13,
        atol=1e-13,
    )
    for w_t, w, p in zip(twin.weights, net.weights, ps):
        np.testing.assert_array_equal(w_t, p * w)
    for b_t, b in zip(twin.biases, net.biases):
        np.testing.assert_array_equal(b_t, b)


def test_standard_twin_inverts_inverted_twin() -> None:
    net = C.he_dropout_net([4, 6, 3], [0.8, 0.5], 1)
    back = C.standard_twin(C.inverted_twin(net))
    for a, b in zip(back.weights, net.weights):
        np.testing.assert_allclose(a, b, rtol=1e-15)


def test_scaling_the_bias_too_breaks_the_twin() -> None:
    # negative control: the map is W -> pW with b unchanged, not (W, b) -> p(W, b)
    net = C.he_dropout_net([4, 3], [0.5], 2, bias_scale=1.0)
    wrong = E.DropoutNet([0.5 * net.weights[0]], [0.5 * net.biases[0]], [0.5])
    x = np.ones(4)
    gap = np.abs(
        E.weight_scaled_logits(wrong, x, "inverted") - E.weight_scaled_logits(net, x, "standard")
    ).max()
    assert gap > 1e-3


def test_twins_at_keep_prob_one_half_are_bit_identical() -> None:
    # p = 1/2: p*W and h/p are exact in binary, so both variants do identical arithmetic
    net = C.he_dropout_net([6, 5, 4], [0.5, 0.5], 3)
    x = np.random.default_rng(4).normal(size=(2, 6))
    a = E.enumerate_ensemble(net, x, "standard", chunk=64)
    b = E.enumerate_ensemble(C.inverted_twin(net), x, "inverted", chunk=64)
    for f in ("arithmetic_mean", "nwgm", "weight_scaled"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


# --------------------------------------------------------------------------- #
# he_dropout_net
# --------------------------------------------------------------------------- #


def test_he_dropout_net_shapes_and_scale() -> None:
    net = C.he_dropout_net([400, 300, 2], [0.8, 0.5], 0, bias_scale=0.0)
    assert [w.shape for w in net.weights] == [(400, 300), (300, 2)]
    assert net.keep_probs == (0.8, 0.5)
    assert np.var(net.weights[0]) == pytest.approx(2 / 400, rel=0.02)
    np.testing.assert_array_equal(net.biases[0], 0.0)


def test_he_dropout_net_validates() -> None:
    with pytest.raises(ValueError, match="one entry per layer, 2"):
        C.he_dropout_net([3, 4, 2], [0.5])
    with pytest.raises(ValueError, match="at least two positive"):
        C.he_dropout_net([3], [])
    with pytest.raises(ValueError, match=r"keep_prob must be in \(0, 1\]; got 0.*rate"):
        C.he_dropout_net([3, 2], [0.0])
    with pytest.raises(ValueError, match="bias_scale"):
        C.he_dropout_net([3, 2], [0.5], bias_scale=-1.0)


# --------------------------------------------------------------------------- #
# rounding bound
# --------------------------------------------------------------------------- #


@given(
    seed=seeds,
    n=st.integers(1, 12),
    p=st.floats(0.05, 1.0),
    chunk=st.sampled_from([1, 4, 64, 4096]),
    variant=st.sampled_from(["standard", "inverted"]),
    scale=st.sampled_from([0.1, 1.0, 30.0]),
)
@settings(max_examples=40, deadline=None)
def test_single_layer_nwgm_is_within_the_bound_of_weight_scaling(
    seed: int, n: int, p: float, chunk: int, variant: str, scale: float
) -> None:
    rng = np.random.default_rng(seed)
    net = E.DropoutNet([scale * rng.normal(size=(n, 5))], [scale * rng.normal(size=5)], [p])
    x = rng.normal(size=(2, n))
    res = E.enumerate_ensemble(net, x, variant, chunk=chunk)
    bound = C.enumeration_rounding_bound(net, x, chunk, variant)
    assert np.abs(res.nwgm / res.weight_scaled - 1).max() <= bound


@given(seed=seeds, ps=st.lists(keep_probs, min_size=2, max_size=3))
@settings(max_examples=20, deadline=None)
def test_twin_means_agree_within_the_bound(seed: int, ps: list[float]) -> None:
    widths = [4, 4, 3, 3][: len(ps) + 1]
    net = C.he_dropout_net(widths, ps, seed)
    x = np.random.default_rng(seed + 1).normal(size=(2, widths[0]))
    a = E.enumerate_ensemble(net, x, "standard", chunk=16)
    b = E.enumerate_ensemble(C.inverted_twin(net), x, "inverted", chunk=16)
    bound = C.enumeration_rounding_bound(net, x, 16)
    for f in ("arithmetic_mean", "nwgm", "weight_scaled"):
        assert np.abs(getattr(a, f) - getattr(b, f)).max() <= bound, f


def test_bound_counts_the_summation_depth_and_the_magnitudes() -> None:
    net = E.DropoutNet([np.ones((20, 2))], [np.zeros(2)], [0.5])
    x = np.ones(20)
    # D = (20 + 2) + k + B + 16 with k = B = 2^10; M = 20 + log 2 + 1
    depth = 22 + 1024 + 1024 + 16
    gamma = depth * C.UNIT_ROUNDOFF / (1 - depth * C.UNIT_ROUNDOFF)
    expected = 4 * gamma * (20 + np.log(2) + 1)
    assert C.enumeration_rounding_bound(net, x, 1024) == pytest.approx(expected, rel=1e-12)
    # a bigger block (fewer, longer sums) changes the depth; inverted scales by 1/p
    assert C.enumeration_rounding_bound(net, x, 1 << 16) > C.enumeration_rounding_bound(net, x, 1024)
    inv = C.enumeration_rounding_bound(net, x, 1024, "inverted")
    assert inv == pytest.approx(4 * gamma * (40 + np.log(2) + 1), rel=1e-12)


def test_bound_is_far_below_a_real_gap() -> None:
    # the bound must not be so loose that it would hide the AM-vs-WS gap
    rng = np.random.default_rng(2014)
    x, w, b = rng.normal(size=20), rng.normal(size=(20, 10)), rng.normal(size=10)
    net = E.DropoutNet([w], [b], [0.5])
    assert C.enumeration_rounding_bound(net, x, 1024) < 1e-9


def test_bound_validates() -> None:
    net = C.he_dropout_net([3, 2], [0.5], 0)
    with pytest.raises(ValueError, match="chunk must be the positive integer.*None"):
        C.enumeration_rounding_bound(net, np.ones(3), None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="variant must be one of"):
        C.enumeration_rounding_bound(net, np.ones(3), 8, "keras")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"x must have shape \(3,\)"):
        C.enumeration_rounding_bound(net, np.ones(4), 8)
    with pytest.raises(TypeError, match="DropoutNet"):
        C.enumeration_rounding_bound("net", np.ones(3), 8)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# Monte Carlo rate
# --------------------------------------------------------------------------- #


def synthetic_curve(rate: float, reps: int = 40, seed: int = 0) -> E.MCErrorCurve:
    """Errors ~ T^rate with chi-distributed noise (8 degrees of freedom), nested-free."""
    rng = np.random.default_rng(seed)
    ts = np.array([10, 30, 100, 300, 1000, 3000])
    noise = np.sqrt(rng.chisquare(8, size=(reps, len(ts))) / 8)
    errors = noise * ts**rate
    return E.MCErrorCurve(
        sample_sizes=ts,
        rms_error=np.sqrt((errors**2).mean(axis=0)),
        predicted_rms=ts**-0.5,
        errors=errors,
    )


def test_fit_accepts_the_one_over_sqrt_t_law() -> None:
    fit = C.fit_mc_rate(synthetic_curve(-0.5), rng=1)
    assert 0 < fit.slope_stderr < 0.05
    assert abs(fit.slope_z()) < 4
    assert np.all(np.abs(fit.mse_ratio_z()) < 4)


@pytest.mark.parametrize("rate", [-1.0, -0.25])
def test_fit_rejects_other_rates(rate: float) -> None:
    fit = C.fit_mc_rate(synthetic_curve(rate), rng=1)
    assert abs(fit.slope_z()) > 10
    assert np.abs(fit.mse_ratio_z()).max() > 10


def test_fit_on_real_mc_dropout() -> None:
    net = C.he_dropout_net([5, 5, 3], [0.8, 0.5], 5)
    x = np.random.default_rng(6).normal(size=(2, 5))
    curve = E.mc_error_curve(net, x, [10, 100, 1000], n_repeats=30, rng=9)
    fit = C.fit_mc_rate(curve, rng=0)
    assert abs(fit.slope_z()) < 4, (fit.slope, fit.slope_stderr)
    assert np.all(np.abs(fit.mse_ratio_z()) < 4), fit.mse_ratio


def test_fit_is_deterministic_given_the_seed() -> None:
    a = C.fit_mc_rate(synthetic_curve(-0.5), rng=3)
    b = C.fit_mc_rate(synthetic_curve(-0.5), rng=3)
    assert a.slope_stderr == b.slope_stderr


def test_fit_validates() -> None:
    curve = synthetic_curve(-0.5, reps=1)
    with pytest.raises(ValueError, match="at least 2 runs"):
        C.fit_mc_rate(curve)
    with pytest.raises(ValueError, match="n_boot"):
        C.fit_mc_rate(synthetic_curve(-0.5), n_boot=3)
    with pytest.raises(TypeError, match="MCErrorCurve"):
        C.fit_mc_rate("curve")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# rounding noise and deep rows
# --------------------------------------------------------------------------- #


def test_rounding_noise_is_twice_the_bound_relative() -> None:
    assert C.rounding_noise(0.1, 2.5e-11) == pytest.approx(5e-10)
    assert C.rounding_noise(-0.1, 0.0) == 1e-12  # the floor
    with pytest.raises(ValueError, match="nonzero"):
        C.rounding_noise(0.0, 1e-11)
    with pytest.raises(ValueError, match="bound"):
        C.rounding_noise(1.0, -1.0)


def test_deep_ensembles_share_weights_and_measure_gaps() -> None:
    widths = [3, 4, 2]
    x = np.random.default_rng(1).normal(size=(2, 3))
    rows = C.deep_ensembles(widths, {"a": (0.5, 1.0), "b": (1.0, 0.5)}, x, chunk=4, seed=3)
    for w_a, w_b in zip(rows["a"].net.weights, rows["b"].net.weights):
        np.testing.assert_array_equal(w_a, w_b)  # one net, two configurations
    row = rows["b"]  # dropout only before the softmax layer: NWGM = WS to rounding
    assert row.nwgm_gap <= row.bound
    res = E.enumerate_ensemble(row.net, x, chunk=4)
    assert row.am_gap == float(np.abs(res.arithmetic_mean - res.weight_scaled).max())
    assert row.am_gap > row.bound


# --------------------------------------------------------------------------- #
# Bounds glued into prose: a floor for "at least", a ceiling for "within"
# --------------------------------------------------------------------------- #


@given(st.floats(-1e3, 1e3, allow_nan=False), st.integers(0, 3))
@settings(max_examples=200, deadline=None)
def test_stable_floor_and_ceil_are_bounds(value, decimals):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(publish.STORING, "1")  # storing: refuse, never round to fewer decimals
        try:
            low = C.stable_floor(value, decimals, 1e-9)
            high = C.stable_ceil(value, decimals, 1e-9)
        except ValueError:  # near a multiple of 10**-decimals: refused, never wrong
            return
    assert low <= value <= high
    assert high - low <= 10.0**-decimals * (1 + 1e-9)


def test_stable_floor_refuses_a_boundary_while_storing(monkeypatch):
    monkeypatch.setenv(publish.STORING, "1")
    with pytest.raises(ValueError):
        C.stable_floor(27.0, 0, 1e-9)
    assert C.stable_floor(26.6, 0, 1e-9) == 26.0
    assert C.stable_ceil(26.6, 0, 1e-9) == 27.0


def test_deep_row_closer_decides_only_beyond_rounding():
    row = C.DeepRow(net=None, result=None, nwgm_gap=0.1, am_gap=0.2, bound=1e-12)
    assert row.closer == "NWGM"
    assert C.DeepRow(net=None, result=None, nwgm_gap=0.3, am_gap=0.2, bound=1e-12).closer == "AM"
    tie = C.DeepRow(net=None, result=None, nwgm_gap=0.2, am_gap=0.2 + 1e-12, bound=1e-12)
    assert tie.closer.startswith("NWGM and AM alike")
