"""Monte Carlo summaries with standard errors, and the z-scores that test them.

A Monte Carlo check compares an estimate with the value a theorem predicts,
in units of the estimate's standard error:

.. math:: z = (\\hat\\theta - \\theta) / \\widehat{\\mathrm{se}}(\\hat\\theta).

If the theorem is true, ``z`` is approximately standard normal (central limit
theorem, for many independent draws), so ``|z| > t`` happens with probability
about :func:`normal_two_sided_tail` ``(t)``; over ``k`` comparisons the chance
that *any* exceeds ``t`` is at most ``k`` times that (the union bound, which
needs no independence between the comparisons): :func:`family_false_alarm_bound`.
A check ``max |z| < t`` therefore has a false-alarm probability that can be
stated in advance, and it fails, by many standard errors, when the predicted
value is wrong by more than a few standard errors.

Conventions: samples are float arrays; draws run along ``axis`` (default 0)
and every other axis is a separate quantity estimated in parallel. Standard
errors are *estimated* from the same samples (nothing about the distribution
is assumed known), so a check does not presuppose the formula it tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "Estimate",
    "sample_mean",
    "sample_variance",
    "variance_of_sample_variance",
    "z_scores",
    "normal_two_sided_tail",
    "family_false_alarm_bound",
]


@dataclass(frozen=True)
class Estimate:
    """An estimate, its estimated standard error, and the number of draws.

    Attributes
    ----------
    value
        The estimate, one entry per estimated quantity.
    standard_error
        Its estimated standard error, same shape as ``value``.
    n
        Number of independent draws it is based on.
    """

    value: NDArray[np.float64]
    standard_error: NDArray[np.float64]
    n: int

    def z_scores(self, expected: ArrayLike) -> NDArray[np.float64]:
        """Return ``(value - expected) / standard_error``; see :func:`z_scores`."""
        return z_scores(self.value, self.standard_error, expected)


def _samples(samples: ArrayLike, axis: int, minimum: int) -> tuple[NDArray[np.float64], int]:
    """Return ``samples`` as float64 with draws moved to axis 0, after checks."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim == 0:
        raise ValueError(
            "samples must have at least one dimension (the draws); got a scalar. "
            "Pass an array whose axis `axis` runs over independent draws."
        )
    try:
        arr = np.moveaxis(arr, axis, 0)
    except np.exceptions.AxisError:
        raise ValueError(
            f"axis {axis} is out of range for samples with {arr.ndim} dimension(s); "
            f"pass an axis in [{-arr.ndim}, {arr.ndim - 1}]."
        ) from None
    n = arr.shape[0]
    if n < minimum:
        raise ValueError(f"need at least {minimum} draws along axis {axis}; got {n}. Draw more samples.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(
            "samples hold a non-finite value (nan or inf); a mean or variance of "
            "them is meaningless. Check the simulation that produced them."
        )
    return arr, n


def sample_mean(samples: ArrayLike, axis: int = 0) -> Estimate:
    """Sample mean and its standard error.

    For draws ``y_1, ..., y_n`` (along ``axis``)

    .. math::

        \\bar y = \\frac1n \\sum_i y_i, \\qquad
        \\widehat{\\mathrm{se}}(\\bar y) = \\frac{s}{\\sqrt n}, \\qquad
        s^2 = \\frac{1}{n-1} \\sum_i (y_i - \\bar y)^2,

    since :math:`\\mathrm{Var}(\\bar y) = \\sigma^2 / n` for independent draws.
    Where all draws are equal, the mean is that value exactly and the
    standard error is 0 (floating-point summation would leave a residue).

    Parameters
    ----------
    samples
        Array of draws, at least 2 along ``axis``; other axes are estimated
        separately.
    axis
        The axis that runs over draws.

    Returns
    -------
    Estimate
        ``value`` and ``standard_error`` of shape ``samples.shape`` without
        ``axis``.

    Raises
    ------
    ValueError
        Fewer than 2 draws, a bad ``axis``, or a non-finite sample.
    """
    arr, n = _samples(samples, axis, minimum=2)
    const = np.all(arr == arr[0], axis=0)
    mean = np.where(const, arr[0], arr.mean(axis=0))
    se = np.where(const, 0.0, arr.std(axis=0, ddof=1) / math.sqrt(n))
    return Estimate(np.asarray(mean), np.asarray(se), n)


def variance_of_sample_variance(
    variance: ArrayLike, fourth_central_moment: ArrayLike, n: int
) -> NDArray[np.float64]:
    """Exact variance of the unbiased sample variance of ``n`` independent draws.

    For i.i.d. draws with variance :math:`\\sigma^2` and fourth central moment
    :math:`\\mu_4 = \\mathbb E[(y - \\mathbb E y)^4]`, the unbiased sample
    variance :math:`s^2 = \\frac{1}{n-1}\\sum_i (y_i - \\bar y)^2` has

    .. math::

        \\mathrm{Var}(s^2) = \\frac1n\\left(\\mu_4 - \\frac{n-3}{n-1}\\,\\sigma^4\\right).

    For normal draws (:math:`\\mu_4 = 3\\sigma^4`) this is the familiar
    :math:`2\\sigma^4/(n-1)`. Works elementwise, and with
    :class:`fractions.Fraction` inputs (scalars or object arrays) it is exact.

    Parameters
    ----------
    variance, fourth_central_moment
        :math:`\\sigma^2` and :math:`\\mu_4` of one draw.
    n
        Number of draws, at least 2.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (the number of draws); got {n!r}.")
    n = int(n)
    s2, m4 = np.asarray(variance), np.asarray(fourth_central_moment)
    exact = s2.dtype == object or m4.dtype == object
    factor = Fraction(n - 3, n - 1) if exact else (n - 3) / (n - 1)
    return np.asarray((m4 - factor * s2 * s2) / n)[()]


def sample_variance(samples: ArrayLike, axis: int = 0) -> Estimate:
    """Unbiased sample variance and its standard error.

    For draws ``y_1, ..., y_n`` (along ``axis``) the estimate is
    :math:`s^2 = \\frac{1}{n-1}\\sum_i (y_i - \\bar y)^2`. Its standard error is
    the square root of :func:`variance_of_sample_variance`,

    .. math::

        \\mathrm{Var}(s^2) = \\frac1n\\left(\\mu_4 - \\frac{n-3}{n-1}\\,\\sigma^4\\right),

    with the plug-in estimates :math:`\\hat\\mu_4 = \\frac1n\\sum_i (y_i - \\bar y)^4`
    and :math:`\\hat\\sigma^4 = (s^2)^2`:

    .. math::

        \\widehat{\\mathrm{se}}(s^2) = \\sqrt{\\frac1n\\left(\\hat\\mu_4 -
        \\frac{n-3}{n-1}\\,(s^2)^2\\right)}.

    The fourth moment matters: a dropout output ``c m``, ``m ~ Bernoulli(p)``,
    has kurtosis ``mu_4 / sigma^4 = (1 - 3 p (1 - p)) / (p (1 - p))``, about 18
    at ``p = 0.05`` against 3 for a normal variable, and the normal-theory
    ``sqrt(2/(n-1)) s^2`` would understate its error about threefold. The
    radicand is never negative: with :math:`m_2 = \\frac{n-1}{n}s^2`,
    :math:`\\hat\\mu_4 \\ge m_2^2` (Jensen) and
    :math:`\\frac{n-3}{n-1}(s^2)^2 = \\frac{(n-3)n^2}{(n-1)^3}m_2^2 < m_2^2`.

    Parameters
    ----------
    samples
        Array of draws, at least 2 along ``axis``.
    axis
        The axis that runs over draws.

    Returns
    -------
    Estimate
        ``value`` (:math:`s^2`) and ``standard_error``; both exactly 0 where
        all draws are equal.

    Raises
    ------
    ValueError
        Fewer than 2 draws, a bad ``axis``, or a non-finite sample.
    """
    arr, n = _samples(samples, axis, minimum=2)
    const = np.all(arr == arr[0], axis=0)
    dev = arr - arr.mean(axis=0)
    sq = dev * dev
    s2 = np.where(const, 0.0, sq.sum(axis=0) / (n - 1))
    m4 = np.where(const, 0.0, (sq * sq).mean(axis=0))
    var_s2 = np.maximum(variance_of_sample_variance(s2, m4, n), 0.0)
    return Estimate(np.asarray(s2), np.sqrt(var_s2), n)


def z_scores(estimate: ArrayLike, standard_error: ArrayLike, expected: ArrayLike) -> NDArray[np.float64]:
    """Return ``(estimate - expected) / standard_error``, elementwise.

    A zero standard error means the draws did not vary. Then ``z`` is ``0``
    where ``estimate == expected`` exactly and ``+-inf`` otherwise, so a
    deterministic quantity passes a ``|z| < t`` check only if it is exact.

    Raises
    ------
    ValueError
        If a standard error is negative or not finite, or the shapes do not
        broadcast.
    """
    est = np.asarray(estimate, dtype=np.float64)
    se = np.asarray(standard_error, dtype=np.float64)
    exp = np.asarray(expected, dtype=np.float64)
    if np.any(~np.isfinite(se)) or np.any(se < 0):
        raise ValueError(
            "standard_error must be finite and >= 0; got "
            f"{se[~np.isfinite(se) | (se < 0)].ravel()[0]!r}. Pass the standard "
            "error of the estimate (e.g. Estimate.standard_error)."
        )
    try:
        est, se, exp = np.broadcast_arrays(est, se, exp)
    except ValueError:
        raise ValueError(
            f"estimate {est.shape}, standard_error {se.shape} and expected "
            f"{exp.shape} do not broadcast to one shape; pass arrays of matching shape."
        ) from None
    diff = est - exp
    z = np.zeros(diff.shape)
    pos = se > 0
    z[pos] = diff[pos] / se[pos]
    zero = ~pos & (diff != 0)
    z[zero] = np.copysign(np.inf, diff[zero])
    return z


def normal_two_sided_tail(threshold: float) -> float:
    """Return :math:`P(|Z| > t) = 2\\,P(Z > t)` for standard normal ``Z`` (``scipy.stats.norm.sf``).

    Examples
    --------
    >>> f"{normal_two_sided_tail(5.0):.2e}"
    '5.73e-07'
    """
    t = float(threshold)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"threshold must be a finite number >= 0; got {threshold!r}.")
    import scipy.stats  # here, not at the top: importing it costs about 1 s in every kernel

    return float(2.0 * scipy.stats.norm.sf(t))


def family_false_alarm_bound(threshold: float, n_comparisons: int) -> float:
    """Upper bound on P(any of ``k`` z-scores exceeds ``t`` in absolute value).

    If every comparison's ``z`` is standard normal under the claim being
    checked, the union bound gives

    .. math:: P\\left(\\max_{j \\le k} |z_j| > t\\right) \\le \\min\\left(1,\\;
              k\\,P(|Z| > t)\\right),

    whatever the dependence between the comparisons.
    """
    if (
        isinstance(n_comparisons, bool)
        or not isinstance(n_comparisons, (int, np.integer))
        or n_comparisons < 1
    ):
        raise ValueError(f"n_comparisons must be a positive integer; got {n_comparisons!r}.")
    return min(1.0, int(n_comparisons) * normal_two_sided_tail(threshold))
