"""numpy reference implementations of the two dropout variants.

Notation: ``keep_prob`` is the paper's ``p``, the probability that a unit is
kept; Keras's ``rate`` is ``1 - p``. Functions here take ``keep_prob``; use
:func:`keep_prob_from_rate` at a Keras boundary.

=============  ==========================  =========================
variant        training (mask ``m``)       inference
=============  ==========================  =========================
standard       ``m * x``                   ``p * x``
inverted       ``m * x / p``               ``x``
=============  ==========================  =========================

with ``m_i ~ Bernoulli(p)`` independently. The standard variant is the one of
Srivastava et al. (2014); the inverted variant is what Keras, TensorFlow,
PyTorch and Flax implement.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

Variant = Literal["standard", "inverted"]
VARIANTS: tuple[Variant, ...] = ("standard", "inverted")

__all__ = [
    "VARIANTS",
    "check_variant",
    "check_keep_prob",
    "check_mask",
    "keep_prob_from_rate",
    "rate_from_keep_prob",
    "sample_mask",
    "standard_dropout",
    "inverted_dropout",
    "dropout",
]


def check_variant(variant: str) -> Variant:
    """Return ``variant`` after checking it is ``"standard"`` or ``"inverted"``.

    Raises
    ------
    ValueError
        For any other value.
    """
    if variant not in VARIANTS:
        raise ValueError(
            f"variant must be one of {VARIANTS}; got {variant!r}. 'standard' is the "
            "paper's dropout (train m*h, test p*h), 'inverted' is Keras's "
            "(train m*h/p, test h)."
        )
    return variant  # type: ignore[return-value]


def check_keep_prob(keep_prob: float) -> float:
    """Return ``keep_prob`` as a float after checking ``0 < keep_prob <= 1``.

    Raises
    ------
    ValueError
        If ``keep_prob`` is not a finite number in ``(0, 1]``.
    """
    if isinstance(keep_prob, (bool, str, bytes)) or not np.isscalar(keep_prob):
        raise TypeError(
            f"keep_prob must be a real number in (0, 1]; got {keep_prob!r} "
            f"of type {type(keep_prob).__name__}."
        )
    try:
        value = float(keep_prob)
    except (TypeError, ValueError):
        raise TypeError(
            f"keep_prob must be a real number in (0, 1]; got {keep_prob!r} "
            f"of type {type(keep_prob).__name__}."
        ) from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise ValueError(
            f"keep_prob must be in (0, 1]; got {keep_prob!r}. keep_prob is the "
            "probability of KEEPING a unit; Keras's rate (the drop probability) "
            "is 1 - keep_prob, see keep_prob_from_rate()."
        )
    return value


def _check_rate(rate: float) -> float:
    if isinstance(rate, (bool, str, bytes)) or not np.isscalar(rate):
        raise TypeError(
            f"rate must be a real number in [0, 1); got {rate!r} "
            f"of type {type(rate).__name__}."
        )
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise TypeError(
            f"rate must be a real number in [0, 1); got {rate!r} "
            f"of type {type(rate).__name__}."
        ) from None
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"rate must be in [0, 1); got {rate!r}. rate is Keras's DROP "
            "probability (rate = 1 - keep_prob); rate = 1 would drop every unit."
        )
    return value


def keep_prob_from_rate(rate: float) -> float:
    """Return the keep probability ``p = 1 - rate`` for Keras's drop ``rate``."""
    return 1.0 - _check_rate(rate)


def rate_from_keep_prob(keep_prob: float) -> float:
    """Return Keras's drop ``rate = 1 - p`` for the keep probability ``p``."""
    return 1.0 - check_keep_prob(keep_prob)


def check_mask(mask: ArrayLike, shape: tuple[int, ...]) -> NDArray[np.float64]:
    """Return ``mask`` as a float64 array after checking it is a valid mask.

    A valid mask holds only 0 and 1 and broadcasts to ``shape`` without
    changing it (so a mask of shape ``(1, n)`` shared across a batch, like
    Keras's ``noise_shape``, is valid for inputs of shape ``(batch, n)``).

    Raises
    ------
    ValueError
        If the mask does not broadcast to ``shape`` or holds a value other
        than 0 or 1.
    """
    m = np.asarray(mask, dtype=np.float64)
    try:
        broadcast = np.broadcast_shapes(m.shape, shape)
    except ValueError:
        broadcast = None
    if broadcast != tuple(shape):
        raise ValueError(
            f"mask of shape {m.shape} does not broadcast to the input's shape "
            f"{tuple(shape)}; pass a mask of shape {tuple(shape)}, or one whose "
            "dimensions are 1 where the mask is shared."
        )
    if not np.all((m == 0.0) | (m == 1.0)):
        bad = m[(m != 0.0) & (m != 1.0)].ravel()[0]
        raise ValueError(
            f"mask must be binary (0 = dropped, 1 = kept); it holds {bad!r}. "
            "Pass the Bernoulli draws themselves, not a rescaled mask "
            "(inverted dropout divides by keep_prob itself)."
        )
    return m


def sample_mask(
    shape: tuple[int, ...],
    keep_prob: float,
    rng: np.random.Generator | int | None = None,
) -> NDArray[np.float64]:
    """Draw a mask ``m`` with ``m_i ~ Bernoulli(keep_prob)`` independently.

    Parameters
    ----------
    shape
        Shape of the mask.
    keep_prob
        ``p``, the probability that an entry is 1 (kept).
    rng
        A ``numpy.random.Generator``, or an integer seed for a new one.

    Returns
    -------
    ndarray of float64 holding 0.0 and 1.0.
    """
    p = check_keep_prob(keep_prob)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return (gen.random(shape) < p).astype(np.float64)


def _apply(
    variant: Variant,
    x: ArrayLike,
    keep_prob: float,
    training: bool,
    mask: ArrayLike | None,
    rng: np.random.Generator | int | None,
) -> NDArray[np.floating]:
    p = check_keep_prob(keep_prob)
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not training:
        if mask is not None:
            raise ValueError(
                "a mask was given with training=False; inference uses no mask. "
                "Pass training=True to apply the mask."
            )
        return arr * arr.dtype.type(p) if variant == "standard" else arr.copy()
    m = sample_mask(arr.shape, p, rng) if mask is None else check_mask(mask, arr.shape)
    m = m.astype(arr.dtype)
    if variant == "standard":
        return m * arr
    return m * arr / arr.dtype.type(p)


def standard_dropout(
    x: ArrayLike,
    keep_prob: float,
    *,
    training: bool,
    mask: ArrayLike | None = None,
    rng: np.random.Generator | int | None = None,
) -> NDArray[np.floating]:
    """The paper's dropout: ``m * x`` in training, ``keep_prob * x`` at inference.

    Parameters
    ----------
    x
        Input array. Floating arrays keep their dtype; any other input is
        converted to float64.
    keep_prob
        ``p``, the probability of keeping a unit (Keras's ``rate`` is ``1 - p``).
    training
        ``True`` for the training-time map, ``False`` for inference.
    mask
        Binary mask broadcastable to ``x.shape``. If omitted in training, one
        is drawn with :func:`sample_mask` from ``rng``.
    rng
        Generator or integer seed used only when ``mask`` is omitted.
    """
    return _apply("standard", x, keep_prob, training, mask, rng)


def inverted_dropout(
    x: ArrayLike,
    keep_prob: float,
    *,
    training: bool,
    mask: ArrayLike | None = None,
    rng: np.random.Generator | int | None = None,
) -> NDArray[np.floating]:
    """Inverted dropout: ``m * x / keep_prob`` in training, ``x`` at inference.

    Same parameters as :func:`standard_dropout`.
    """
    return _apply("inverted", x, keep_prob, training, mask, rng)


def dropout(
    variant: Variant,
    x: ArrayLike,
    keep_prob: float,
    *,
    training: bool,
    mask: ArrayLike | None = None,
    rng: np.random.Generator | int | None = None,
) -> NDArray[np.floating]:
    """Dispatch to :func:`standard_dropout` or :func:`inverted_dropout` by name."""
    return _apply(check_variant(variant), x, keep_prob, training, mask, rng)
