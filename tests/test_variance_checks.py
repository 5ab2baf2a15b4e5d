"""Tests of dropout_lib.book.variance_checks: the moments chapter's experiments.

Notation: keep_prob = p (the paper's); Keras's rate = 1 - p.
"""

from __future__ import annotations

import numpy as np
import pytest

from dropout_lib.book import variance_checks as checks
from dropout_lib.theory import variance_shift as vs


def data(n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(rng.normal(size=(n, 3)) + [0.0, 1.0, 2.0], 0)


def test_moment_z_scores_are_calibrated_and_test_variances_exact() -> None:
    mc = checks.moment_z_scores(data(), (0.3, 0.8), 20_000, np.random.default_rng(1))
    assert mc.z.shape == (2 * 2 * 3,) and mc.relative_se.shape == mc.z.shape
    assert np.abs(mc.z).max() < 5
    assert mc.test_gap < 1e-12
    assert mc.rows.shape == (20_000, 3)


def test_moment_z_scores_detect_a_wrong_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong(variant, p, mean, var, *, training):  # forgets the mask's p(1-p) mu^2 term
        m, v = vs.dropout_moments(variant, p, mean, var, training=training)
        if training:
            v = v - (p * (1 - p) * np.asarray(mean) ** 2) / (1.0 if variant == "standard" else p**2)
        return m, v

    monkeypatch.setattr(checks, "dropout_moments", wrong)
    mc = checks.moment_z_scores(data(), (0.5,), 20_000, np.random.default_rng(1))
    assert np.abs(mc.z).max() > 5


def test_variance_shift_figure_returns_one_z_per_estimate() -> None:
    import matplotlib.pyplot as plt

    fig, z = checks.variance_shift_figure((0.0, 1.0), [0.3, 0.7], 2000, np.random.default_rng(2))
    assert z.shape == (2 * 2 * 2,) and np.abs(z).max() < 5
    plt.close(fig)


def test_keras_initial_value_map_removes_the_transient() -> None:
    x, p = data(500), 0.5
    pairs = {"inv": ("inverted", 1.0), "std": ("standard", 1.0), "std_p2": ("standard", p**2)}
    run = checks.keras_dropout_bn(pairs, p, x, momentum=0.99, steps=5, batch_size=64, seed=0)
    eps = 1e-3
    for training in (True, False):
        mapped = np.abs(run.outputs("std_p2", p**2 * eps, training) - run.outputs("inv", eps, training)).max()
        assert mapped < 1e-12
    transient = np.abs(run.outputs("std", p**2 * eps, False) - run.outputs("inv", eps, False)).max()
    assert transient > 1e-3
    np.testing.assert_array_equal(run.test_input["std"], p * x)  # the paper's test-time map
    before = np.asarray(run.bn["inv"].moving_variance).copy()
    run.train_calls(2, seed=1, dropout_training=False)
    assert not np.array_equal(before, np.asarray(run.bn["inv"].moving_variance))


def test_fit_bn_nets_mapped_net_equals_inverted_and_weight_gap() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(64, 5)), rng.normal(size=(64, 1))
    p, eps = 0.5, 1e-3
    configs = {
        "inv": ("inverted", eps, 1.0),
        "mapped": ("standard", p**2 * eps, p**2),
        "same": ("standard", eps, 1.0),
    }
    nets = checks.fit_bn_nets(configs, p, x, y, momentum=0.99, epochs=1, batch_size=16, learning_rate=1e-2)
    assert checks.weight_gap(nets["inv"], nets["inv"]) == 0.0
    assert checks.weight_gap(nets["mapped"], nets["inv"]) < 1e-12
    assert checks.weight_gap(nets["same"], nets["inv"]) > 1e-9
    np.testing.assert_allclose(np.asarray(nets["mapped"](x)), np.asarray(nets["inv"](x)), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- #
# chapter 1: exact tests of a dropped unit's Monte Carlo moments
# --------------------------------------------------------------------------- #


def _draws(c: np.ndarray, p: float, n: int, seed: int) -> np.ndarray:
    return c * (np.random.default_rng(seed).random((n, np.size(c))) < p)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.8, 0.97])
def test_mean_and_variance_pvalues_are_the_binomial_tails_of_the_kept_count(p: float) -> None:
    import scipy.stats

    n, c = 500, np.array([-1.5, 0.25, 3.0])
    y = _draws(c, p, n, seed=3)
    k = (y != 0).sum(axis=0)
    below, above = scipy.stats.binom.cdf(k, n, p), scipy.stats.binom.sf(k - 1, n, p)
    expected = np.minimum(1, 2 * np.minimum(below, above))  # T = K / (n p) is increasing in K
    np.testing.assert_allclose(checks.mean_pvalues(y, p, p * c), expected, rtol=1e-12)
    # s^2 depends on K through K (n - K): brute force over every count
    counts = np.arange(n + 1)
    pmf, r = scipy.stats.binom.pmf(counts, n, p), counts * (n - counts)
    expected = [min(1, 2 * min(pmf[r <= kk * (n - kk)].sum(), pmf[r >= kk * (n - kk)].sum())) for kk in k]
    np.testing.assert_allclose(checks.variance_pvalues(y, p, p * (1 - p) * c**2), expected, rtol=1e-12)


@pytest.mark.parametrize("statistic", ["mean", "variance"])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_false_alarm_is_the_exact_rejection_probability(statistic: str, p: float) -> None:
    import scipy.stats

    n, alpha = 300, 0.01
    counts = np.arange(n + 1)
    c = 2.0
    # one column per count: the draws c m with exactly k kept, in every column's own order
    y = np.where(np.arange(n)[:, None] < counts[None, :], c, 0.0)
    pv = (
        checks.mean_pvalues(y, p, p * c, slack=1e-9)
        if statistic == "mean"
        else checks.variance_pvalues(y, p, p * (1 - p) * c**2, slack=1e-9)
    )
    exact = scipy.stats.binom.pmf(counts, n, p)[pv < alpha].sum()
    rate = checks.two_point_false_alarm(statistic, n, p, alpha)
    assert rate == pytest.approx(exact, rel=1e-12) and 0 < rate <= alpha


def test_two_point_tests_are_calibrated_at_one_half_where_z_scores_fail() -> None:
    # p = 1/2: kurtosis 1; the plug-in z of the sample variance is far from normal there
    n, p, reps = 2000, 0.5, 400
    c = np.ones(reps)
    y = _draws(c, p, n, seed=11)
    pv = checks.variance_pvalues(y, p, p * (1 - p))
    rate = checks.two_point_false_alarm("variance", n, p, 0.05)
    hits = int((pv < 0.05).sum())
    sd = np.sqrt(reps * rate * (1 - rate))
    assert abs(hits - reps * rate) < 4 * sd, (hits, reps * rate)


def test_two_point_tests_reject_wrong_claims_and_handle_deterministic_ones() -> None:
    p, n = 0.8, 4000
    x = np.array([-1.5, 0.0, 2.0])
    y = _draws(x / p, p, n, seed=5)  # inverted dropout of x
    ok_mean = checks.mean_pvalues(y, p, x)
    assert ok_mean.min() > 1e-6 and ok_mean[1] == 1.0  # x = 0: all draws 0 exactly
    assert checks.mean_pvalues(y, p, p**2 * x)[[0, 2]].max() == 0.0  # beyond the support
    ok_var = checks.variance_pvalues(y, p, (1 - p) * x**2 / p)
    assert ok_var.min() > 1e-6 and ok_var[1] == 1.0
    assert checks.variance_pvalues(y, p, p * (1 - p) * x**2)[[0, 2]].max() < 1e-100  # swapped
    assert checks.mean_pvalues(y + 1e-3, p, x)[1] == 0.0  # claimed 0, drew something else
    full = np.tile(x, (10, 1))  # p = 1: every unit kept
    assert np.all(checks.mean_pvalues(full, 1.0, x) == 1.0)
    assert np.all(checks.variance_pvalues(full, 1.0, 0.0) == 1.0)
    assert checks.two_point_false_alarm("variance", 10, 1.0, 0.01) == 0.0
    with pytest.raises(ValueError, match="deterministic"):
        checks.variance_pvalues(full, 1.0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        checks.mean_pvalues(np.ones(5), 0.5, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        checks.two_point_false_alarm("mean", 10, 0.5, 0.0)
    with pytest.raises(ValueError, match="statistic"):
        checks.two_point_false_alarm("median", 10, 0.5, 0.1)
