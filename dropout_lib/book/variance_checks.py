"""The Monte Carlo and Keras checks of a dropped unit's moments (chapters 1 and 10).

Chapter 1 (a single unit, fixed input) tests Monte Carlo means and variances
exactly, for every keep probability and number of draws:

* :func:`mean_pvalues` and :func:`variance_pvalues`: exact two-sided
  P-values of the sample mean and variance of draws of ``c m``,
  ``m ~ Bernoulli(p)``, both functions of a ``Binomial(n, p)`` count;
* :func:`two_point_false_alarm`: the exact probability that such a P-value
  falls below a level when the claim holds.

The moments-and-BatchNorm chapter (10) runs:

The closed forms live in :mod:`dropout_lib.theory.variance_shift`; this module
turns them into the chapter's experiments, so that the chapter's cells are the
configuration and the asserts:

* :func:`moment_z_scores`: Monte Carlo variances of both dropout variants on a
  data set against :func:`~dropout_lib.theory.variance_shift.dropout_moments`;
* :func:`variance_shift_figure`: the two-panel figure of the variance shift,
  with Monte Carlo estimates of each variant on independent masks;
* :func:`keras_dropout_bn`: Keras dropout layers feeding ``BatchNormalization``
  layers (float64) through training calls, with the moving variance's initial
  value chosen per pair (the initialiser map of the BatchNorm theorem);
* :func:`fit_bn_nets` and :func:`weight_gap`: small regression networks with
  dropout before BatchNorm, trained by ``model.fit`` from the same weights.

Notation: ``keep_prob`` is the paper's ``p``; Keras's ``rate`` is ``1 - p``.
Keras is imported only by the functions that need it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dropout_lib.reference import VARIANTS, check_keep_prob, check_variant, dropout, sample_mask
from dropout_lib.theory.stats import sample_variance, z_scores
from dropout_lib.theory.variance_shift import (
    dropout_moments,
    mc_variance_shift_ratio,
    run_training_calls,
    variance_shift_ratio,
    with_epsilon,
)

__all__ = [
    "TWO_POINT_SLACK",
    "two_point_false_alarm",
    "mean_pvalues",
    "variance_pvalues",
    "MomentCheck",
    "moment_z_scores",
    "variance_shift_figure",
    "DropoutBN",
    "keras_dropout_bn",
    "fit_bn_nets",
    "weight_gap",
]


# --------------------------------------------------------------------------- #
# Exact tests of a dropped unit's Monte Carlo moments (chapter 1)
# --------------------------------------------------------------------------- #

TWO_POINT_SLACK = 1e-9
"""Relative widening of an observed statistic in :func:`mean_pvalues` and :func:`variance_pvalues`.

A float64 mean or variance of ``n <= 10**6`` draws is within a relative
``n u`` (about ``1e-10``, ``u = 2**-53``) of its exact value, whatever the
summation order (Higham's bound for recursive summation); widening by
``1e-9`` makes the P-value the one of the least extreme value within rounding,
so rounding can only raise it (fewer alarms), never cause an alarm."""


def _null_values(statistic: str, n: int, p: float) -> NDArray[np.float64]:
    """The statistic's value for each count ``k = 0, ..., n`` of kept draws, when the claim holds."""
    k = np.arange(n + 1, dtype=np.float64)
    if statistic == "mean":  # (c k / n) / (p c)
        return k / (n * p)
    if statistic == "variance":  # (c^2 k (n - k) / (n (n - 1))) / (p (1 - p) c^2)
        return k * (n - k) / (n * (n - 1) * p * (1 - p))
    raise ValueError(f"statistic must be 'mean' or 'variance'; got {statistic!r}")


def _pvalues(
    null: NDArray[np.float64], weights: NDArray[np.float64], observed: ArrayLike, slack: float
) -> NDArray[np.float64]:
    """``min(1, 2 min(P(T <= t), P(T >= t)))`` for ``T`` taking ``null[k]`` with probability ``weights[k]``.

    Each observed ``t`` is widened to ``[t - slack |t|, t + slack |t|]``:
    ``P(T <= t + slack |t|)`` and ``P(T >= t - slack |t|)``. Each tail is
    summed from its own end, so a small P-value keeps its relative accuracy.
    """
    order = np.argsort(null, kind="stable")
    t_sorted, w = null[order], weights[order]
    below = np.concatenate(([0.0], np.cumsum(w)))  # below[i]: the i smallest values
    above = np.concatenate((np.cumsum(w[::-1])[::-1], [0.0]))  # above[i]: index i and up
    t = np.asarray(observed, dtype=np.float64)
    lo = below[np.searchsorted(t_sorted, t + slack * np.abs(t), side="right")]
    hi = above[np.searchsorted(t_sorted, t - slack * np.abs(t), side="left")]
    return np.minimum(1.0, 2.0 * np.minimum(lo, hi))


def _two_point(
    statistic: str, samples: ArrayLike, keep_prob: float, claimed: ArrayLike, slack: float
) -> NDArray[np.float64]:
    import scipy.stats  # here, not at the top: about 1 s of import in every kernel

    p = check_keep_prob(keep_prob)
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"samples must have shape (n, units) with n >= 2 draws; got {arr.shape}")
    n = arr.shape[0]
    if n * np.finfo(np.float64).eps / 2 > slack / 8:
        raise ValueError(
            f"{n} draws: rounding (n u) may exceed slack / 8 = {slack / 8:g}; pass a larger slack"
        )
    claim = np.broadcast_to(np.asarray(claimed, dtype=np.float64), arr.shape[1:])
    est = arr.mean(axis=0) if statistic == "mean" else arr.var(axis=0, ddof=1)
    zero = claim == 0
    pv = np.where(est == 0, 1.0, 0.0)  # a deterministic claim: exactly 0, or wrong
    if np.all(zero):
        return pv
    if statistic == "variance" and p == 1.0:
        raise ValueError("at keep_prob = 1 the output is deterministic: a non-zero variance is wrong")
    weights = scipy.stats.binom.pmf(np.arange(n + 1), n, p)
    ratio = np.divide(est, claim, out=np.zeros_like(est), where=~zero)
    return np.where(zero, pv, _pvalues(_null_values(statistic, n, p), weights, ratio, slack))


def mean_pvalues(
    samples: ArrayLike, keep_prob: float, mean: ArrayLike, *, slack: float = TWO_POINT_SLACK
) -> NDArray[np.float64]:
    """Exact two-sided P-values of the sample means of dropout outputs, one per column.

    ``samples`` has shape ``(n, units)``: ``n`` independent training outputs
    of each unit (column). The claim tested is that each output is ``c m``
    with ``m ~ Bernoulli(p)`` (``p = keep_prob``; Keras's ``rate`` is
    ``1 - p``) and mean ``mean = p c`` (the standard variant has ``c = x``
    and mean ``p x``, the inverted ``c = x / p`` and mean ``x``). Then the
    sample mean is ``c K / n`` with ``K ~ Binomial(n, p)`` the number of kept
    draws, so ``T = ybar / mean = K / (n p)`` has a known distribution for
    every ``p`` and ``n``, however skewed. The P-value of an observed ``t``
    is ``min(1, 2 min(P(T <= t), P(T >= t)))``, with ``t`` widened by
    ``slack`` (:data:`TWO_POINT_SLACK`) for rounding. When the claim holds,
    ``P(P-value < alpha) <= alpha`` for every ``alpha``
    (:func:`two_point_false_alarm` computes it exactly). A claimed mean of 0
    is deterministic (``c = 0``): P-value 1 if the sample mean is exactly 0,
    else 0.

    >>> rng = np.random.default_rng(0)
    >>> y = 3.0 * (rng.random((1000, 1)) < 0.5)  # c = 3, p = 1/2: mean 1.5
    >>> bool(mean_pvalues(y, 0.5, 1.5)[0] > 0.01)
    True
    >>> bool(mean_pvalues(y, 0.5, 0.5**2 * 3.0)[0] < 1e-100)  # mean p^2 c: wrong
    True
    """
    return _two_point("mean", samples, keep_prob, mean, slack)


def variance_pvalues(
    samples: ArrayLike, keep_prob: float, variance: ArrayLike, *, slack: float = TWO_POINT_SLACK
) -> NDArray[np.float64]:
    """Exact two-sided P-values of the unbiased sample variances of dropout outputs, one per column.

    The claim is :func:`mean_pvalues`'s with variance ``variance = p (1 - p)
    c**2`` (standard: ``p (1 - p) x**2``; inverted: ``(1 - p) x**2 / p``).
    With ``K ~ Binomial(n, p)`` kept draws the sample variance is

    .. math::

        s^2 = c^2\\,\\frac{K (n - K)}{n (n - 1)},

    so ``T = s^2 / variance = K (n - K) / (n (n - 1) p (1 - p))`` has a known
    distribution for every ``p`` and ``n``. At ``p = 1/2`` the output has
    kurtosis 1, ``T`` is at most about 1 and piles up just below it, and a
    z-score with the plug-in standard error is far from normal; this test
    needs no approximation. P-values as in :func:`mean_pvalues`. A claimed
    variance of 0 (``x = 0``) is deterministic; at ``p = 1`` every claimed
    variance must be 0 (else ``ValueError``).

    >>> rng = np.random.default_rng(0)
    >>> y = 3.0 * (rng.random((1000, 1)) < 0.5)  # variance p (1 - p) 9 = 2.25
    >>> bool(variance_pvalues(y, 0.5, 2.25)[0] > 0.01)
    True
    >>> bool(variance_pvalues(y, 0.5, 2.25 / 0.5**2)[0] < 1e-100)  # (1 - p) c^2 / p: wrong
    True
    """
    return _two_point("variance", samples, keep_prob, variance, slack)


def two_point_false_alarm(statistic: str, n: int, keep_prob: float, alpha: float) -> float:
    """Exact probability that :func:`mean_pvalues` or :func:`variance_pvalues` falls below ``alpha``.

    When the claim holds: ``statistic`` is ``"mean"`` or ``"variance"``, and
    the probability is ``sum_k P(K = k) [P-value(t_k) < alpha]`` over the
    ``n + 1`` counts ``k`` of kept draws, ``K ~ Binomial(n, p)``, without the
    rounding slack (which only raises P-values). It is at most ``alpha`` and
    depends on ``n``, ``p`` and ``alpha`` only, not on ``c``. A
    deterministic claim (``c = 0``, or the variance at ``p = 1``) never
    alarms.

    >>> rate = two_point_false_alarm("variance", 20_000, 0.5, 1e-6)
    >>> bool(0 < rate <= 1e-6)
    True
    """
    import scipy.stats

    p = check_keep_prob(keep_prob)
    if not (0 < alpha < 1):
        raise ValueError(f"alpha is a probability in (0, 1); got {alpha!r}")
    n = int(n)
    if n < 2:
        raise ValueError(f"n must be at least 2 draws; got {n}")
    null = _null_values(statistic, n, p) if p < 1 or statistic == "mean" else None
    if null is None:
        return 0.0  # every draw is c: s^2 = 0 exactly, P-value 1
    weights = scipy.stats.binom.pmf(np.arange(n + 1), n, p)
    return float(weights[_pvalues(null, weights, null, 0.0) < alpha].sum())


# --------------------------------------------------------------------------- #
# Monte Carlo: the moments of a dropped unit
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, eq=False)
class MomentCheck:
    """Monte Carlo training variances against the theorem, and the test variances.

    Attributes
    ----------
    z
        ``(estimate - theorem) / standard error`` of every training variance
        (per keep probability, variant and unit).
    relative_se
        Each estimate's standard error over its value.
    test_gap
        ``max |Var_data(d_test(x)) / theorem - 1|``: the test-time map applied to
        the whole data set against the closed form (nothing random).
    rows
        The rows drawn (with replacement) from the data set.
    """

    z: NDArray[np.float64]
    relative_se: NDArray[np.float64]
    test_gap: float
    rows: NDArray[np.float64]


def moment_z_scores(
    x: ArrayLike, keep_probs: Sequence[float], n_draws: int, rng: np.random.Generator
) -> MomentCheck:
    """Check :func:`~dropout_lib.theory.variance_shift.dropout_moments` on a data set by Monte Carlo.

    The data set ``x`` (shape ``(N, units)``) is the population: its mean and
    (divide-by-``N``) variance are ``mu`` and ``s2``. ``n_draws`` rows are drawn
    with replacement; for each keep probability one mask is drawn and applied
    by both variants (:func:`dropout_lib.reference.dropout`, the implementation
    under test), and each unit's sample variance is compared with the closed
    form in units of its standard error (fourth-moment estimate,
    :func:`dropout_lib.theory.stats.sample_variance`).
    """
    arr = np.asarray(x, dtype=np.float64)
    mu, s2 = arr.mean(axis=0), arr.var(axis=0)
    rows = arr[rng.integers(arr.shape[0], size=int(n_draws))]
    z: list[float] = []
    rel: list[float] = []
    test_gap = 0.0
    for p in keep_probs:
        mask = sample_mask(rows.shape, p, rng)  # same masks, both variants
        for variant in VARIANTS:
            est = sample_variance(dropout(variant, rows, p, training=True, mask=mask))
            _, v_train = dropout_moments(variant, p, mu, s2, training=True)
            z.extend(est.z_scores(v_train))
            rel.extend(est.standard_error / est.value)
            _, v_test = dropout_moments(variant, p, mu, s2, training=False)
            v_data = dropout(variant, arr, p, training=False).var(axis=0)
            test_gap = max(test_gap, float(np.abs(v_data / v_test - 1).max()))
    return MomentCheck(np.asarray(z), np.asarray(rel), test_gap, rows)


def variance_shift_figure(
    kappas: Sequence[float],
    keep_probs_mc: ArrayLike,
    n_mc: int,
    rng: np.random.Generator,
) -> tuple[Any, NDArray[np.float64]]:
    """Draw the chapter's variance-shift figure; return it and the Monte Carlo z-scores.

    Left panel: training and test variance of one unit (mean and standard
    deviation 1) for both variants. Right panel: the shift
    :func:`~dropout_lib.theory.variance_shift.variance_shift_ratio` for each
    ``kappa = mu^2 / s^2``, with Monte Carlo estimates of each variant
    (:func:`~dropout_lib.theory.variance_shift.mc_variance_shift_ratio`, normal
    units with mean ``sqrt(kappa)``, ``n_mc`` draws, independent masks) at the
    keep probabilities ``keep_probs_mc``. The z-scores compare each estimate
    with the formula; the caller asserts on them.
    """
    from dropout_lib.book.plotting import COLORS, figure

    ps = np.linspace(0.02, 1.0, 200)
    p_mc = np.asarray(keep_probs_mc, dtype=np.float64)
    fig, (ax_v, ax_r) = figure(ncols=2, width=8.0, height=3.3)
    for variant, line in (("standard", "-"), ("inverted", "--")):
        for training, when in ((True, "training"), (False, "test")):
            _, v = dropout_moments(variant, ps, 1.0, 1.0, training=training)
            ax_v.plot(ps, v, line if training else ":", color=COLORS[variant], label=f"{variant}, {when}")
    ax_v.set(
        xlabel="keep probability $p$",
        ylabel="variance of $d(x)$",
        yscale="log",
        title=r"one unit, $\mu = s = 1$",
    )
    ax_v.legend(fontsize=8)
    z: list[float] = []
    for kappa, line in zip(kappas, ("-", "--", ":", "-.")):
        mean = float(np.sqrt(kappa))
        ax_r.plot(
            ps,
            variance_shift_ratio(ps, mean, 1.0),
            line,
            lw=1,
            color=COLORS["theory"],
            label=rf"theorem, $\kappa={kappa:g}$",
        )
        for variant, marker in (("standard", "o"), ("inverted", "x")):
            r_hat, se = np.array(
                [mc_variance_shift_ratio(variant, p, rng.normal(mean, 1.0, int(n_mc)), rng) for p in p_mc]
            ).T
            z.extend(z_scores(r_hat, se, variance_shift_ratio(p_mc, mean, 1.0)))
            ax_r.plot(
                p_mc,
                r_hat,
                marker,
                color=COLORS[variant],
                ms=5,
                mfc="none",
                label=f"{variant}, Monte Carlo" if kappa == kappas[0] else None,
            )
    ax_r.set(
        xlabel="keep probability $p$",
        title="variance shift",
        ylabel=r"$\mathrm{Var}_\mathrm{test}/\mathrm{Var}_\mathrm{train}$",
    )
    ax_r.legend(fontsize=8, loc="upper left")
    return fig, np.asarray(z)


# --------------------------------------------------------------------------- #
# Keras: dropout -> BatchNormalization, layer by layer
# --------------------------------------------------------------------------- #


class _TracedCall:
    """``layer(x, training=training)`` run as a ``tf.function``, traced once per value of ``training``.

    A Keras layer called eagerly dispatches its operations one at a time from
    Python; traced, a call is one graph execution of the same operations (the
    dropout masks still come from the layer's seed generator, the BatchNorm
    statistics are still updated in its variables). Other Keras backends call
    the layer as it is.
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self._traced: dict[bool, Any] = {}

    def __call__(self, x: Any, training: bool) -> Any:
        import keras

        if keras.backend.backend() != "tensorflow":
            return self.layer(x, training=training)
        if training not in self._traced:
            import tensorflow as tf

            # a partial, not a lambda: TensorFlow counts the traces of every lambda on one line together
            # and would warn (on stdout, into the stored chapter) of "retracing" after five layers
            self._traced[training] = tf.function(functools.partial(self.layer, training=training))
        return self._traced[training](x)


@dataclass(eq=False)
class DropoutBN:
    """Pairs of Keras dropout and BatchNorm layers after their training calls.

    ``bn[name]`` is the trained BatchNorm of pair ``name``, ``variant[name]``
    its dropout variant, ``last_batch[name]`` the dropout output of the last
    training call and ``test_input[name]`` the dropout layer's test-time output
    on the whole data set (``x`` for inverted, ``p x`` for standard).
    """

    keep_prob: float
    x: NDArray[np.float64]
    batch_size: int
    variant: dict[str, str] = field(default_factory=dict)
    drop: dict[str, Any] = field(default_factory=dict)
    bn: dict[str, Any] = field(default_factory=dict)
    last_batch: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    test_input: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    _calls: dict[int, Any] = field(default_factory=dict, repr=False)

    def _call(self, layer: Any) -> Any:
        """``layer``, called through :class:`_TracedCall` (one per layer, kept for later calls)."""
        return self._calls.setdefault(id(layer), _TracedCall(layer))

    def train_calls(self, steps: int, seed: int, *, dropout_training: bool = True) -> None:
        """More training calls of every pair.

        ``dropout_training=False``: dropout off, BatchNorm still updating.
        The layers run as traced functions (:class:`_TracedCall`): the same
        Keras ops, one call per layer and step instead of one per operation.
        """
        names = list(self.bn)
        last = run_training_calls(
            [self._call(self.drop[n]) for n in names],
            [self._call(self.bn[n]) for n in names],
            self.x,
            batch_size=self.batch_size,
            steps=steps,
            seed=seed,
            dropout_training=dropout_training,
        )
        self.last_batch.update(zip(names, last))

    def outputs(self, name: str, epsilon: float, training: bool) -> NDArray[np.float64]:
        """Pair ``name``'s BatchNorm, copied with ``epsilon``.

        On its last batch (training) or the test data.
        """
        layer = with_epsilon(self.bn[name], epsilon)
        y = self.last_batch[name] if training else self.test_input[name]
        return np.asarray(layer(y, training=training), dtype=np.float64)


def keras_dropout_bn(
    pairs: Mapping[str, tuple[str, float]],
    keep_prob: float,
    x: ArrayLike,
    *,
    momentum: float,
    steps: int,
    batch_size: int,
    seed: int,
    dropout_seed: int = 7,
) -> DropoutBN:
    """Run Keras dropout -> ``BatchNormalization`` pairs through ``steps`` training calls, in float64.

    ``pairs`` maps a name to ``(variant, initial_moving_variance)``: variant
    ``"inverted"`` is ``keras.layers.Dropout(rate)``, ``"standard"`` the paper's
    :class:`dropout_lib.layers.StandardDropout(rate)`, with ``rate = 1 -
    keep_prob`` and the same seed, hence the same masks; the BatchNorm
    (``epsilon = 0``; other epsilons by :meth:`DropoutBN.outputs`) starts its
    moving variance at ``initial_moving_variance`` (Keras's default is 1).
    Every pair sees the same batches
    (:func:`~dropout_lib.theory.variance_shift.run_training_calls`).
    """
    import keras

    from dropout_lib.layers import StandardDropout

    p = check_keep_prob(keep_prob)
    rate = 1.0 - p
    n_units = int(np.shape(x)[1])
    arr = np.asarray(x, dtype=np.float64)
    out = DropoutBN(keep_prob=p, x=arr, batch_size=int(batch_size))
    drops, norms = [], []
    for name, (variant, initial) in pairs.items():
        v = check_variant(variant)
        cls = keras.layers.Dropout if v == "inverted" else StandardDropout
        drops.append(cls(rate, seed=dropout_seed, dtype="float64"))
        norm = keras.layers.BatchNormalization(momentum=momentum, epsilon=0.0, dtype="float64")
        norm.build((None, n_units))
        # assigned, not passed as keras.initializers.Constant, whose value passes through float32
        norm.moving_variance.assign(np.full(n_units, float(initial)))
        norms.append(norm)
        out.variant[name], out.drop[name], out.bn[name] = v, drops[-1], norm
    out.train_calls(steps, seed)
    for name, drop in out.drop.items():
        out.test_input[name] = np.asarray(drop(arr, training=False), dtype=np.float64)
    return out


# --------------------------------------------------------------------------- #
# Keras: model.fit with dropout before BatchNorm
# --------------------------------------------------------------------------- #


def _regression_net(variant: str, rate: float, epsilon: float, momentum: float, n_in: int) -> Any:
    import keras

    from dropout_lib.layers import StandardDropout

    f64 = "float64"
    cls = keras.layers.Dropout if variant == "inverted" else StandardDropout
    return keras.Sequential(
        [
            keras.Input((n_in,), dtype=f64),
            keras.layers.Dense(16, activation="relu", dtype=f64),
            cls(rate, seed=5, dtype=f64),  # same seed: same masks in every net
            keras.layers.Dense(8, use_bias=False, dtype=f64),
            keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon, dtype=f64),
            keras.layers.ReLU(dtype=f64),
            keras.layers.Dense(1, dtype=f64),
        ]
    )


def fit_bn_nets(
    configs: Mapping[str, tuple[str, float, float]],
    keep_prob: float,
    x: ArrayLike,
    y: ArrayLike,
    *,
    momentum: float,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Train copies of a small regression net with dropout before BatchNorm by ``model.fit``.

    The net is ``Dense(16, relu) -> dropout -> Dense(8, use_bias=False) ->
    BatchNormalization -> ReLU -> Dense(1)`` in float64. ``configs`` maps a name
    to ``(variant, epsilon, initial_moving_variance)`` of its dropout and
    BatchNorm. All nets start from the first net's weights, see the same
    batches (``shuffle=False``) and the same masks (same dropout seed), and are
    trained with Adam at ``learning_rate`` for ``epochs``. Returns the trained
    models by name. When ``batch_size`` divides the number of rows, the epochs
    run as one ``fit`` epoch over ``epochs`` copies of the data: the same
    batches in the same order, without Keras's per-epoch overhead.
    """
    import keras

    from dropout_lib.book.keras_trajectories import build_optimizer

    p = check_keep_prob(keep_prob)
    keras.utils.set_random_seed(seed)
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xs) % int(batch_size) == 0:  # no partial batch: epochs passes are one pass over copies
        xs, ys, epochs = (
            np.tile(xs, (epochs,) + (1,) * (xs.ndim - 1)),
            np.tile(ys, (epochs,) + (1,) * (ys.ndim - 1)),
            1,
        )
    nets = {
        name: _regression_net(check_variant(v), 1.0 - p, eps, momentum, xs.shape[1])
        for name, (v, eps, _) in configs.items()
    }
    start = next(iter(nets.values())).get_weights()
    for name, net in nets.items():
        # the moving variance is a (non-trainable) weight: set each net's initial value, in
        # float64 (keras.initializers.Constant would pass it through float32)
        initial = float(configs[name][2])
        net.set_weights(
            [np.full_like(w, initial) if _is_moving_variance(v) else w for w, v in zip(start, net.weights)]
        )
        net.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", jit_compile=False)
        build_optimizer(net)  # before fit: the train step is then traced once, not twice
        net.fit(
            xs,
            ys,
            batch_size=batch_size,
            epochs=epochs,
            shuffle=False,
            verbose=0,
        )
    return nets


def _is_moving_variance(variable: Any) -> bool:
    return "moving_variance" in str(getattr(variable, "path", getattr(variable, "name", "")))


def weight_gap(net: Any, reference: Any) -> float:
    """Largest difference of the trainable weights, relative to the largest reference weight."""
    a = np.concatenate([np.asarray(w).ravel() for w in net.trainable_weights])
    b = np.concatenate([np.asarray(w).ravel() for w in reference.trainable_weights])
    return float(np.abs(a - b).max() / np.abs(b).max())
