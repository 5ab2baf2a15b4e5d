"""Tests of dropout_lib.book.experiment: the four-way run on the digits, and its statistics.

``keep_prob`` is ``p``; the Config's ``rates`` are Keras's drop probabilities ``1 - p``.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dropout_lib.book import experiment as E  # noqa: E402
from dropout_lib.book.datasets import digits_split  # noqa: E402
from dropout_lib.layers import StandardDropout  # noqa: E402

# Small enough to run in seconds; rates with p = 0.8 and 0.6 (no power of two,
# so no division by p is exact and agreement is not a rounding accident).
SMALL = E.Config(
    n_train=60, widths=(16, 16), rates=(0.2, 0.4, 0.4), learning_rate=2**-7, epochs=12, eval_every=4
)
MAP_TOL = 1e-12  # rounding: a few u per step over 12 steps is ~1e-14
WRONG = 1e-3  # a different model: off by O(1 - p)


SEEDS = (3, 5)
# The pilot's learning rates: SMALL's and another one. Its run at SMALL's rate must
# give the inverted net's final held-out losses of run_experiment(SMALL, SEEDS).
PILOT_RATES = (2.0**-9, SMALL.learning_rate)


@pytest.fixture(scope="module")
def trained() -> tuple[E.Experiment, E.FourWays]:
    """``run_experiment(SMALL, seeds=[3, 5])`` and the FourWays it trained (for the reuse test).

    Recording the FourWays that run_experiment builds lets the reuse test rerun a
    seed on it instead of building a second one (building and tracing four nets
    costs ~3 s of CPU).
    """
    trainers: list[E.FourWays] = []

    class RecordedFourWays(E.FourWays):
        def __init__(self, config: E.Config) -> None:
            super().__init__(config)
            trainers.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(E, "FourWays", RecordedFourWays)
        run = E.run_experiment(SMALL, SEEDS)
    assert run.config == SMALL and run.seeds == SEEDS and len(trainers) == 1
    return run, trainers[0]


@pytest.fixture(scope="module")
def experiment(trained) -> E.Experiment:
    return trained[0]


# ----------------------------------------------------------------- the run


def test_mapped_is_the_inverted_net_and_same_is_not(experiment):
    for r in experiment.results:
        assert r.weight_gap["mapped"] < MAP_TOL, r.weight_gap
        assert r.logit_gap["mapped"] < MAP_TOL, r.logit_gap
        assert r.same_class["mapped"] == 1.0
        assert r.weight_gap["same"] > WRONG and r.logit_gap["same"] > WRONG
        inv, mapped = r.runs["inverted"], r.runs["mapped"]
        np.testing.assert_allclose(mapped.test_loss, inv.test_loss, rtol=MAP_TOL, atol=0)
        np.testing.assert_allclose(mapped.train_loss, inv.train_loss, rtol=MAP_TOL, atol=0)


def test_curves_shapes_and_start(experiment):
    np.testing.assert_array_equal(experiment.steps, [0, 4, 8, 12])
    assert experiment.curve("test_loss").shape == (2, 4, 4)
    assert experiment.final("test_accuracy").shape == (2, 4)
    for r in experiment.results:
        start = {w: r.runs[w].test_loss[0] for w in E.WAYS}
        # at step 0 inverted, mapped and none are the same function (inference
        # with inverted dropout is the identity); the drop-in swap is not
        assert abs(start["none"] - start["inverted"]) <= 1e-14 * start["inverted"]
        assert abs(start["mapped"] - start["inverted"]) <= MAP_TOL * start["inverted"]
        assert abs(start["same"] - start["inverted"]) > WRONG
        # every net trained: the training loss fell
        for w in E.WAYS:
            assert r.runs[w].train_loss[-1] < r.runs[w].train_loss[0], w


def test_reused_nets_train_exactly_like_fresh_ones(experiment, trained):
    """FourWays.reset gives the state of freshly built nets: seed 3, first trained on freshly
    built nets, trained again on the same nets after seeds 3 and 5."""
    trainer = trained[1]
    assert trainer.config == SMALL
    fresh = experiment.results[0]
    assert (fresh.seed, experiment.results[1].seed) == SEEDS  # run_experiment trains in this order
    reused = trainer.run(3)
    assert reused.seed == 3
    for w in E.WAYS:
        for a, b in zip(fresh.runs[w].weights, reused.runs[w].weights):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(fresh.runs[w].test_loss, reused.runs[w].test_loss)
        np.testing.assert_array_equal(fresh.runs[w].train_loss, reused.runs[w].train_loss)


def test_consumers_and_keep_probs(experiment):
    assert experiment.consumers == (("dense0", 0.8), ("dense1", 0.6), ("dense2", 0.6))
    assert SMALL.keep_probs == (0.8, 0.6, 0.6)
    assert SMALL.sizes == (64, 16, 16, 10)


def test_experiment_accessors_validate(experiment):
    with pytest.raises(ValueError, match="what"):
        experiment.curve("loss")
    with pytest.raises(ValueError, match="kind"):
        experiment.gap("gap", "mapped")
    with pytest.raises(ValueError, match="way"):
        experiment.gap("weight_gap", "none")
    assert experiment.gap("weight_gap", "mapped").shape == (2,)
    assert experiment.seeds == (3, 5)


# ----------------------------------------------------------- the pieces


def test_digits_mlp_and_without_dropout():
    with E.keras_float64():
        model = E.digits_mlp(SMALL, 7)
        plain = E.without_dropout(model)
    drops = [la for la in model.layers if isinstance(la, keras.layers.Dropout)]
    assert [d.rate for d in drops] == list(SMALL.rates)
    assert not any(isinstance(la, (keras.layers.Dropout, StandardDropout)) for la in plain.layers)
    x = digits_split(60, 0).x_test[:32]
    # inverted dropout at inference is the identity: the same function
    np.testing.assert_array_equal(plain(x, training=True), model(x, training=False))
    assert model.weights[0].dtype == "float64"


def test_keras_float64_restores_the_policy():
    before = keras.config.floatx(), keras.config.dtype_policy().name
    with E.keras_float64():
        assert keras.config.floatx() == "float64"
    assert (keras.config.floatx(), keras.config.dtype_policy().name) == before


def test_cross_entropy_matches_keras_and_is_stable():
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(50, 10)) * 5, rng.integers(0, 10, size=50)
    expected = float(
        np.mean(
            keras.ops.convert_to_numpy(
                keras.losses.sparse_categorical_crossentropy(y, z.astype("float64"), from_logits=True)
            )
        )
    )
    assert math.isclose(E.cross_entropy(z, y), expected, rel_tol=1e-13)
    huge = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    assert E.cross_entropy(huge, np.array([0, 1])) == 0.0
    assert math.isclose(E.cross_entropy(huge, np.array([1, 1])), 500.0)
    with pytest.raises(ValueError, match="logits"):
        E.cross_entropy(z, y[:3])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rates=(0.2, 0.5)), "rates needs 3"),
        (dict(rates=(0.2, 1.0, 0.5)), "DROP probability"),
        (dict(rates=(0.0, 0.5, 0.5)), "DROP probability"),
        (dict(epochs=10, eval_every=3), "multiple"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(widths=(16, 0)), "width"),
        (dict(n_train=True), "n_train"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        E.Config(**kwargs)


def test_bad_seeds_raise():
    with pytest.raises(ValueError, match="distinct"):
        E.run_experiment(SMALL, seeds=[1, 1])
    with pytest.raises(ValueError, match="seed"):
        E.run_experiment(SMALL, seeds=[-1])


# ------------------------------------------------------------ statistics


def test_sign_test_known_values():
    assert E.sign_test_p(6, 6) == 1 / 64
    assert E.sign_test_p(5, 6) == 7 / 64
    assert E.sign_test_p(0, 6) == 1.0
    assert E.sign_test_p(0, 0) == 1.0
    with pytest.raises(ValueError, match="exceed"):
        E.sign_test_p(7, 6)
    with pytest.raises(ValueError, match="n_positive"):
        E.sign_test_p(-1, 6)


@given(n=st.integers(1, 60), k=st.integers(0, 60))
def test_sign_test_is_a_binomial_tail(n, k):
    k = min(k, n)
    p = E.sign_test_p(k, n)
    assert 0 < p <= 1
    if k > 0:  # P(X >= k) + P(X <= k - 1) = 1, and by symmetry P(X <= k-1) = P(X >= n-k+1)
        assert math.isclose(p + E.sign_test_p(n - k + 1, n), 1.0, rel_tol=1e-12)
        assert E.sign_test_p(k - 1, n) > p


def test_paired_comparison():
    base = np.array([0.20, 0.25, 0.18, 0.22])
    treat = np.array([0.15, 0.20, 0.19, 0.12])
    c = E.paired_comparison(base, treat)
    d = base - treat
    np.testing.assert_array_equal(c.differences, d)
    assert math.isclose(c.mean, d.mean())
    assert math.isclose(c.standard_error, d.std(ddof=1) / 2)
    assert math.isclose(c.t, c.mean / c.standard_error)
    assert (c.n_positive, c.n_nonzero) == (3, 4)
    assert c.sign_p == E.sign_test_p(3, 4)
    tie = E.paired_comparison(base, base)
    assert (tie.mean, tie.t, tie.n_nonzero, tie.sign_p) == (0.0, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match="equal length"):
        E.paired_comparison(base, treat[:3])
    with pytest.raises(ValueError, match="finite"):
        E.paired_comparison(base, np.array([np.nan, 0, 0, 0]))


def test_paired_tests_match_scipy():
    import scipy.stats

    base = np.array([0.20, 0.25, 0.18, 0.22, 0.30])
    treat = np.array([0.15, 0.20, 0.19, 0.12, 0.10])
    one = E.paired_comparison(base, treat)
    two = E.paired_comparison(base, treat, "two-sided")
    d = base - treat
    # the paired t-test is the one-sample t-test of the differences; its interval mean -/+ t* se
    assert math.isclose(one.t_p, scipy.stats.ttest_1samp(d, 0, alternative="greater").pvalue)
    assert math.isclose(two.t_p, 2 * one.t_p)
    half = scipy.stats.t.ppf(0.975, len(d) - 1) * one.standard_error
    np.testing.assert_allclose(one.ci95, (one.mean - half, one.mean + half), rtol=1e-12)
    # 4 of 5 positive: one-sided P(X >= 4) = 6/32; two-sided doubles it
    assert one.sign_p == 6 / 32 and math.isclose(two.sign_p, 12 / 32)
    with pytest.raises(ValueError, match="alternative"):
        E.paired_comparison(base, treat, "less")


def test_sign_test_threshold():
    assert E.sign_test_threshold(12, 0.025) == 10  # P(X >= 10) = 79/4096 < 0.025 < 299/4096
    assert E.sign_test_p(10, 12) <= 0.025 < E.sign_test_p(9, 12)
    assert E.sign_test_threshold(5, 0.025) == 6  # 2**-5 > 0.025: no outcome rejects
    with pytest.raises(ValueError, match="level"):
        E.sign_test_threshold(5, 1.5)


def test_chapter_summaries(experiment):
    gaps = E.same_model_gaps(experiment)
    assert set(gaps) == {"weight", "logit", "curve"} and max(gaps.values()) < MAP_TOL
    assert 0 < E.top2_margin(experiment) <= 1
    numbers = E.setting_numbers(SMALL, [3, 5])
    assert numbers["n_params"] == 64 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
    assert (numbers["p_in"], numbers["rate_in"], numbers["n_seeds"]) == (0.8, 0.2, 2)


def test_pilot_trains_keras_net_as_the_experiment_does_and_chooses(experiment):
    """A tiny pilot: two learning rates, two seeds; at SMALL's rate its losses are the
    experiment's inverted net's, bit for bit; the rule picks the lower mean held-out loss."""
    p = E.pilot(SMALL, PILOT_RATES, seeds=SEEDS)
    assert p.final_loss.shape == (2, 2) and p.seeds == SEEDS
    assert p.learning_rates == PILOT_RATES
    k = PILOT_RATES.index(SMALL.learning_rate)
    inverted = experiment.final("test_loss")[:, E.WAYS.index("inverted")]
    np.testing.assert_array_equal(p.final_loss[k], inverted)
    assert np.all(p.final_loss[0] != p.final_loss[1])  # the learning rate is used
    np.testing.assert_array_equal(p.mean_final(), p.final_loss.mean(axis=1))
    assert p.chosen == PILOT_RATES[int(np.argmin(p.mean_final()))]
    with pytest.raises(ValueError, match="learning_rates"):
        E.pilot(SMALL, [])
    with pytest.raises(ValueError, match="learning rate"):
        E.pilot(SMALL, [0.0])
    with pytest.raises(ValueError, match="seeds"):
        E.pilot(SMALL, [0.01], seeds=[1, 1])
