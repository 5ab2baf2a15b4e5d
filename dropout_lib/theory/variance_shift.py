"""The train/test variance shift of a unit after dropout, and what BatchNorm does with it.

Notation: ``keep_prob`` is the paper's ``p`` (Keras's ``rate`` is ``1 - p``).
A unit ``x`` varies over the data with mean ``mu`` and variance ``s2``; the
mask ``m ~ Bernoulli(p)`` is drawn independently of ``x``. Then, exactly,

=========  ===========  ============  ===========================  ==============
variant    training     test          training variance            test variance
=========  ===========  ============  ===========================  ==============
standard   ``m x``      ``p x``       ``p s2 + p (1-p) mu^2``      ``p^2 s2``
inverted   ``m x / p``  ``x``         ``(s2 + (1-p) mu^2) / p``    ``s2``
=========  ===========  ============  ===========================  ==============

and the means agree between training and test (``p mu``, resp. ``mu``). The
inverted variant's output is the standard one's divided by ``p`` (same mask),
so every variance is divided by ``p^2`` and the *variance shift*

.. math:: r = \\frac{\\mathrm{Var}_\\text{test}}{\\mathrm{Var}_\\text{train}}
          = \\frac{p\\,s^2}{s^2 + (1-p)\\,\\mu^2}

is the same for both variants (Li et al., CVPR 2019, named it). A
``BatchNormalization`` layer after dropout divides at test time by the moving
variance it gathered in training, so its test outputs have variance ``r``
instead of 1, with either variant.

BatchNorm is invariant to ``y -> a y + c`` (``a > 0``) except for its
``epsilon``: it computes ``(y - mean) / sqrt(var + eps)``. Since the inverted
variant's ``y`` is the standard one's over ``p`` (also through a linear layer
between dropout and BatchNorm; a fixed bias there adds a constant),
BatchNorm with ``eps`` after inverted dropout gives exactly the outputs of
BatchNorm with ``p^2 eps`` after standard dropout in training
(:func:`equivalent_epsilon`). At test time it also needs the moving variance's
*initial value* mapped, ``s0 -> p^2 s0`` (:func:`equivalent_initial_moving_variance`;
Keras starts at 1), or the equality holds only up to ``momentum^T`` times the
initial values. With the same ``eps`` the two differ by the factor of
:func:`same_epsilon_output_ratio`.

``LayerNormalization`` after dropout has the same map and nothing else to map:
it normalises each example over its own features, ``(y - mean_f) / sqrt(var_f
+ eps)`` (or, with Keras's ``rms_scaling=True``, ``y / sqrt(var_f + eps)``),
with no moving statistics, so ``eps -> p^2 eps`` (inverted to standard;
``eps / p^2`` the other way) makes the two variants the same function of the
same parameters, in training and at test time (:func:`layernorm`,
:func:`equivalent_layernorm_epsilon`). Unlike BatchNorm it needs every
normalised feature to carry the factor ``1 / p``: a bias between dropout and
LayerNorm, or an undropped summand (a residual ``x + Dropout(F(x))``), breaks it.

Keras's ``BatchNormalization`` updates ``moving = momentum * moving + (1 -
momentum) * batch_stat`` with the *biased* (divide by ``B``) batch variance;
:func:`moving_variance_law` gives the mean and standard deviation of the moving
variance that results, for batches drawn independently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dropout_lib.reference import check_keep_prob, check_variant, dropout
from dropout_lib.theory.stats import sample_variance, variance_of_sample_variance
from dropout_lib.validation import check_keep_probs

__all__ = [
    "dropout_moments",
    "variance_shift_ratio",
    "linear_dropout_moments",
    "linear_variance_shift_ratio",
    "empirical_dropout_moments",
    "mc_variance_shift_ratio",
    "moving_variance_law",
    "predicted_test_output_variance",
    "batchnorm",
    "equivalent_epsilon",
    "equivalent_initial_moving_variance",
    "same_epsilon_output_ratio",
    "layernorm",
    "equivalent_layernorm_epsilon",
    "run_training_calls",
    "with_epsilon",
]


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #


def _as_float(name: str, value: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; got {value!r}.")
    return arr


def _check_var(name: str, value: ArrayLike) -> NDArray[np.float64]:
    arr = _as_float(name, value)
    if np.any(arr < 0):
        raise ValueError(
            f"{name} is a variance and must be >= 0; got {value!r}. Pass the "
            "variance s^2, not the standard deviation or a signed quantity."
        )
    return arr


_check_keep_probs = check_keep_probs  # the one check, in dropout_lib.validation


def _check_eps(epsilon: float) -> float:
    eps = float(epsilon)
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"epsilon must be a finite number >= 0; got {epsilon!r}.")
    return eps


# --------------------------------------------------------------------------- #
# exact moments of one unit and of a linear layer after dropout
# --------------------------------------------------------------------------- #


def dropout_moments(
    variant: str,
    keep_prob: float,
    mean: ArrayLike,
    var: ArrayLike,
    *,
    training: bool,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and variance of ``d(x)`` over the data and the mask, exactly.

    For a unit ``x`` with mean ``mu`` and variance ``s2`` over the data and an
    independent mask ``m ~ Bernoulli(p)``:

    * standard, training ``m x``: mean ``p mu``, variance
      ``p (s2 + mu^2) - p^2 mu^2 = p s2 + p (1 - p) mu^2``;
    * standard, test ``p x``: mean ``p mu``, variance ``p^2 s2``;
    * inverted, training ``m x / p``: mean ``mu``, variance
      ``(s2 + (1 - p) mu^2) / p``;
    * inverted, test ``x``: mean ``mu``, variance ``s2``.

    Parameters
    ----------
    variant
        ``"standard"`` (the paper's) or ``"inverted"`` (Keras's).
    keep_prob
        ``p`` in ``(0, 1]`` (Keras's ``rate`` is ``1 - p``), a number or an
        array (a curve over ``p``).
    mean, var
        ``mu`` and ``s2`` of the unit(s) over the data; broadcast together
        with ``keep_prob``.
    training
        ``True`` for the moments with the mask, ``False`` for the test-time map.

    Returns
    -------
    (mean, var) of ``d(x)``, float64 arrays of the broadcast shape.
    """
    v = check_variant(variant)
    p = _check_keep_probs(keep_prob)
    mu = _as_float("mean", mean)
    s2 = _check_var("var", var)
    p, mu, s2 = np.broadcast_arrays(p, mu, s2)
    if training:
        m_std, v_std = p * mu, p * s2 + p * (1.0 - p) * mu**2
    else:
        m_std, v_std = p * mu, p**2 * s2
    if v == "standard":
        return m_std.copy(), v_std.copy()
    return m_std / p, v_std / p**2


def variance_shift_ratio(keep_prob: float, mean: ArrayLike, var: ArrayLike) -> NDArray[np.float64]:
    """Test-time over training-time variance of ``d(x)``; the same for both variants.

    .. math:: r = \\frac{p\\,s^2}{s^2 + (1-p)\\,\\mu^2} \\in [0, 1]

    ``r = p`` for a zero-mean unit, ``r -> 0`` as ``mu^2 / s2 -> inf`` and
    ``r = 1`` for ``p = 1``. ``keep_prob``, ``mean`` and ``var`` broadcast
    together (``keep_prob`` may be an array of keep probabilities).

    Raises
    ------
    ValueError
        Where the training variance ``s2 + (1 - p) mu^2`` is 0 (a unit that is
        constantly 0, or constant with ``p = 1``): the ratio is undefined there.
    """
    p = _check_keep_probs(keep_prob)
    mu = _as_float("mean", mean)
    s2 = _check_var("var", var)
    p, mu, s2 = np.broadcast_arrays(p, mu, s2)
    denom = s2 + (1.0 - p) * mu**2
    if np.any(denom == 0):
        raise ValueError(
            "the training variance s2 + (1 - p) mu^2 is 0 for some unit (a unit that "
            "never varies): its variance shift is undefined. Drop such units first."
        )
    return p * s2 / denom


def _check_linear(
    weights: ArrayLike, mean: ArrayLike, cov: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    w = _as_float("weights", weights)
    mu = _as_float("mean", mean)
    c = _as_float("cov", cov)
    if w.ndim == 1:
        w = w[:, None]
    if w.ndim != 2 or mu.ndim != 1 or w.shape[0] != mu.shape[0]:
        raise ValueError(
            f"weights must have shape (n_in, n_out) (Keras's kernel layout) and mean "
            f"shape (n_in,); got weights {np.shape(weights)} and mean {mu.shape}."
        )
    n = mu.shape[0]
    if c.shape != (n, n):
        raise ValueError(
            f"cov must be the ({n}, {n}) covariance matrix of the layer's inputs; got shape {c.shape}."
        )
    if not np.allclose(c, c.T, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(c).max())):
        raise ValueError("cov must be symmetric; got a matrix with cov != cov.T.")
    if np.any(np.diag(c) < 0):
        raise ValueError("cov must have a nonnegative diagonal (variances).")
    return w, mu, c


def linear_dropout_moments(
    variant: str,
    keep_prob: float,
    weights: ArrayLike,
    mean: ArrayLike,
    cov: ArrayLike,
    *,
    training: bool,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and variance of ``z = d(x) @ W`` (no bias), exactly.

    The inputs ``x`` have mean vector ``mu`` and covariance ``C`` over the data;
    each input has its own independent mask bit. For output ``j`` with weight
    column ``w``, standard dropout gives

    * training: ``E z = p mu.w``,
      ``Var z = p^2 w'Cw + p (1 - p) sum_i w_i^2 (C_ii + mu_i^2)``;
    * test (``p x``): ``E z = p mu.w``, ``Var z = p^2 w'Cw``;

    the inverted variant's ``z`` is the standard one's over ``p``: means over
    ``p``, variances over ``p^2``. (From the law of total variance: given
    ``x``, the masks add ``p (1 - p) sum_i w_i^2 x_i^2``; the conditional mean
    ``p w.x`` varies over the data as ``p^2 w'Cw``.) A bias adds to the mean
    only.

    Parameters
    ----------
    weights
        ``W`` of shape ``(n_in, n_out)`` (Keras's kernel layout) or ``(n_in,)``.
    mean, cov
        ``mu`` of shape ``(n_in,)`` and ``C`` of shape ``(n_in, n_in)``.

    Returns
    -------
    (mean, var) of ``z``, each of shape ``(n_out,)``.
    """
    v = check_variant(variant)
    p = check_keep_prob(keep_prob)
    w, mu, c = _check_linear(weights, mean, cov)
    signal = np.einsum("ij,ik,kj->j", w, c, w)  # w'Cw per output
    m_std = p * (mu @ w)
    v_std = p**2 * signal
    if training:
        v_std = v_std + p * (1.0 - p) * ((np.diag(c) + mu**2) @ w**2)
    if v == "standard":
        return m_std, v_std
    return m_std / p, v_std / p**2


def linear_variance_shift_ratio(
    keep_prob: float, weights: ArrayLike, mean: ArrayLike, cov: ArrayLike
) -> NDArray[np.float64]:
    """Test over training variance of ``z = d(x) @ W``; the same for both variants.

    .. math:: r = \\frac{p\\,w^\\top C w}{p\\,w^\\top C w
              + (1-p) \\sum_i w_i^2 (C_{ii} + \\mu_i^2)}

    With ``W`` the identity this is :func:`variance_shift_ratio`. It tends to 1
    when the correlated signal ``w'Cw`` outgrows the diagonal noise term.
    """
    p = check_keep_prob(keep_prob)
    w, mu, c = _check_linear(weights, mean, cov)
    signal = np.einsum("ij,ik,kj->j", w, c, w)
    noise = (np.diag(c) + mu**2) @ w**2
    denom = p * signal + (1.0 - p) * noise
    if np.any(denom <= 0):
        raise ValueError(
            "the training variance of some output is 0 (a weight column of zeros, "
            "or inputs that never vary): its variance shift is undefined."
        )
    return p * signal / denom


# --------------------------------------------------------------------------- #
# a finite data set: exact moments, and Monte Carlo standard errors
# --------------------------------------------------------------------------- #


def empirical_dropout_moments(
    variant: str, keep_prob: float, x: ArrayLike, *, training: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Exact mean, variance and 4th central moment of ``d(x)``, ``x`` a uniformly drawn row.

    The data set ``x`` (shape ``(N, n)``) is the population: a row is drawn
    uniformly, then the mask. Conditioning on the mask bit, with ``a = 1``
    (standard) or ``a = 1/p`` (inverted) and ``c`` the mean of ``d(x)``:

    ``E (d - c)^k = p mean_rows (a x - c)^k + (1 - p) (-c)^k``  (training),
    ``E (d - c)^k = mean_rows (t x - c)^k``  (test, ``t = p`` or ``1``).

    The variance equals :func:`dropout_moments` at the rows' mean and
    (divide-by-``N``) variance; the 4th moment gives the spread of a batch
    variance (:func:`moving_variance_law`).

    Returns
    -------
    (mean, var, m4), each of shape ``(n,)``.
    """
    v = check_variant(variant)
    p = check_keep_prob(keep_prob)
    arr = _as_float("x", x)
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError(f"x must be a 2-d array (rows, units); got shape {arr.shape}.")
    a = 1.0 if v == "standard" else 1.0 / p
    if training:
        c = p * a * arr.mean(axis=0)
        dev = a * arr - c
        var = p * np.mean(dev**2, axis=0) + (1.0 - p) * c**2
        m4 = p * np.mean(dev**4, axis=0) + (1.0 - p) * c**4
    else:
        t = p if v == "standard" else 1.0
        c = t * arr.mean(axis=0)
        dev = t * arr - c
        var = np.mean(dev**2, axis=0)
        m4 = np.mean(dev**4, axis=0)
    return c, var, m4


def mc_variance_shift_ratio(
    variant: str,
    keep_prob: float,
    x: ArrayLike,
    rng: np.random.Generator | int | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Monte Carlo estimate of the variance shift ratio and its standard error.

    ``x`` (shape ``(n,)`` or ``(n, units)``, ``n >= 8``) holds independent
    draws of the unit(s). The first half goes through the test-time map, the
    second half through the training-time map with fresh masks from ``rng``;
    the estimate is the ratio of the two unbiased sample variances. The halves
    are independent, so the delta method gives the relative standard error
    ``sqrt((se_test/v_test)^2 + (se_train/v_train)^2)``
    (:func:`dropout_lib.theory.stats.sample_variance` for each).

    Returns
    -------
    (ratio, se), of shape ``()`` or ``(units,)``.
    """
    v = check_variant(variant)
    p = check_keep_prob(keep_prob)
    arr = _as_float("x", x)
    if arr.ndim not in (1, 2) or arr.shape[0] < 8:
        raise ValueError(
            f"x must hold at least 8 draws along axis 0 (shape (n,) or (n, units)); got shape {arr.shape}."
        )
    half = arr.shape[0] // 2
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    test = dropout(v, arr[:half], p, training=False)
    train = dropout(v, arr[half : 2 * half], p, training=True, rng=gen)
    est_test, est_train = sample_variance(test), sample_variance(train)
    v_test, se_test = est_test.value, est_test.standard_error
    v_train, se_train = est_train.value, est_train.standard_error
    ratio = v_test / v_train
    return ratio, ratio * np.sqrt((se_test / v_test) ** 2 + (se_train / v_train) ** 2)


def moving_variance_law(
    var: ArrayLike,
    m4: ArrayLike,
    *,
    batch_size: int,
    momentum: float,
    steps: int,
    initial: ArrayLike = 1.0,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and standard deviation of Keras's moving variance after ``steps`` batches.

    Keras's ``BatchNormalization`` sets ``moving = momentum * moving + (1 -
    momentum) * b_t`` on every training call, ``b_t`` the biased
    (divide-by-``B``) variance of batch ``t``. Starting from ``initial`` (Keras:
    1), after ``T`` steps with ``m = momentum``

    ``moving = m^T initial + sum_t (1 - m) m^(T-1-t) b_t``.

    For batches of ``B`` independent draws from a law with variance ``var``
    and 4th central moment ``m4``: ``E b = (B-1)/B var`` and
    ``Var b = ((B-1)/B)^2 (m4/B - var^2 (B-3)/(B(B-1)))``
    (:func:`dropout_lib.theory.stats.variance_of_sample_variance`); independent
    batches give

    * mean ``m^T initial + (1 - m^T) E b``,
    * variance ``(1-m)/(1+m) (1 - m^(2T)) Var b``.

    Returns
    -------
    (mean, sd) of the moving variance, arrays broadcast from ``var``, ``m4``
    (and ``initial``, Keras's ``moving_variance`` before the first step).

    Raises
    ------
    ValueError
        A negative variance, ``batch_size < 4``, ``momentum`` outside
        ``[0, 1)`` or ``steps < 1``.
    """
    v = _check_var("var", var)
    k4 = _check_var("m4", m4)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 4:
        raise ValueError(f"batch_size must be an integer >= 4; got {batch_size!r}.")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}.")
    m = float(momentum)
    if not 0.0 <= m < 1.0:
        raise ValueError(
            f"momentum must be in [0, 1) (Keras's BatchNormalization default is 0.99); got {momentum!r}."
        )
    b = int(batch_size)
    mean_b = (b - 1) / b * v
    var_b = ((b - 1) / b) ** 2 * variance_of_sample_variance(v, k4, b)
    mt = m**steps
    mean = mt * _check_var("initial", initial) + (1.0 - mt) * mean_b
    sd = np.sqrt((1.0 - m) / (1.0 + m) * (1.0 - m ** (2 * steps)) * np.maximum(var_b, 0.0))
    return mean, sd


def predicted_test_output_variance(
    variant: str,
    keep_prob: float,
    x: ArrayLike,
    *,
    batch_size: int,
    momentum: float,
    steps: int,
    initial: ArrayLike = 1.0,
    dropout_training: bool = True,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Predicted variance of BatchNorm's test outputs after dropout, and its standard error.

    BatchNorm (``epsilon = 0``, ``gamma = 1``) follows dropout on the data set
    ``x`` (shape ``(N, units)``, the population) and gathers its moving
    variance in ``steps`` training calls on batches of ``batch_size`` rows
    drawn independently, starting from ``initial``. With the dropout layer in
    training mode (``dropout_training=True``) the batches have the training
    law of :func:`empirical_dropout_moments`; with it in inference mode (the
    re-estimation of Hendrycks & Gimpel) the test law. At test time the
    outputs' variance is ``Var_test / moving``; to first order in the moving
    variance's fluctuation (:func:`moving_variance_law`) its mean is
    ``Var_test / E[moving]`` and its standard error that times
    ``sd(moving) / E[moving]``.

    With ``dropout_training=True`` and ``steps`` large the prediction is the
    variance shift :func:`variance_shift_ratio` times ``B/(B-1)``; with
    ``dropout_training=False`` it is ``B/(B-1)``, no shift.

    Returns
    -------
    (predicted, se), each of shape ``(units,)``.
    """
    _, var_in, m4_in = empirical_dropout_moments(variant, keep_prob, x, training=bool(dropout_training))
    _, var_test, _ = empirical_dropout_moments(variant, keep_prob, x, training=False)
    expected, sd = moving_variance_law(
        var_in, m4_in, batch_size=batch_size, momentum=momentum, steps=steps, initial=initial
    )
    predicted = var_test / expected
    return predicted, predicted * sd / expected


# --------------------------------------------------------------------------- #
# BatchNorm and its epsilon
# --------------------------------------------------------------------------- #


def batchnorm(
    y: ArrayLike,
    mean: ArrayLike,
    var: ArrayLike,
    epsilon: float,
    gamma: ArrayLike = 1.0,
    beta: ArrayLike = 0.0,
) -> NDArray[np.float64]:
    """Return ``gamma * (y - mean) / sqrt(var + epsilon) + beta`` (BatchNorm's map).

    With batch statistics this is BatchNorm in training; with the moving
    statistics it is BatchNorm at test time.
    """
    eps = _check_eps(epsilon)
    v = _check_var("var", var)
    if np.any(v + eps == 0):
        raise ValueError("var + epsilon is 0 for some unit: BatchNorm would divide by 0.")
    return np.asarray(gamma) * (_as_float("y", y) - _as_float("mean", mean)) / np.sqrt(v + eps) + np.asarray(
        beta
    )


def equivalent_epsilon(keep_prob: float, epsilon: float) -> float:
    """BatchNorm's epsilon after standard dropout that reproduces ``epsilon`` after inverted dropout.

    The inverted variant feeds BatchNorm ``y / p`` (plus a constant) where the
    standard variant feeds ``y``, so its statistics are ``mean / p`` and
    ``var / p^2``, and

    ``(y/p - mean/p) / sqrt(var/p^2 + eps) = (y - mean) / sqrt(var + p^2 eps)``.

    Hence the map is ``eps -> p^2 eps`` (inverted to standard), in training and
    at test time.
    """
    p = check_keep_prob(keep_prob)
    return p**2 * _check_eps(epsilon)


def equivalent_initial_moving_variance(
    keep_prob: float, initial: float = 1.0, *, to: str = "standard"
) -> float:
    """BatchNorm's initial moving variance that keeps the two variants equal at test time.

    After ``T`` training calls with momentum ``m`` the moving variance is
    ``m^T s0 + sum_t (1 - m) m^(T-1-t) b_t``. The batch variances ``b_t`` after
    standard dropout are ``p^2`` times those after inverted dropout (same masks),
    so the moving variances keep that ratio for every ``T`` exactly when the
    initial values ``s0`` do:

    * ``to="standard"`` (Keras's inverted net with initial value ``initial``,
      default 1, mapped to the paper's): ``p^2 * initial``;
    * ``to="inverted"`` (the paper's net mapped to Keras's): ``initial / p^2``.

    Keras: ``BatchNormalization(moving_variance_initializer=
    keras.initializers.Constant(value))`` (the constant passes through float32;
    assign the variable for an exact float64 value). The moving mean starts at
    0 in Keras, which maps to itself.
    """
    p = check_keep_prob(keep_prob)
    s0 = float(initial)
    if not np.isfinite(s0) or s0 <= 0:
        raise ValueError(f"initial must be a positive moving variance; got {initial!r}.")
    if to == "standard":
        return p**2 * s0
    if to == "inverted":
        return s0 / p**2
    raise ValueError(f"to must be 'standard' or 'inverted' (the variant the map leads to); got {to!r}.")


def same_epsilon_output_ratio(
    keep_prob: float, inverted_var: ArrayLike, epsilon: float
) -> NDArray[np.float64]:
    """Standard-variant over inverted-variant BatchNorm output, both with the same ``epsilon``.

    With ``v`` the variance the inverted variant's BatchNorm divides by (the
    batch variance in training, the moving variance at test time), the
    standard variant's divides by ``p^2 v``, and

    ``ratio = sqrt((v + eps) / (v + eps / p^2))  <= 1``,

    about ``1 - (1/p^2 - 1) eps / (2 v)`` for ``eps << v``; it is 1 for
    ``eps = 0`` or ``p = 1``. (``beta`` is added after the ratio: this is the
    ratio of the normalised values, before ``gamma`` and ``beta``.)
    """
    p = check_keep_prob(keep_prob)
    eps = _check_eps(epsilon)
    v = _check_var("inverted_var", inverted_var)
    if np.any(v + eps == 0):
        raise ValueError("inverted_var + epsilon is 0 for some unit: BatchNorm is undefined.")
    return np.sqrt((v + eps) / (v + eps / p**2))


# --------------------------------------------------------------------------- #
# LayerNorm and its epsilon
# --------------------------------------------------------------------------- #


def layernorm(
    y: ArrayLike,
    epsilon: float,
    gamma: ArrayLike = 1.0,
    beta: ArrayLike = 0.0,
    *,
    rms_scaling: bool = False,
) -> NDArray[np.float64]:
    """Keras's ``LayerNormalization`` over the last axis, in float64.

    ``gamma * (y - mean_f) / sqrt(var_f + epsilon) + beta`` with ``mean_f`` and
    ``var_f`` (biased) over the last axis of each example; with
    ``rms_scaling=True``, Keras 3's ``y / sqrt(var_f + epsilon) * gamma``
    (no centring, no ``beta``). No moving statistics: training and test
    compute the same map.
    """
    eps = _check_eps(epsilon)
    arr = _as_float("y", y)
    if arr.ndim < 1 or arr.shape[-1] < 1:
        raise ValueError(f"y must have at least one feature on its last axis; got shape {arr.shape}.")
    mean = arr.mean(axis=-1, keepdims=True)
    var = arr.var(axis=-1, keepdims=True)
    if np.any(var + eps == 0):
        raise ValueError("var + epsilon is 0 for some example: LayerNorm would divide by 0.")
    if rms_scaling:
        return arr / np.sqrt(var + eps) * np.asarray(gamma)
    return np.asarray(gamma) * (arr - mean) / np.sqrt(var + eps) + np.asarray(beta)


def equivalent_layernorm_epsilon(keep_prob: float, epsilon: float, *, to: str = "standard") -> float:
    """LayerNorm's epsilon that makes the two dropout variants one network.

    Let LayerNorm read a dropped tensor ``y`` through positively homogeneous,
    bias-free layers only (a bias-free ``Dense``, ReLU), so that with the same
    mask the inverted variant's input is the standard one's over ``p``, on
    *every* normalised feature. Then, with ``mean_f`` and ``var_f`` over the
    normalised axes,

    ``(y/p - mean_f/p) / sqrt(var_f/p^2 + eps) = (y - mean_f) / sqrt(var_f + p^2 eps)``

    (and likewise for ``rms_scaling``), in training and at test time (the
    inputs are ``x`` and ``p x``). ``gamma``, ``beta`` and every other weight
    stay as they are, and so does the optimizer: the two nets are the same
    function of the same parameters.

    * ``to="standard"``: Keras's (inverted) net with ``epsilon`` -> the
      paper's with ``p^2 * epsilon``;
    * ``to="inverted"``: the paper's net with ``epsilon`` -> Keras's with
      ``epsilon / p^2``.
    """
    p = check_keep_prob(keep_prob)
    eps = _check_eps(epsilon)
    if to == "standard":
        return p**2 * eps
    if to == "inverted":
        return eps / p**2
    raise ValueError(f"to must be 'standard' or 'inverted' (the variant the map leads to); got {to!r}.")


# --------------------------------------------------------------------------- #
# driving layers through training calls (framework-agnostic)
# --------------------------------------------------------------------------- #


def run_training_calls(
    dropouts: Sequence[Callable[..., Any]],
    norms: Sequence[Callable[..., Any]],
    x: ArrayLike,
    *,
    batch_size: int,
    steps: int,
    seed: int,
    dropout_training: bool = True,
) -> list[NDArray[np.float64]]:
    """Call ``norm_k(dropout_k(batch, training=True), training=True)`` for ``steps`` batches.

    Each batch is ``batch_size`` rows of ``x`` drawn uniformly with replacement
    (``numpy.random.default_rng(seed)``), so batches are independent draws, as
    :func:`moving_variance_law` assumes; pair ``k`` sees the same rows as every
    other pair. Works with any callables taking ``training=`` (Keras layers).
    It is how a BatchNorm layer gathers its moving statistics in ``fit``.
    With ``dropout_training=False`` the dropout layers run their test-time
    map while the norms still update their statistics: the re-estimation of
    Hendrycks & Gimpel (2017), BatchNorm's moving averages with dropout off.

    Returns
    -------
    For each pair, the last batch's dropout output as a float64 array.
    """
    if len(dropouts) != len(norms) or not dropouts:
        raise ValueError(
            f"need one norm layer per dropout layer; got {len(dropouts)} dropouts and {len(norms)} norms."
        )
    arr = _as_float("x", x)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    rng = np.random.default_rng(seed)
    last: list[Any] = [None] * len(dropouts)
    for _ in range(int(steps)):
        batch = arr[rng.integers(arr.shape[0], size=int(batch_size))]
        for k, (drop, norm) in enumerate(zip(dropouts, norms)):
            y = drop(batch, training=bool(dropout_training))
            norm(y, training=True)
            last[k] = y
    return [np.asarray(y, dtype=np.float64) for y in last]


def with_epsilon(layer: Any, epsilon: float) -> Any:
    """A copy of a built BatchNorm layer, statistics and all, with another ``epsilon``.

    ``epsilon`` enters only the normalisation, never the moving statistics, so
    the copy is the layer that training with ``epsilon`` would have produced.
    Works with any layer offering Keras's ``get_config``/``from_config``,
    ``build``, ``get_weights``/``set_weights`` and a ``moving_mean`` variable.
    """
    eps = _check_eps(epsilon)
    weights = layer.get_weights()
    if not weights:
        raise ValueError("the layer has no weights yet: call or build it before copying it.")
    clone = type(layer).from_config({**layer.get_config(), "epsilon": eps})
    clone.build((None, int(np.shape(layer.moving_mean)[0])))
    clone.set_weights(weights)
    return clone
