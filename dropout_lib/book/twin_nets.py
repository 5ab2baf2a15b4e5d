"""Chapter 3's Keras networks and their mapped twins (the same-function theorem in Keras).

Four small networks, each with biases drawn from ``N(0, 0.5^2)`` so that a
wrongly scaled bias shows, and each with ``keras.layers.Dropout`` (Keras's
inverted dropout; ``rate`` is the DROP probability, ``p = 1 - rate`` the keep
probability):

* ``"dense"``: two hidden ReLU layers, each followed by dropout;
* ``"input"``: a functional model that drops its input, then tanh and a
  linear output;
* ``"conv"``: a convolution, ``SpatialDropout2D``, a second convolution that
  consumes the dropped feature maps, then dropout before the output layer;
* ``"relu_pool"``: a linear convolution, dropout, then a ``ReLU`` layer and
  ``MaxPooling2D`` *between* the dropout and the ``Dense`` layer that
  consumes it: the dropped tensor reaches the kernel only through positively
  homogeneous operations (``f(c v) = c f(v)`` for ``c > 0``), which carry the
  factor ``1/p`` unchanged.

:func:`compare_mapped` builds each network, its twin with the paper's
dropout and the consuming kernels mapped ``W -> W / p``
(:func:`dropout_lib.twins.mapped_twin`, shared masks), and compares them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from dropout_lib import twins
from dropout_lib.conversion import dropout_consumers

__all__ = [
    "NET_RATES",
    "TwinRow",
    "compare_mapped",
    "example_inputs",
    "example_nets",
    "plot_gaps",
    "producer_mapped_twin",
    "tanh_between_net",
]

L = keras.layers

#: Keras rates (drop probabilities 1 - p) of each network's dropout layers.
NET_RATES: dict[str, tuple[float, ...]] = {
    "dense": (0.5, 0.3),
    "input": (0.2,),
    "conv": (0.25, 0.4),
    "relu_pool": (0.3,),
}


def _kw(dtype: str, seed: int) -> dict[str, Any]:
    # He-normal kernels; biases from N(0, 0.5^2), so that a scaled bias shows
    init = keras.initializers
    return dict(
        dtype=dtype,
        kernel_initializer=init.HeNormal(seed),
        bias_initializer=init.RandomNormal(stddev=0.5, seed=seed + 100),
    )


def _dense(dtype: str, rates: tuple[float, ...]) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((20,), dtype=dtype),
            L.Dense(64, "relu", **_kw(dtype, 1)),
            L.Dropout(rates[0], seed=1, dtype=dtype),
            L.Dense(64, "relu", **_kw(dtype, 2)),
            L.Dropout(rates[1], seed=2, dtype=dtype),
            L.Dense(10, **_kw(dtype, 3)),
        ]
    )


def _input(dtype: str, rates: tuple[float, ...]) -> keras.Model:
    x = keras.Input((20,), dtype=dtype)
    h = L.Dropout(rates[0], seed=3, dtype=dtype)(x)
    h = L.Dense(32, "tanh", **_kw(dtype, 4))(h)
    return keras.Model(x, L.Dense(5, **_kw(dtype, 5))(h))


def _conv(dtype: str, rates: tuple[float, ...]) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((10, 10, 3), dtype=dtype),
            L.Conv2D(16, 3, activation="relu", **_kw(dtype, 6)),
            L.SpatialDropout2D(rates[0], seed=4, dtype=dtype),
            L.Conv2D(16, 3, activation="relu", **_kw(dtype, 7)),
            L.Flatten(dtype=dtype),
            L.Dropout(rates[1], seed=5, dtype=dtype),
            L.Dense(10, **_kw(dtype, 8)),
        ]
    )


def _relu_pool(dtype: str, rates: tuple[float, ...]) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((10, 10, 3), dtype=dtype),
            L.Conv2D(8, 3, **_kw(dtype, 9)),  # linear: h may be < 0
            L.Dropout(rates[0], seed=6, dtype=dtype),
            L.ReLU(dtype=dtype),  # relu(m h / p) = relu(m h) / p
            L.MaxPooling2D(2, dtype=dtype),  # max(c v) = c max(v), c > 0
            L.Flatten(dtype=dtype),
            L.Dense(10, **_kw(dtype, 10)),
        ]
    )  # the consumer


_BUILDERS: dict[str, Callable[[str, tuple[float, ...]], keras.Model]] = {
    "dense": _dense,
    "input": _input,
    "conv": _conv,
    "relu_pool": _relu_pool,
}


def example_nets(dtype: str = "float64", rate: float | None = None) -> dict[str, keras.Model]:
    """The four networks in ``dtype``, with :data:`NET_RATES` or one ``rate`` everywhere.

    ``rate`` is Keras's drop probability (``0.5`` gives ``p = 1/2``, for which
    the mapped twins agree bit for bit).
    """
    out = {}
    for name, build in _BUILDERS.items():
        rates = NET_RATES[name] if rate is None else (float(rate),) * len(NET_RATES[name])
        out[name] = build(dtype, rates)
    return out


def example_inputs(seed: int = 3) -> dict[str, NDArray[np.float64]]:
    """Float64 inputs for :func:`example_nets`: 64 vectors or 16 images per network."""
    rng = np.random.default_rng(seed)
    return {
        "dense": rng.normal(size=(64, 20)),
        "input": rng.normal(size=(64, 20)),
        "conv": rng.normal(size=(16, 10, 10, 3)),
        "relu_pool": rng.normal(size=(16, 10, 10, 3)),
    }


@dataclass(frozen=True)
class TwinRow:
    """One network against its mapped twin.

    Attributes
    ----------
    result
        :class:`dropout_lib.twins.TwinComparison`: relative differences in the
        training calls and in ``predict``, and whether all were bit for bit.
    tolerance
        ``4 K eps`` (:func:`dropout_lib.twins.rounding_tolerance`), ``K`` the
        number of layers whose kernel consumes dropped units.
    n_consumers
        ``K``.
    control
        Smallest relative difference of the negative control (biases scaled
        too, ``b -> b / p``), or ``None`` when not run.
    """

    result: twins.TwinComparison
    tolerance: float
    n_consumers: int
    control: float | None


def compare_mapped(
    dtype: str = "float64",
    *,
    rate: float | None = None,
    inputs: Mapping[str, NDArray] | None = None,
    training_calls: int = 3,
    predict: bool = True,
    control: bool = False,
) -> dict[str, TwinRow]:
    """Compare each of :func:`example_nets` with its mapped ``StandardDropout`` twin.

    For each network: ``training_calls`` calls ``model(x, training=True)`` with
    fresh masks shared by the twins, then ``predict`` (or the eager
    ``training=False`` call with ``predict=False``). With ``control=True`` a
    second twin with the biases scaled as well (the wrong map) is compared
    too, eagerly. Nothing is asserted here: the chapter asserts.
    """
    inputs = example_inputs() if inputs is None else inputs
    rows = {}
    for name, inv in example_nets(dtype, rate).items():
        x = np.asarray(inputs[name]).astype(dtype)
        std = twins.mapped_twin(inv, "standard")
        result = twins.compare_twins(std, inv, x, training_calls=training_calls, predict=predict)
        k = len(dropout_consumers(inv))
        gap = None
        if control:
            bad = twins.mapped_twin(inv, "standard")
            twins.scale_consumer_biases(bad, "to_standard")  # wrong map: b / p too
            c = twins.compare_twins(bad, inv, x, predict=False)
            gap = min(c.training + (c.inference,))
        rows[name] = TwinRow(result, twins.rounding_tolerance(k, dtype), k, gap)
    return rows


def tanh_between_net(dtype: str = "float64") -> keras.Model:
    """``Dense -> Dropout -> tanh -> Dense``: the dropped tensor reaches the kernel through tanh.

    ``tanh(c v) != c tanh(v)``, so no rescaling of the *consuming* kernel carries
    the factor ``1/p`` through. A producer-side map does: dividing the first
    ``Dense``'s kernel and bias by ``p`` makes the dropped tensors themselves
    equal, whatever follows (chapter 7's ``prop-absorb``, case 2; chapter 8's
    ``thm-absorb-either-side``). :func:`dropout_lib.twins.mapped_twin` builds
    consumer-side maps only, so it must refuse this network.
    """
    return keras.Sequential(
        [
            keras.Input((20,), dtype=dtype),
            L.Dense(16, **_kw(dtype, 11)),
            L.Dropout(0.3, seed=7, dtype=dtype),
            L.Activation("tanh", dtype=dtype),
            L.Dense(4, **_kw(dtype, 12)),
        ]
    )


def producer_mapped_twin(model: keras.Model) -> keras.Model:
    """The standard twin of :func:`tanh_between_net` by the producer-side map.

    :func:`dropout_lib.twins.twin` swaps the ``Dropout`` (Keras's, ``rate`` the
    drop probability) for ``StandardDropout`` with the same masks; the first
    ``Dense``'s kernel ``A`` and bias ``c`` become ``A / p`` and ``c / p``
    (``p = 1 - rate``), every other weight is copied. The dropped tensors are
    then ``m * h / p`` in training and ``h`` at inference in both nets.
    """
    std = twins.twin(model, "standard")
    p = 1.0 - float(model.layers[1].rate)
    kernel, bias, *rest = model.get_weights()
    std.set_weights([kernel / p, bias / p, *rest])
    return std


def plot_gaps(groups: Mapping[str, list[float]], eps: Mapping[str, float]):
    """One row of dots per group of relative differences, log scale, with ``eps`` lines.

    ``groups`` maps a label to relative differences (labels starting with
    ``"control"`` are drawn in the control colour); ``eps`` maps a label such as
    ``"64"`` to a rounding unit, drawn as a dashed vertical line.
    Returns ``(fig, ax)``.
    """
    from dropout_lib.book.plotting import COLORS, figure

    fig, ax = figure(height=2.6)
    jitter = np.random.default_rng(0)
    for row, (label, values) in enumerate(groups.items()):
        color = COLORS["control" if label.startswith("control") else "mapped"]
        y = row + 0.15 * jitter.uniform(-1, 1, len(values))
        ax.scatter(values, y, s=8, alpha=0.5, color=color)
    for bits, e in eps.items():
        ax.axvline(e, color=COLORS["theory"], lw=0.8, ls="--")
        ax.text(e * 1.3, len(groups) - 0.6, rf"$\varepsilon_{{{bits}}}$")
    ax.set(
        xscale="log",
        yticks=range(len(groups)),
        yticklabels=list(groups),
        ylim=(len(groups) - 0.3, -0.5),
        xlabel=r"relative difference $\|y^{std} - y^{inv}\|\,/\,\|y^{inv}\|$",
    )
    return fig, ax
