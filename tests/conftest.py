"""Shared pytest fixtures and the hypothesis profiles."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Every run (`make test`, CI) explores the same examples: derandomized, no example
# database, so a red run is reproducible on any machine. HYPOTHESIS_PROFILE=dev
# lets hypothesis vary its examples (and keep a database) while developing.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module")
def keras_float64():
    """Run a test module with float64 layers AND optimizer variables.

    The library's one float64 context, :func:`dropout_lib.twins.keras_float64`
    (floatx and the global dtype policy; both restored afterwards).
    """
    from dropout_lib.twins import keras_float64 as context

    with context():
        yield
