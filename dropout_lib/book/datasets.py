"""Real data the book trains on: scikit-learn's bundled handwritten digits.

``sklearn.datasets.load_digits`` ships inside the scikit-learn wheel (no
download): 1797 grey-scale images of 8 x 8 pixels, each pixel an integer in
``0 .. 16``, with labels ``0 .. 9``. It is the test part of the UCI
"Optical Recognition of Handwritten Digits" data (Alpaydin and Kaynak).

:func:`load_digits` returns the images as float64 rows of 64 numbers in
``[0, 1]`` (pixel / 16); :func:`digits_split` draws a stratified training set
of a given size and keeps every other image as held-out data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sklearn.datasets
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

__all__ = ["N_CLASSES", "N_IMAGES", "N_PIXELS", "DigitsSplit", "load_digits", "digits_split"]

#: Number of images, pixels per image and classes in the bundled data.
N_IMAGES, N_PIXELS, N_CLASSES = 1797, 64, 10
_MAX_PIXEL = 16.0


@dataclass(frozen=True)
class DigitsSplit:
    """A training set and the held-out images, disjoint, as float64 arrays.

    Attributes
    ----------
    x_train, x_test
        Images, shape ``(n, 64)``, values in ``[0, 1]``.
    y_train, y_test
        Integer labels ``0 .. 9``, shape ``(n,)``.
    seed
        The seed that drew the split.
    """

    x_train: NDArray[np.float64]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float64]
    y_test: NDArray[np.int64]
    seed: int

    @property
    def n_train(self) -> int:
        """Number of training images."""
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        """Number of held-out images."""
        return len(self.y_test)


def load_digits() -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """All 1797 digits: ``x`` of shape ``(1797, 64)`` in ``[0, 1]`` (pixel / 16), ``y`` in ``0 .. 9``.

    Division by 16 is exact in floating point (a power of two), so ``x * 16``
    gives back the stored integer pixels.
    """
    data = sklearn.datasets.load_digits()
    x = np.asarray(data.data, dtype=np.float64) / _MAX_PIXEL
    y = np.asarray(data.target, dtype=np.int64)
    if x.shape != (N_IMAGES, N_PIXELS) or y.shape != (N_IMAGES,):
        raise RuntimeError(
            f"scikit-learn's digits have shape {x.shape}, {y.shape}; expected "
            f"({N_IMAGES}, {N_PIXELS}), ({N_IMAGES},). Is this a different scikit-learn?"
        )
    return x, y


def digits_split(n_train: int, seed: int) -> DigitsSplit:
    """Draw ``n_train`` training images, stratified by class; the rest are held out.

    Parameters
    ----------
    n_train
        Training-set size, between 10 (one image per class) and 1787 (leaving
        at least one held-out image per class).
    seed
        Non-negative integer; the same seed gives the same split
        (``sklearn.model_selection.train_test_split`` with ``stratify=y``,
        ``random_state=seed``).

    Returns
    -------
    DigitsSplit
        Disjoint training and held-out sets covering all 1797 images, each
        class in (close to) its overall proportion in both.
    """
    integer = isinstance(n_train, (int, np.integer)) and not isinstance(n_train, bool)
    if not integer or not N_CLASSES <= n_train <= N_IMAGES - N_CLASSES:
        raise ValueError(
            f"n_train must be an integer in [{N_CLASSES}, {N_IMAGES - N_CLASSES}] (at "
            f"least one image per class on each side of the split); got {n_train!r}."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")
    x, y = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, train_size=int(n_train), stratify=y, random_state=int(seed)
    )
    return DigitsSplit(x_train, y_train, x_test, y_test, int(seed))
