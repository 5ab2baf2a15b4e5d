"""dropout_lib.book.experiment.statistic_sensitivity against what it must give."""

import numpy as np
import pytest

from dropout_lib.book import experiment as E


def test_mean_is_linear_and_t_p_moves_when_differences_move():
    rng = np.random.default_rng(0)
    b = rng.normal(0.2, 0.02, 12)
    a = b + rng.normal(0.09, 0.035, 12)
    eps = 1e-7
    sens = E.statistic_sensitivity(a, b, eps)
    # the mean moves by eps / n per difference, n of them: eps in all (linear, so exact)
    assert sens["mean"] == pytest.approx(eps / abs(np.mean(a - b)), rel=1e-6)
    # a real worst case: moving every difference by eps one way moves t_p by no more
    c0, c1 = E.paired_comparison(a, b), E.paired_comparison(a + eps, b)
    assert abs(c1.t_p - c0.t_p) / c0.t_p <= sens["t_p"] * (1 + 1e-3)
    assert all(np.isfinite(v) and v > 0 for v in sens.values())
