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

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dropout_lib.validation import (
    VARIANTS,
    Variant,
    check_keep_prob,
    check_variant,
    keep_prob_from_rate,
    rate_from_keep_prob,
)

__all__ = [
    "VARIANTS",
    "check_variant",
    "check_keep_prob",
    "check_mask",
    "keep_prob_from_rate",
    "rate_from_keep_prob",
    "sample_mask",
    "apply_dropout",
    "standard_dropout",
    "inverted_dropout",
    "dropout",
    "relative_difference",
]


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

    Examples
    --------
    >>> check_mask([[1, 0]], (3, 2))          # shared across the batch, like a noise_shape
    array([[1., 0.]])
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

    Examples
    --------
    >>> sample_mask((2, 3), 0.5, rng=0)
    array([[0., 1., 1.],
           [1., 0., 0.]])
    """
    p = check_keep_prob(keep_prob)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return (gen.random(shape) < p).astype(np.float64)


def apply_dropout(
    variant: Variant, x: NDArray, keep_prob: float, mask: NDArray | None, *, training: bool
) -> NDArray:
    """The dropout operation itself, on already checked arguments (the one implementation).

    ========  ===================================  ===============
    variant   training (binary mask ``m``)          inference
    ========  ===================================  ===============
    standard  ``where(m, x, 0)``                    ``p * x``
    inverted  ``where(m, x / p, 0)``                ``x``
    ========  ===================================  ===============

    ``where`` rather than ``m * x``, as ``keras.layers.Dropout`` does: a
    dropped ``nan`` or ``inf`` gives 0 (``0 * nan`` would be ``nan``) and a
    dropped negative gives ``+0.0``; kept entries are ``x`` (or ``x / p``),
    non-finite ones included. ``keep_prob = 1`` without a mask is the
    identity (a given mask is applied even then). Callers
    check ``variant``, ``keep_prob`` and ``mask`` (:func:`dropout` does);
    the result has the dtype of ``x``. Linear in ``x``: in training the
    backward map of the gradient is the same operation.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([2.0, np.nan, -1.0])
    >>> apply_dropout("inverted", x, 0.5, np.array([1.0, 0.0, 0.0]), training=True)
    array([4., 0., 0.])
    >>> apply_dropout("standard", x, 0.5, None, training=False)
    array([ 1. ,  nan, -0.5])
    """
    if keep_prob == 1.0 and (mask is None or not training):
        return x
    arr = np.asarray(x)
    p = arr.dtype.type(keep_prob) if np.issubdtype(arr.dtype, np.floating) else keep_prob
    if not training:
        return arr * p if variant == "standard" else arr
    kept = np.asarray(mask) != 0
    values = arr if variant == "standard" else arr / p
    return np.where(kept, values, np.zeros((), dtype=values.dtype))


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
    return np.array(apply_dropout(variant, arr, p, m, training=True), copy=True)


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

    Examples
    --------
    >>> standard_dropout([2.0, 4.0], 0.5, training=True, mask=[1, 0])
    array([2., 0.])
    >>> standard_dropout([2.0, 4.0], 0.5, training=False)
    array([1., 2.])
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

    Examples
    --------
    >>> inverted_dropout([2.0, 4.0], 0.5, training=True, mask=[1, 0])
    array([4., 0.])
    >>> inverted_dropout([2.0, 4.0], 0.5, training=False)
    array([2., 4.])
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
    """Dispatch to :func:`standard_dropout` or :func:`inverted_dropout` by name.

    Examples
    --------
    >>> dropout("standard", [2.0, 4.0], 0.5, training=False)
    array([1., 2.])
    """
    return _apply(check_variant(variant), x, keep_prob, training, mask, rng)


def relative_difference(a: ArrayLike, b: ArrayLike) -> float:
    """Return ``||a - b|| / ||b||`` (Frobenius norms, in float64); the one relative-gap helper.

    The absolute difference ``||a - b||`` where ``||b|| = 0`` (so two zero
    arrays are 0 apart). Every comparison of two runs, outputs or weight sets
    in the package uses this measure.

    Raises
    ------
    ValueError
        If the shapes differ.

    Examples
    --------
    >>> relative_difference([3.0, 4.0], [3.0, 4.0])
    0.0
    >>> relative_difference([3.0, 4.0 + 5e-16], [3.0, 4.0])
    1.7763568394002506e-16
    """
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    if a64.shape != b64.shape:
        raise ValueError(f"shapes differ: {a64.shape} vs {b64.shape}.")
    diff = float(np.linalg.norm(a64 - b64))
    ref = float(np.linalg.norm(b64))
    return diff / ref if ref > 0.0 else diff
