"""Checks of the arguments every module takes, and the two refusals.

Notation (the paper's): ``keep_prob`` is ``p``, the probability of KEEPING a
unit; Keras's ``rate`` is the probability of DROPPING it, ``rate = 1 - p``.

Each check returns the checked value (as a plain Python type) or raises with
a message that says what is wrong and what to do:

>>> check_keep_prob(0.8)
0.8
>>> check_keep_prob(1.5)
Traceback (most recent call last):
...
ValueError: keep_prob must be in (0, 1]; got 1.5. keep_prob is the probability of KEEPING
a unit; Keras's rate (the drop probability) is 1 - keep_prob: for rate r pass keep_prob=1 - r.
>>> keep_prob_from_rate(0.25)
0.75
>>> direction_to("standard")
'to_standard'

This module imports neither Keras nor TensorFlow.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DIRECTIONS",
    "VARIANTS",
    "Direction",
    "NoExactMapError",
    "NotConvertibleError",
    "NothingToConvertWarning",
    "Variant",
    "check_direction",
    "check_keep_prob",
    "check_keep_probs",
    "check_rate",
    "check_variant",
    "direction_to",
    "keep_prob_from_rate",
    "rate_from_keep_prob",
]

Variant = Literal["standard", "inverted"]
VARIANTS: tuple[Variant, ...] = ("standard", "inverted")
Direction = Literal["to_standard", "to_inverted"]
DIRECTIONS: tuple[Direction, ...] = ("to_standard", "to_inverted")


class NoExactMapError(ValueError):
    """No hyperparameters of the same kind reproduce the other variant exactly.

    Raised instead of returning an approximation; the message says why and
    what to do instead.

    Examples
    --------
    >>> issubclass(NoExactMapError, ValueError)
    True
    """


class NothingToConvertWarning(UserWarning):
    """:func:`dropout_lib.twins.convert_model` was given a model without a dropout layer.

    The result is a copy of the model (and of its optimizer): a conversion
    that changes nothing says so, because a model whose randomness sits in
    layers the conversion does not swap would otherwise come back looking
    "converted".

    Examples
    --------
    >>> issubclass(NothingToConvertWarning, UserWarning)
    True
    """


class NotConvertibleError(ValueError):
    """A model (or one of its layers) has no exact conversion to the other variant.

    The message names the layer and the reason.

    Examples
    --------
    >>> issubclass(NotConvertibleError, ValueError)
    True
    """


_KEEP_HINT = (
    "keep_prob is the probability of KEEPING a unit; Keras's rate (the drop "
    "probability) is 1 - keep_prob: for rate r pass keep_prob=1 - r."
)


def _real(value: Any, name: str, interval: str) -> float:
    """``float(value)`` for a real scalar (not bool, str, array); TypeError otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (Real, np.floating, np.integer)):
        raise TypeError(
            f"{name} must be a real number in {interval}; got {value!r} of type {type(value).__name__}."
        )
    return float(value)


def check_keep_prob(keep_prob: float) -> float:
    """Return ``keep_prob`` as a float after checking ``0 < keep_prob <= 1``.

    Parameters
    ----------
    keep_prob
        ``p``, the probability of keeping a unit (not Keras's ``rate``). A
        ``fractions.Fraction`` is accepted and returned as a float.

    Raises
    ------
    TypeError
        If ``keep_prob`` is not a real scalar.
    ValueError
        If it is not a finite number in ``(0, 1]``.

    Examples
    --------
    >>> check_keep_prob(1)
    1.0
    >>> check_keep_prob(0.0)
    Traceback (most recent call last):
    ...
    ValueError: keep_prob must be in (0, 1]; got 0.0. keep_prob is the probability of KEEPING
    a unit; Keras's rate (the drop probability) is 1 - keep_prob: for rate r pass keep_prob=1 - r.
    """
    value = _real(keep_prob, "keep_prob", "(0, 1]")
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"keep_prob must be in (0, 1]; got {keep_prob!r}. {_KEEP_HINT}")
    return value


def check_keep_probs(keep_prob: ArrayLike) -> float | NDArray[np.float64]:
    """:func:`check_keep_prob` for a scalar; elementwise for an array (curves over ``p``).

    Examples
    --------
    >>> check_keep_probs([0.5, 1.0])
    array([0.5, 1. ])
    """
    if np.ndim(keep_prob) == 0:
        return check_keep_prob(keep_prob)  # type: ignore[arg-type]
    arr = np.asarray(keep_prob, dtype=np.float64)
    bad = ~(np.isfinite(arr) & (arr > 0) & (arr <= 1))
    if np.any(bad):
        raise ValueError(
            f"keep_prob must be in (0, 1]; got {arr[bad].ravel()[0]!r} among the values. {_KEEP_HINT}"
        )
    return arr


def check_rate(rate: float) -> float:
    """Return Keras's ``rate`` as a float after checking ``0 <= rate < 1``.

    ``rate`` is the probability of DROPPING a unit, ``1 - keep_prob``; 1 would
    drop every unit and leave nothing to rescale.

    Examples
    --------
    >>> check_rate(0.5)
    0.5
    >>> check_rate(1.0)
    Traceback (most recent call last):
    ...
    ValueError: rate must be in [0, 1); got 1.0. rate is Keras's DROP probability
    (rate = 1 - keep_prob); rate = 1 would drop every unit. For keep probability p pass rate=1 - p.
    """
    value = _real(rate, "rate", "[0, 1)")
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(
            f"rate must be in [0, 1); got {rate!r}. rate is Keras's DROP probability "
            "(rate = 1 - keep_prob); rate = 1 would drop every unit. For keep "
            "probability p pass rate=1 - p."
        )
    return value


def keep_prob_from_rate(rate: float) -> float:
    """Return the keep probability ``p = 1 - rate`` for Keras's drop ``rate``.

    Examples
    --------
    >>> keep_prob_from_rate(0.5)
    0.5
    """
    return 1.0 - check_rate(rate)


def rate_from_keep_prob(keep_prob: float) -> float:
    """Return Keras's drop ``rate = 1 - p`` for the keep probability ``p``.

    Examples
    --------
    >>> rate_from_keep_prob(0.75)
    0.25
    """
    return 1.0 - check_keep_prob(keep_prob)


def check_variant(variant: str) -> Variant:
    """Return ``variant`` after checking it is ``'standard'`` or ``'inverted'``.

    Examples
    --------
    >>> check_variant("keras")
    Traceback (most recent call last):
    ...
    ValueError: variant must be one of ('standard', 'inverted'); got 'keras'. 'standard' is the
    paper's dropout (train m*h, test p*h), 'inverted' is Keras's (train m*h/p, test h).
    """
    if variant not in VARIANTS:
        raise ValueError(
            f"variant must be one of {VARIANTS}; got {variant!r}. 'standard' is the "
            "paper's dropout (train m*h, test p*h), 'inverted' is Keras's "
            "(train m*h/p, test h)."
        )
    return variant  # type: ignore[return-value]


def check_direction(direction: str) -> Direction:
    """Return ``direction`` after checking it is ``'to_standard'`` or ``'to_inverted'``.

    Examples
    --------
    >>> check_direction("to_inverted")
    'to_inverted'
    """
    if direction not in DIRECTIONS:
        raise ValueError(
            "direction must be 'to_standard' (the source net uses Keras's inverted "
            "dropout, the target the paper's) or 'to_inverted' (the reverse); got "
            f"{direction!r}."
        )
    return direction  # type: ignore[return-value]


def direction_to(variant: str) -> Direction:
    """The direction that converts a model TO ``variant``: ``'standard'`` -> ``'to_standard'``.

    Examples
    --------
    >>> direction_to("inverted")
    'to_inverted'
    """
    if variant not in VARIANTS:
        raise ValueError(
            f"to must be 'inverted' (convert to Keras's dropout, m*h/p in training) "
            f"or 'standard' (to the paper's, m*h in training and p*h at test time); "
            f"got {variant!r}."
        )
    return "to_standard" if variant == "standard" else "to_inverted"
