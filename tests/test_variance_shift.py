"""Tests of dropout_lib.theory.variance_shift: moments after dropout and BatchNorm (result #11).

Notation: keep_prob = p (the paper's); Keras's rate = 1 - p. The exact tests
enumerate the joint law of (data row, mask) on small data sets instead of
sampling it, so they check the closed forms to rounding error.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropout_lib.reference import dropout
from dropout_lib.theory import moments
from dropout_lib.theory import variance_shift as vs

keep_probs = st.floats(0.05, 1.0)
seeds = st.integers(0, 2**32 - 1)
variants = st.sampled_from(["standard", "inverted"])
trainings = st.booleans()


def small_data(seed: int, rows: int = 7, units: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, units)) * rng.uniform(0.2, 2, units) + rng.normal(size=units)


def exact_law(x: np.ndarray, p: float, variant: str, training: bool):
    """All values of d(x) for ONE unit with their probabilities: rows x {kept, dropped}."""
    n = x.shape[0]
    if not training:
        return dropout(variant, x, p, training=False), np.full(n, 1.0 / n)
    kept = dropout(variant, x, p, training=True, mask=np.ones_like(x))
    values = np.concatenate([kept, np.zeros_like(x)])
    probs = np.concatenate([np.full(n, p / n), np.full(n, (1 - p) / n)])
    return values, probs


def law_moments(values: np.ndarray, probs: np.ndarray):
    mean = probs @ values
    var = probs @ (values - mean) ** 2
    m4 = probs @ (values - mean) ** 4
    return mean, var, m4


# --------------------------------------------------------------------------- #
# one unit
# --------------------------------------------------------------------------- #


@settings(max_examples=60, deadline=None)
@given(seed=seeds, p=keep_probs, variant=variants, training=trainings)
def test_dropout_moments_match_exact_enumeration(seed, p, variant, training):
    x = small_data(seed, units=1)[:, 0]
    mean, var, m4 = law_moments(*exact_law(x, p, variant, training))
    got_mean, got_var = vs.dropout_moments(variant, p, x.mean(), x.var(), training=training)
    scale = max(1.0, np.abs(x).max()) / p
    assert got_mean == pytest.approx(mean, rel=1e-12, abs=1e-12 * scale)
    assert got_var == pytest.approx(var, rel=1e-11, abs=1e-12 * scale**2)
    e_mean, e_var, e_m4 = vs.empirical_dropout_moments(variant, p, x[:, None], training=training)
    assert e_mean[0] == pytest.approx(mean, rel=1e-12, abs=1e-12 * scale)
    assert e_var[0] == pytest.approx(var, rel=1e-11, abs=1e-12 * scale**2)
    assert e_m4[0] == pytest.approx(m4, rel=1e-10, abs=1e-12 * scale**4)


@settings(max_examples=60, deadline=None)
@given(mu=st.floats(-5, 5), s2=st.floats(0, 10), p=keep_probs, training=trainings)
def test_inverted_is_standard_over_p(mu, s2, p, training):
    m_s, v_s = vs.dropout_moments("standard", p, mu, s2, training=training)
    m_i, v_i = vs.dropout_moments("inverted", p, mu, s2, training=training)
    np.testing.assert_allclose(m_i * p, m_s, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(v_i * p**2, v_s, rtol=1e-13, atol=1e-300)


@settings(max_examples=40, deadline=None)
@given(h=st.floats(-10, 10), p=keep_probs, variant=variants)
def test_fixed_input_agrees_with_chapter_one_moments(h, p, variant):
    """s2 = 0, mu = h: the per-input moments of dropout_lib.theory.moments."""
    mean, var = vs.dropout_moments(variant, p, h, 0.0, training=True)
    np.testing.assert_allclose(mean, moments.output_mean(variant, h, p), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(var, moments.output_variance(variant, h, p), rtol=1e-13, atol=1e-300)


def test_closed_forms_and_chapter_one_special_case():
    p, mu, s2 = 0.3, 1.7, 0.6
    assert vs.dropout_moments("standard", p, mu, s2, training=True)[1] == pytest.approx(
        p * (s2 + mu**2) - p**2 * mu**2
    )
    assert vs.dropout_moments("inverted", p, mu, s2, training=False)[1] == pytest.approx(s2)
    assert vs.dropout_moments("standard", p, mu, s2, training=False)[1] == pytest.approx(p**2 * s2)
    # A fixed input h (s2 = 0): the per-input variances p(1-p)h^2 and (1-p)h^2/p.
    h = 2.5
    assert vs.dropout_moments("standard", p, h, 0.0, training=True)[1] == pytest.approx(p * (1 - p) * h**2)
    assert vs.dropout_moments("inverted", p, h, 0.0, training=True)[1] == pytest.approx((1 - p) * h**2 / p)


@settings(max_examples=60, deadline=None)
@given(mu=st.floats(-5, 5), s2=st.floats(1e-3, 10), p=keep_probs)
def test_shift_ratio_is_test_over_train_for_both_variants(mu, s2, p):
    r = vs.variance_shift_ratio(p, mu, s2)
    for variant in ("standard", "inverted"):
        v_train = vs.dropout_moments(variant, p, mu, s2, training=True)[1]
        v_test = vs.dropout_moments(variant, p, mu, s2, training=False)[1]
        assert v_test / v_train == pytest.approx(float(r), rel=1e-12)
    assert 0 <= r <= 1 + 1e-15


def test_shift_ratio_special_values():
    assert vs.variance_shift_ratio(0.35, 0.0, 2.0) == pytest.approx(0.35)  # zero mean: r = p
    assert vs.variance_shift_ratio(1.0, 3.0, 2.0) == pytest.approx(1.0)  # no dropout
    assert vs.variance_shift_ratio(0.5, 4.0, 0.0) == 0.0  # constant nonzero unit
    np.testing.assert_allclose(vs.variance_shift_ratio(0.5, [0.0, 1.0], [1.0, 1.0]), [0.5, 0.5 / 1.5])


# --------------------------------------------------------------------------- #
# a linear layer after dropout
# --------------------------------------------------------------------------- #


def linear_exact(x, w, p, variant, training):
    """Mean and variance of z = d(x) @ w by summing over rows and all 2^n masks."""
    n_rows, n = x.shape
    if not training:
        z = dropout(variant, x, p, training=False) @ w
        return z.mean(axis=0), z.var(axis=0)
    zs, probs = [], []
    for bits in itertools.product([0.0, 1.0], repeat=n):
        m = np.array(bits)
        prob = p ** m.sum() * (1 - p) ** (n - m.sum())
        zs.append(dropout(variant, x, p, training=True, mask=np.broadcast_to(m, x.shape)) @ w)
        probs.append(np.full(n_rows, prob / n_rows))
    z, pr = np.concatenate(zs), np.concatenate(probs)
    mean = pr @ z
    return mean, pr @ (z - mean) ** 2


@settings(max_examples=30, deadline=None)
@given(seed=seeds, p=st.floats(0.05, 0.95), variant=variants, training=trainings)
def test_linear_moments_match_exhaustive_enumeration(seed, p, variant, training):
    x = small_data(seed, rows=6, units=4)
    w = np.random.default_rng(seed + 1).normal(size=(4, 2))
    mean, var = linear_exact(x, w, p, variant, training)
    got_mean, got_var = vs.linear_dropout_moments(
        variant, p, w, x.mean(axis=0), np.cov(x, rowvar=False, bias=True), training=training
    )
    scale = (1 + np.abs(x).max() * np.abs(w).sum()) / p
    np.testing.assert_allclose(got_mean, mean, rtol=1e-11, atol=1e-12 * scale)
    np.testing.assert_allclose(got_var, var, rtol=1e-10, atol=1e-12 * scale**2)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, p=st.floats(0.05, 1.0))
def test_linear_ratio_reduces_to_unit_ratio_and_is_variant_free(seed, p):
    x = small_data(seed, rows=9, units=3)
    mu, cov = x.mean(axis=0), np.cov(x, rowvar=False, bias=True)
    np.testing.assert_allclose(
        vs.linear_variance_shift_ratio(p, np.eye(3), mu, cov),
        vs.variance_shift_ratio(p, mu, np.diag(cov)),
        rtol=1e-12,
    )
    w = np.random.default_rng(seed).normal(size=(3, 2))
    r = vs.linear_variance_shift_ratio(p, w, mu, cov)
    for variant in ("standard", "inverted"):
        train = vs.linear_dropout_moments(variant, p, w, mu, cov, training=True)[1]
        test = vs.linear_dropout_moments(variant, p, w, mu, cov, training=False)[1]
        np.testing.assert_allclose(test / train, r, rtol=1e-12)


def test_linear_ratio_grows_with_correlated_signal():
    # n identical-ish, strongly correlated zero-mean inputs summed with equal
    # weights: the signal w'Cw grows like n^2, the mask noise like n.
    p = 0.5
    ratios = []
    for n in (1, 4, 16, 64):
        cov = np.full((n, n), 0.9) + 0.1 * np.eye(n)
        ratios.append(float(vs.linear_variance_shift_ratio(p, np.ones(n), np.zeros(n), cov)[0]))
    assert ratios[0] == pytest.approx(p)
    assert all(a < b for a, b in zip(ratios, ratios[1:])) and ratios[-1] > 0.95


# --------------------------------------------------------------------------- #
# Monte Carlo helpers
# --------------------------------------------------------------------------- #


def test_moving_variance_law_matches_simulated_ema():
    rng = np.random.default_rng(2)
    data = rng.exponential(size=(300, 1))
    p, b, m, steps, reps = 0.6, 16, 0.7, 25, 4000
    _, var, m4 = vs.empirical_dropout_moments("standard", p, data, training=True)
    mean, sd = vs.moving_variance_law(var, m4, batch_size=b, momentum=m, steps=steps, initial=1.0)
    moving = np.ones(reps)
    for _ in range(steps):
        rows = data[rng.integers(300, size=(reps, b)), 0]
        y = dropout("standard", rows, p, training=True, rng=rng)
        moving = m * moving + (1 - m) * y.var(axis=1)
    assert abs(moving.mean() - mean[0]) < 5 * moving.std() / np.sqrt(reps)
    assert moving.std() == pytest.approx(sd[0], rel=0.08)


def test_moving_variance_law_one_step_closed_form():
    mean, sd = vs.moving_variance_law(2.0, 12.0, batch_size=10, momentum=0.25, steps=1, initial=3.0)
    e_b = 0.9 * 2.0
    var_b = 0.81 * (12.0 / 10 - 4.0 * 7 / 90)
    assert mean == pytest.approx(0.25 * 3.0 + 0.75 * e_b)
    assert sd == pytest.approx(0.75 * np.sqrt(var_b))


# --------------------------------------------------------------------------- #
# BatchNorm and epsilon
# --------------------------------------------------------------------------- #


@settings(max_examples=60, deadline=None)
@given(seed=seeds, p=st.floats(0.05, 1.0), eps=st.floats(0, 1e-1))
def test_epsilon_map_makes_batchnorm_outputs_identical(seed, p, eps):
    """Batch statistics (training) and moving statistics (test) alike."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 3)) + 1.0
    mask = (rng.random(x.shape) < p).astype(float)
    if np.any(mask.sum(axis=0) < 2):
        mask[:2] = 1.0
    y_std = dropout("standard", x, p, training=True, mask=mask)
    y_inv = dropout("inverted", x, p, training=True, mask=mask)
    out_inv = vs.batchnorm(y_inv, y_inv.mean(0), y_inv.var(0), eps)
    out_std = vs.batchnorm(y_std, y_std.mean(0), y_std.var(0), vs.equivalent_epsilon(p, eps))
    np.testing.assert_allclose(out_std, out_inv, rtol=1e-11, atol=1e-11)
    same = vs.batchnorm(y_std, y_std.mean(0), y_std.var(0), eps)
    ratio = vs.same_epsilon_output_ratio(p, y_inv.var(0), eps)
    np.testing.assert_allclose(same, ratio * out_inv, rtol=1e-11, atol=1e-11)


def test_same_epsilon_ratio_first_order_and_limits():
    p, v, eps = 0.5, 2.0, 1e-6
    r = float(vs.same_epsilon_output_ratio(p, v, eps))
    assert 1 - r == pytest.approx((1 / p**2 - 1) * eps / (2 * v), rel=1e-5)
    assert vs.same_epsilon_output_ratio(p, v, 0.0) == 1.0
    assert vs.same_epsilon_output_ratio(1.0, v, 0.3) == 1.0
    assert vs.equivalent_epsilon(0.5, 1e-3) == pytest.approx(2.5e-4)


# --------------------------------------------------------------------------- #
# driving layers
# --------------------------------------------------------------------------- #


class Recorder:
    def __init__(self, scale=1.0):
        self.seen, self.scale = [], scale

    def __call__(self, x, training):
        assert training is True
        self.seen.append(np.array(x))
        return x * self.scale


def test_run_training_calls_feeds_every_pair_the_same_rows():
    x = np.arange(20.0).reshape(10, 2)
    d1, d2, n1, n2 = Recorder(1.0), Recorder(2.0), Recorder(), Recorder()
    last = vs.run_training_calls([d1, d2], [n1, n2], x, batch_size=4, steps=3, seed=0)
    assert len(n1.seen) == 3 and all(s.shape == (4, 2) for s in n1.seen)
    for a, b in zip(d1.seen, d2.seen):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(n1.seen, n2.seen):
        np.testing.assert_array_equal(2 * a, b)
    np.testing.assert_array_equal(last[1], 2 * last[0])
    rows = np.random.default_rng(0).integers(10, size=4)
    np.testing.assert_array_equal(d1.seen[0], x[rows])


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: vs.dropout_moments("keras", 0.5, 0, 1, training=True), "variant"),
        (lambda: vs.dropout_moments("standard", 1.5, 0, 1, training=True), "keep_prob"),
        (lambda: vs.dropout_moments("standard", 0.0, 0, 1, training=True), "keep_prob"),
        (lambda: vs.dropout_moments("standard", 0.5, 0, -1, training=True), "variance"),
        (lambda: vs.dropout_moments("standard", 0.5, np.nan, 1, training=True), "finite"),
        (lambda: vs.variance_shift_ratio(0.5, 0.0, 0.0), "undefined"),
        (
            lambda: vs.linear_dropout_moments(
                "standard", 0.5, np.ones((3, 2)), np.zeros(2), np.eye(2), training=True
            ),
            "shape",
        ),
        (
            lambda: vs.linear_dropout_moments(
                "standard", 0.5, np.ones((2, 2)), np.zeros(2), np.eye(3), training=True
            ),
            "covariance",
        ),
        (
            lambda: vs.linear_dropout_moments(
                "standard", 0.5, np.ones((2, 2)), np.zeros(2), np.array([[1, 1], [0, 1.0]]), training=True
            ),
            "symmetric",
        ),
        (lambda: vs.linear_variance_shift_ratio(0.5, np.zeros((2, 1)), np.zeros(2), np.eye(2)), "undefined"),
        (lambda: vs.empirical_dropout_moments("standard", 0.5, np.ones(3), training=True), "2-d"),
        (lambda: vs.moving_variance_law(1.0, 3.0, batch_size=2, momentum=0.9, steps=5), "batch_size"),
        (lambda: vs.moving_variance_law(1.0, 3.0, batch_size=8, momentum=1.0, steps=5), "momentum"),
        (lambda: vs.moving_variance_law(1.0, 3.0, batch_size=8, momentum=0.9, steps=0), "steps"),
        (lambda: vs.batchnorm(1.0, 0.0, 0.0, 0.0), "divide"),
        (lambda: vs.equivalent_epsilon(0.5, -1e-3), "epsilon"),
        (lambda: vs.same_epsilon_output_ratio(0.5, 0.0, 0.0), "undefined"),
        (
            lambda: vs.run_training_calls([Recorder()], [], np.ones((2, 2)), batch_size=1, steps=1, seed=0),
            "one norm",
        ),
        (
            lambda: vs.run_training_calls(
                [Recorder()], [Recorder()], np.ones((2, 2)), batch_size=0, steps=1, seed=0
            ),
            "batch_size",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_mc_variance_shift_ratio_is_calibrated():
    rng = np.random.default_rng(3)
    p, mu = 0.4, 1.5
    exact = float(vs.variance_shift_ratio(p, mu, 1.0))
    zs = []
    for variant in ("standard", "inverted"):
        for _ in range(150):
            r, se = vs.mc_variance_shift_ratio(variant, p, rng.normal(mu, 1.0, size=4000), rng)
            zs.append((r - exact) / se)
    zs = np.array(zs)
    assert abs(zs.mean()) < 0.3 and 0.8 < zs.std() < 1.2


def test_mc_variance_shift_ratio_rejects_too_few_draws():
    with pytest.raises(ValueError, match="at least 8"):
        vs.mc_variance_shift_ratio("standard", 0.5, np.ones(5))


def test_run_training_calls_can_run_dropout_in_inference_mode():
    seen = []

    def drop(x, training):
        seen.append(training)
        return x

    vs.run_training_calls(
        [drop], [Recorder()], np.ones((4, 2)), batch_size=2, steps=2, seed=0, dropout_training=False
    )
    assert seen == [False, False]


class FakeBN:
    """Just enough of Keras's layer API for with_epsilon."""

    def __init__(self, epsilon=1e-3, momentum=0.9):
        self.epsilon, self.momentum, self.built, self.weights = epsilon, momentum, False, []

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def get_config(self):
        return {"epsilon": self.epsilon, "momentum": self.momentum}

    def build(self, shape):
        self.built, self.shape = True, shape

    @property
    def moving_mean(self):
        return self.weights[2]

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [np.array(w) for w in weights]


def test_with_epsilon_copies_statistics_and_changes_only_epsilon():
    bn = FakeBN()
    bn.weights = [np.ones(3), np.zeros(3), np.arange(3.0), np.full(3, 2.0)]
    clone = vs.with_epsilon(bn, 0.0)
    assert clone is not bn and clone.epsilon == 0.0 and clone.momentum == 0.9
    assert clone.shape == (None, 3)
    for a, b in zip(clone.get_weights(), bn.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="build"):
        vs.with_epsilon(FakeBN(), 0.0)


def test_predicted_test_output_variance_limits():
    rng = np.random.default_rng(4)
    x = np.maximum(rng.normal(size=(2000, 3)) + [0.0, 1.0, 2.0], 0)
    p, b = 0.7, 512
    # Many steps: the shift times B/(B-1) with dropout on; B/(B-1) with it off.
    pred, se = vs.predicted_test_output_variance("standard", p, x, batch_size=b, momentum=0.5, steps=200)
    r = vs.variance_shift_ratio(p, x.mean(0), x.var(0))
    np.testing.assert_allclose(pred, r * b / (b - 1), rtol=1e-12)
    assert np.all(se > 0) and np.all(se < 0.1 * pred)
    off, _ = vs.predicted_test_output_variance(
        "inverted",
        p,
        x,
        batch_size=b,
        momentum=0.5,
        steps=200,
        initial=[5.0, 6.0, 7.0],
        dropout_training=False,
    )
    np.testing.assert_allclose(off, b / (b - 1), rtol=1e-12)
    # One step from initial values s0: E[moving] = m s0 + (1 - m)(B-1)/B Var_train.
    s0 = np.array([2.0, 3.0, 4.0])
    one, _ = vs.predicted_test_output_variance(
        "inverted", p, x, batch_size=b, momentum=0.5, steps=1, initial=s0
    )
    _, v_train, _ = vs.empirical_dropout_moments("inverted", p, x, training=True)
    np.testing.assert_allclose(one, x.var(0) / (0.5 * s0 + 0.5 * (b - 1) / b * v_train), rtol=1e-12)


def test_closed_forms_accept_an_array_of_keep_probs():
    ps = np.linspace(0.1, 1.0, 10)
    r = vs.variance_shift_ratio(ps, 1.0, 2.0)
    np.testing.assert_allclose(r, [float(vs.variance_shift_ratio(p, 1.0, 2.0)) for p in ps])
    _, v = vs.dropout_moments("inverted", ps, 1.0, 2.0, training=True)
    np.testing.assert_allclose(
        v, [float(vs.dropout_moments("inverted", p, 1.0, 2.0, training=True)[1]) for p in ps]
    )
    with pytest.raises(ValueError, match="keep_prob"):
        vs.variance_shift_ratio(np.array([0.5, 0.0]), 1.0, 1.0)


def test_equivalent_initial_moving_variance_maps_both_ways():
    p = 0.6
    assert vs.equivalent_initial_moving_variance(p) == p**2
    assert vs.equivalent_initial_moving_variance(p, 2.0, to="inverted") == 2.0 / p**2
    # the moving variances keep the ratio p^2 for every T when the initial values do
    rng = np.random.default_rng(0)
    b_inv = rng.uniform(0.5, 2.0, size=30)
    m, s_inv, s_std = 0.99, 1.0, vs.equivalent_initial_moving_variance(p)
    for b in b_inv:
        s_inv, s_std = m * s_inv + (1 - m) * b, m * s_std + (1 - m) * p**2 * b
        assert s_std == pytest.approx(p**2 * s_inv, rel=1e-14)
    with pytest.raises(ValueError, match="to must"):
        vs.equivalent_initial_moving_variance(p, to="paper")
    with pytest.raises(ValueError, match="positive"):
        vs.equivalent_initial_moving_variance(p, 0.0)


def test_layernorm_epsilon_map_both_directions_and_rms_scaling():
    """prop-layernorm-map: LN(y / p; eps) = LN(y; p^2 eps), gamma and beta unchanged."""
    rng = np.random.default_rng(11)
    p, eps = 0.6, 1e-3
    y = np.abs(rng.normal(size=(32, 8))) * (rng.random((32, 8)) < p)  # a dropped tensor
    gamma, beta = rng.normal(size=8), rng.normal(size=8)
    for rms in (False, True):
        inv = vs.layernorm(y / p, eps, gamma, beta, rms_scaling=rms)
        std = vs.layernorm(y, vs.equivalent_layernorm_epsilon(p, eps), gamma, beta, rms_scaling=rms)
        np.testing.assert_allclose(std, inv, rtol=0, atol=1e-14)
        back = vs.layernorm(
            y / p, vs.equivalent_layernorm_epsilon(p, eps, to="inverted"), gamma, beta, rms_scaling=rms
        )
        np.testing.assert_allclose(back, vs.layernorm(y, eps, gamma, beta, rms_scaling=rms), atol=1e-14)
        same = vs.layernorm(y, eps, gamma, beta, rms_scaling=rms)
        assert np.abs(same - inv).max() > 1e-4  # epsilon unmapped: a real difference
    # a bias between dropout and LayerNorm breaks it
    b = rng.normal(size=8)
    inv_b = vs.layernorm(y / p + b, eps)
    std_b = vs.layernorm(y + b, vs.equivalent_layernorm_epsilon(p, eps))
    assert np.abs(inv_b - std_b).max() > 1e-2
    assert vs.equivalent_layernorm_epsilon(p, eps) == p**2 * eps
    with pytest.raises(ValueError):
        vs.equivalent_layernorm_epsilon(p, eps, to="keras")
    with pytest.raises(ValueError):
        vs.layernorm(np.zeros((2, 3)), 0.0)
