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
