"""Tests of dropout_lib.book.twin_nets (chapter 3's Keras networks and twins)."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from dropout_lib import twins  # noqa: E402
from dropout_lib.book import twin_nets  # noqa: E402
from dropout_lib.conversion import NotConvertibleError  # noqa: E402


def _small_inputs():
    rng = np.random.default_rng(0)
    return {
        "dense": rng.normal(size=(4, 20)),
        "input": rng.normal(size=(4, 20)),
        "conv": rng.normal(size=(2, 10, 10, 3)),
        "relu_pool": rng.normal(size=(2, 10, 10, 3)),
    }


def test_example_nets_have_the_stated_rates():
    nets = twin_nets.example_nets("float64")
    assert set(nets) == set(twin_nets.NET_RATES)
    for name, model in nets.items():
        rates = tuple(float(layer.rate) for layer in twins.dropout_layers(model))
        assert rates == twin_nets.NET_RATES[name]
    for model in twin_nets.example_nets("float64", rate=0.5).values():
        assert all(float(layer.rate) == 0.5 for layer in twins.dropout_layers(model))


def test_relu_pool_net_has_relu_and_pooling_between_dropout_and_consumer():
    model = twin_nets.example_nets("float64")["relu_pool"]
    kinds = [type(layer).__name__ for layer in model.layers]
    i = kinds.index("Dropout")
    assert kinds[i + 1 : i + 3] == ["ReLU", "MaxPooling2D"]
    assert model.layers[0].activation.__name__ == "linear"  # h can be negative


def test_compare_mapped_float64_within_tolerance_and_control_caught():
    rows = twin_nets.compare_mapped(
        "float64", inputs=_small_inputs(), training_calls=1, predict=False, control=True
    )
    for row in rows.values():
        assert row.result.worst < row.tolerance
        assert row.control > 1e-3


def test_compare_mapped_half_is_bitwise():
    rows = twin_nets.compare_mapped(
        "float64", rate=0.5, inputs=_small_inputs(), training_calls=1, predict=False
    )
    assert all(row.result.bitwise for row in rows.values())


def test_tanh_between_is_refused():
    with pytest.raises(NotConvertibleError):
        twins.mapped_twin(twin_nets.tanh_between_net(), "standard")


def test_plot_gaps_returns_axes():
    fig, ax = twin_nets.plot_gaps({"a": [1e-16, 2e-16], "control": [0.1]}, {"64": 2.0**-52})
    assert len(ax.get_yticklabels()) == 2
