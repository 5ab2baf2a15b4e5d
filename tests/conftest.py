"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def keras_float64():
    """Run a test module with float64 layers AND optimizer variables.

    The learning rate lives in a variable of dtype ``floatx``, and a layer's
    dtype comes from the global policy, so exact float64 comparisons need both
    (see TOOLCHAIN.md). The previous settings are restored afterwards.
    """
    import keras

    old_floatx, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(old_floatx)
    keras.config.set_dtype_policy(old_policy)
