"""Tests of dropout_lib.book.datasets: scikit-learn's bundled digits, loaded and split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropout_lib.book import datasets as D


def _sorted_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    rows = np.column_stack([x, y])
    return rows[np.lexsort(rows.T[::-1])]


def test_load_digits_shapes_range_and_exact_pixels():
    x, y = D.load_digits()
    assert x.shape == (D.N_IMAGES, D.N_PIXELS) and x.dtype == np.float64
    assert y.shape == (D.N_IMAGES,) and set(np.unique(y)) == set(range(D.N_CLASSES))
    assert x.min() == 0.0 and x.max() == 1.0
    pixels = x * 16  # division by 16 is exact: the integers come back
    assert np.array_equal(pixels, np.round(pixels))


@settings(max_examples=15, deadline=None)
@given(n_train=st.integers(D.N_CLASSES, D.N_IMAGES - D.N_CLASSES), seed=st.integers(0, 10**6))
def test_split_is_a_stratified_partition(n_train, seed):
    s = D.digits_split(n_train, seed)
    assert s.n_train == n_train and s.n_test == D.N_IMAGES - n_train
    # together they are exactly the data set (as a multiset of labelled images)
    x, y = D.load_digits()
    both = _sorted_rows(np.vstack([s.x_train, s.x_test]), np.concatenate([s.y_train, s.y_test]))
    assert np.array_equal(both, _sorted_rows(x, y))
    # stratified: each class's training count within 1 of its share
    share = np.bincount(y, minlength=10) * n_train / D.N_IMAGES
    assert np.all(np.abs(np.bincount(s.y_train, minlength=10) - share) <= 1.0)


def test_same_seed_same_split_other_seed_other_split():
    a, b, c = D.digits_split(300, 3), D.digits_split(300, 3), D.digits_split(300, 4)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.seed == 3


@pytest.mark.parametrize("bad", [0, 9, D.N_IMAGES - 9, 300.0, True, "300"])
def test_bad_n_train_raises(bad):
    with pytest.raises(ValueError, match="n_train"):
        D.digits_split(bad, 0)


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
def test_bad_seed_raises(bad):
    with pytest.raises(ValueError, match="seed"):
        D.digits_split(300, bad)
