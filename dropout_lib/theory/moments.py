"""Exact mean and variance of a unit's output under the two dropout variants.

Notation: ``keep_prob`` is the paper's ``p``, the probability of KEEPING a
unit; Keras's ``rate`` is ``1 - p``. For a fixed input ``x`` and a mask
``m ~ Bernoulli(p)``:

=========  ===============  =========  =====================  ================
variant    training output  mean       variance               inference output
=========  ===============  =========  =====================  ================
standard   ``m x``          ``p x``    ``p (1 - p) x**2``     ``p x``
inverted   ``m x / p``      ``x``      ``(1 - p) x**2 / p``   ``x``
=========  ===============  =========  =====================  ================

Both follow from one fact: a function ``f`` of a Bernoulli(``p``) variable
takes two values, so

.. math::

    \\mathbb E[f(m)] = p\\,f(1) + (1-p)\\,f(0), \\qquad
    \\mathrm{Var}[f(m)] = p\\,(f(1) - \\mu)^2 + (1-p)\\,(f(0) - \\mu)^2
                       = p(1-p)\\,(f(1) - f(0))^2.

Two ways to obtain the moments, which the book checks against each other:

* closed form: :func:`output_mean`, :func:`output_variance`;
* enumeration of the two mask values through the numpy reference
  implementation itself: :func:`enumerate_moments`.

``exact=True`` computes in rational arithmetic (:class:`fractions.Fraction`)
on the exact binary values of the float64 inputs and rounds once, correctly,
to float64 at the end; the only rounding left is then the one inside the
computation being checked.

:func:`sample_training_outputs` draws Monte Carlo samples for
:mod:`dropout_lib.theory.stats`.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dropout_lib import reference
from dropout_lib.reference import Variant, check_keep_prob, check_variant

__all__ = [
    "Moments",
    "as_fractions",
    "to_float64",
    "two_point_moments",
    "output_mean",
    "output_variance",
    "enumerate_moments",
    "sample_training_outputs",
]


class Moments(NamedTuple):
    """Mean and variance of a dropout output, elementwise in the input."""

    mean: NDArray
    variance: NDArray


def _keep_prob(keep_prob: float | Fraction) -> float | Fraction:
    """Check ``keep_prob`` in (0, 1]; a Fraction stays a Fraction (exact arithmetic)."""
    if isinstance(keep_prob, Fraction):
        check_keep_prob(keep_prob)  # the one check (it accepts a Fraction); keep it exact
        return keep_prob
    return check_keep_prob(keep_prob)


def as_fractions(x: ArrayLike) -> NDArray[np.object_]:
    """Return ``x`` as an object array of :class:`fractions.Fraction`, exactly.

    Every finite float is a dyadic rational, so the conversion loses nothing.

    Raises
    ------
    ValueError
        If ``x`` holds ``nan`` or ``inf``.
    """
    arr = np.asarray(x)
    if arr.dtype != object and not np.all(np.isfinite(arr)):
        raise ValueError("x holds nan or inf, which has no exact rational value; pass finite inputs.")
    flat = [v if isinstance(v, Fraction) else Fraction(v) for v in arr.ravel().tolist()]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(arr.shape)


def to_float64(x: ArrayLike) -> NDArray[np.float64]:
    """Round an array of rationals (or floats) to float64, once and correctly.

    ``float(Fraction)`` divides two Python integers, which CPython rounds
    correctly (to nearest, ties to even).
    """
    arr = np.asarray(x)
    if arr.dtype != object:
        return arr.astype(np.float64)
    return np.array([float(v) for v in arr.ravel().tolist()], dtype=np.float64).reshape(arr.shape)


def two_point_moments(kept: ArrayLike, dropped: ArrayLike, keep_prob: float | Fraction) -> Moments:
    """Mean and variance of ``f(m)``, ``m ~ Bernoulli(keep_prob)``, from its two values.

    With ``kept = f(1)``, ``dropped = f(0)`` and ``p = keep_prob``:

    .. math::

        \\mu = p\\,f(1) + (1-p)\\,f(0), \\qquad
        \\sigma^2 = p\\,(f(1) - \\mu)^2 + (1-p)\\,(f(0) - \\mu)^2.

    This is the definition of the two moments, summed over the two outcomes.
    The arithmetic is whatever the inputs carry: floats give float results;
    :class:`~fractions.Fraction` values (see :func:`as_fractions`) give exact
    ones. Elementwise.
    """
    p = _keep_prob(keep_prob)
    a, b = np.asarray(kept), np.asarray(dropped)
    mean = p * a + (1 - p) * b
    var = p * (a - mean) ** 2 + (1 - p) * (b - mean) ** 2
    return Moments(np.asarray(mean)[()], np.asarray(var)[()])


def output_mean(
    variant: Variant, x: ArrayLike, keep_prob: float, *, exact: bool = False
) -> NDArray[np.float64]:
    """Closed-form mean of the training output: ``p x`` (standard) or ``x`` (inverted).

    Parameters
    ----------
    variant
        ``"standard"`` (the paper's, training output ``m x``) or
        ``"inverted"`` (Keras's, training output ``m x / p``).
    x
        Input, any shape; the result has the same shape.
    keep_prob
        ``p``, the probability of keeping a unit (Keras's ``rate`` is ``1 - p``).
    exact
        If true, evaluate in rational arithmetic and round once to float64.
    """
    variant = check_variant(variant)
    p = check_keep_prob(keep_prob)
    if exact:
        xq, pq = as_fractions(x), Fraction(p)
        return to_float64(pq * xq if variant == "standard" else xq)
    x = np.asarray(x, dtype=np.float64)
    return p * x if variant == "standard" else x.copy()


def output_variance(
    variant: Variant, x: ArrayLike, keep_prob: float, *, exact: bool = False
) -> NDArray[np.float64]:
    """Closed-form variance of the training output.

    ``p (1 - p) x**2`` (standard: ``m x``) or ``(1 - p) x**2 / p`` (inverted:
    ``m x / p``), from :math:`\\mathrm{Var}(c\\,m) = c^2 p (1 - p)` with
    ``c = x`` or ``c = x / p``. Parameters as in :func:`output_mean`.
    """
    variant = check_variant(variant)
    p = check_keep_prob(keep_prob)
    if exact:
        xq, pq = as_fractions(x), Fraction(p)
        v = pq * (1 - pq) * xq * xq if variant == "standard" else (1 - pq) * xq * xq / pq
        return to_float64(v)
    x = np.asarray(x, dtype=np.float64)
    return p * (1 - p) * x**2 if variant == "standard" else (1 - p) * x**2 / p


def enumerate_moments(variant: Variant, x: ArrayLike, keep_prob: float, *, exact: bool = True) -> Moments:
    """Mean and variance of the reference implementation's training output, by enumeration.

    Runs :func:`dropout_lib.reference.dropout` in training mode on the two
    possible masks, all ones (``f(1)``) and all zeros (``f(0)``), and combines
    them with :func:`two_point_moments`:
    :math:`\\mathbb E[f(m)] = p f(1) + (1-p) f(0)` and likewise for the variance.
    No formula for the variant enters: only its implementation.

    With ``exact=True`` (default) the combination is done in rational
    arithmetic on the float64 values the implementation returned, then
    rounded once; so the result is the correctly rounded mean and variance
    of the distribution of the implementation's actual float outputs.

    Parameters as in :func:`output_mean`. Returns float64 arrays of ``x``'s shape.
    """
    variant = check_variant(variant)
    p = check_keep_prob(keep_prob)
    x = np.asarray(x, dtype=np.float64)
    f1 = reference.dropout(variant, x, p, training=True, mask=np.ones_like(x))
    f0 = reference.dropout(variant, x, p, training=True, mask=np.zeros_like(x))
    if exact:
        m = two_point_moments(as_fractions(f1), as_fractions(f0), Fraction(p))
        return Moments(to_float64(m.mean), to_float64(m.variance))
    m = two_point_moments(f1, f0, p)
    return Moments(np.asarray(m.mean, dtype=np.float64), np.asarray(m.variance, dtype=np.float64))


def sample_training_outputs(
    variant: Variant,
    x: ArrayLike,
    keep_prob: float,
    n_draws: int,
    rng: np.random.Generator | int | None = None,
) -> NDArray[np.float64]:
    """Draw ``n_draws`` training outputs of the reference implementation.

    Returns an array of shape ``(n_draws, *x.shape)`` whose row ``i`` is
    ``reference.dropout(variant, x, keep_prob, training=True)`` with a fresh
    mask ``m ~ Bernoulli(keep_prob)`` drawn from ``rng`` (Keras's ``rate`` is
    ``1 - keep_prob``). Rows are independent.
    """
    variant = check_variant(variant)
    if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 1:
        raise ValueError(f"n_draws must be a positive integer; got {n_draws!r}.")
    x = np.asarray(x, dtype=np.float64)
    xs = np.broadcast_to(x, (int(n_draws), *x.shape))
    return reference.dropout(variant, xs, keep_prob, training=True, rng=rng)
