"""Checks on a single dropout unit and on folding ``p`` into a layer (chapter 1).

Notation: ``p = keep_prob`` is the paper's keep probability; Keras's
``rate = 1 - p`` is the drop probability. A layer that consumes dropped units
computes ``z = d(h) @ W + b`` with ``W`` of shape ``(n_in, n_out)``, the
Keras ``Dense`` kernel convention used throughout the book.

Everything here is numpy and exactly reproducible where it says so: the
inputs of :func:`exact_inputs` are built from integers and powers of two
only, so no library function (``pow``, ``exp``, a SIMD kernel) can round them
differently on another machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

__all__ = ["FoldCheck", "exact_inputs", "fold_check", "gamma"]


def exact_inputs(n: int, rng: np.random.Generator, *, max_exponent: int = 10) -> NDArray[np.float64]:
    """Return ``n`` float64 test inputs, the first one 0, identical on every machine.

    The others are ``+-s * 2**e`` with ``s`` a random 53-bit significand in
    ``[1, 2)`` and ``e`` uniform in ``[-max_exponent, max_exponent]``: every
    operation is an integer-to-float conversion below ``2**53`` or a product
    with a power of two, both exact. (``10.0 ** rng.uniform(...)`` is not:
    numpy's ``power`` may use a different kernel, rounding differently, on
    another CPU.)
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}.")
    m = int(n) - 1
    significand = rng.integers(2**52, 2**53, size=m).astype(np.float64) * 2.0**-52
    exponent = rng.integers(-max_exponent, max_exponent + 1, size=m)
    sign = rng.choice(np.array([-1.0, 1.0]), size=m)
    return np.concatenate([[0.0], sign * np.ldexp(significand, exponent)])


def gamma(k: int, dtype: DTypeLike = np.float64) -> float:
    """Higham's ``gamma_k = k u / (1 - k u)``, ``u = eps / 2`` the unit roundoff of ``dtype``.

    A sum of products in which each term meets at most ``k`` roundings is
    within ``gamma_k`` times the sum of the terms' absolute values of the
    exact value, in any order of summation (Higham 2002, sec. 3.1).
    """
    u = float(np.finfo(np.dtype(dtype)).eps) / 2
    if k * u >= 1:
        raise ValueError(f"k u = {k * u} >= 1: no bound.")
    return k * u / (1 - k * u)


@dataclass(frozen=True)
class FoldCheck:
    """How far ``(p h) @ W + b`` and ``h @ (p W) + b`` are apart, against their rounding bound.

    Attributes
    ----------
    gap_ratio
        Largest entrywise ``|outputs scaled - weights scaled| / bound``; the
        proposition holds in floating point when this is at most 1.
    bias_ratio
        Smallest entrywise ``|bias scaled too - outputs scaled| / bound``; the
        wrong fold (bias times ``p`` as well) is caught when this exceeds 1.
    """

    gap_ratio: float
    bias_ratio: float


def fold_check(W: ArrayLike, h: ArrayLike, b: ArrayLike, keep_prob: float) -> FoldCheck:
    """Compare scaling a unit's outputs by ``p`` with scaling its outgoing weights by ``p``.

    ``W`` has shape ``(n_in, n_out)``, ``h`` shape ``(n_in,)``, ``b`` shape
    ``(n_out,)``. Each entry of either side is a sum of ``n_in + 1`` terms, each
    meeting at most ``n_in + 2`` roundings (the factor ``p``, the product, the
    additions), so each side is within ``gamma_{n_in+2}`` times
    ``p |h| @ |W| + |b|`` of the exact value, and the two sides within twice
    that: the ``bound``.
    """
    W, h, b = (np.asarray(a, dtype=np.float64) for a in (W, h, b))
    if W.ndim != 2 or h.shape != (W.shape[0],) or b.shape != (W.shape[1],):
        raise ValueError(f"need W (n_in, n_out), h (n_in,), b (n_out,); got {W.shape}, {h.shape}, {b.shape}.")
    p = float(keep_prob)
    outputs = (p * h) @ W + b  # d_test(h) = p h, then the layer
    weights = h @ (p * W) + b  # the paper's rule: outgoing weights times p
    bias_too = h @ (p * W) + p * b  # the wrong fold
    bound = 2 * gamma(W.shape[0] + 2) * (np.abs(p * h) @ np.abs(W) + np.abs(b))
    return FoldCheck(
        gap_ratio=float((np.abs(outputs - weights) / bound).max()),
        bias_ratio=float((np.abs(bias_too - outputs) / bound).min()),
    )
