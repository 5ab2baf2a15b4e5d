"""convert_model's maps beyond a consuming kernel (issue 19, item 1).

``keep_prob`` is ``p``; Keras layers take ``rate = 1 - p``.

* Dropout -> BatchNormalization: chapter 10's map, ``eps -> t**2 eps``, moving
  mean ``x t``, moving variance ``x t**2`` (and their initialisers), no change
  of optimizer; ``t = p`` to standard, ``1/p`` to inverted.
* Dropout -> LayerNormalization (and GroupNormalization): ``eps -> t**2 eps``.
* Embedding -> Dropout -> LSTM: the LSTM's input ``kernel`` is a consuming
  kernel (``W -> W / p`` to standard, its optimizer mapped); the recurrent
  kernel and the bias are unchanged.

Tolerances. The twins evaluate the same real-number expressions with ``p``
rounded at other places; as in test_convert_model, each of ``K`` layers that
read a rescaled tensor adds ``4 eps`` per step and passes earlier differences
on with a gain near 1: ``steps * 4 K eps * 10`` (the factor 10 bounds the
gain). ``K`` counts every layer after the dropout (an upper bound). Controls:
the normalisation with its epsilon and statistics unmapped (the twin with the
same weights), the LSTM with the source's learning rate on its input kernel.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dropout_lib as dl  # noqa: E402
from dropout_lib import twins  # noqa: E402
from dropout_lib.mapping import clone_optimizer  # noqa: E402

L = keras.layers
EPS = np.finfo(np.float64).eps
STEPS, BATCH = 4, 8
RNG = np.random.default_rng(8)
X = RNG.normal(size=(STEPS * BATCH, 4))
TOKENS = RNG.integers(0, 10, size=(STEPS * BATCH, 5))
Y = RNG.normal(size=(STEPS * BATCH, 3))


@pytest.fixture
def f64():
    with twins.keras_float64():
        yield


def _dropout(variant):
    cls = L.Dropout if variant == "inverted" else dl.StandardDropout
    return cls(0.2, seed=1, name="drop")


def _init(seed):
    return keras.initializers.RandomNormal(stddev=0.5, seed=seed)


def norm_net(variant, norm):
    """Dense(6, relu) -> dropout(rate 0.2) -> norm -> Dense(3): the norm reads the dropped tensor."""
    # BatchNorm with momentum 0.5: its moving statistics move within the few steps
    layer = (
        L.BatchNormalization(momentum=0.5, name="norm")
        if norm == "batch"
        else L.LayerNormalization(name="norm")
    )
    return keras.Sequential(
        [
            keras.Input((4,)),
            L.Dense(6, "relu", kernel_initializer=_init(1), bias_initializer=_init(2)),
            _dropout(variant),
            layer,
            L.Dense(3, kernel_initializer=_init(3)),
        ]
    )


def lstm_net(variant):
    """Embedding -> dropout(rate 0.2) -> LSTM(3) -> Dense(3)."""
    x = keras.Input((5,), dtype="int32")
    h = _dropout(variant)(L.Embedding(10, 4, embeddings_initializer=_init(4))(x))
    h = L.LSTM(3, kernel_initializer=_init(5), recurrent_initializer=_init(6), name="lstm")(h)
    return keras.Model(x, L.Dense(3, kernel_initializer=_init(7))(h))


def _fit(model, optimizer, x):
    model.compile(optimizer=optimizer, loss="mse", run_eagerly=True)  # no tracing: tiny models
    model.fit(x, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)


def _gap(source, target, converted):
    """Largest relative weight gap, the target's mapped variables divided by their factors."""
    factor = {
        id(v): f for c in converted.consumers for v, f in zip(c.variables, c.scales(converted.direction))
    }
    return max(
        np.max(np.abs(np.asarray(v.numpy()) / factor.get(id(v), 1.0) - w.numpy()))
        / max(np.max(np.abs(w.numpy())), 1e-300)
        for w, v in zip(source.weights, target.weights)
    )


def _run(make, x, to, control_optimizer):
    source_variant = "inverted" if to == "standard" else "standard"
    source = make(source_variant)
    sgd = keras.optimizers.SGD(0.1, momentum=0.5)
    converted = dl.convert_model(source, to=to, optimizer=sgd)
    control, control_opt = control_optimizer(source, to, sgd, converted)
    _fit(source, clone_optimizer(sgd), x)
    _fit(converted.model, converted.optimizer, x)
    _fit(control, control_opt, x)
    predict = twins.relative_difference(
        np.asarray(converted.model(x, training=False)), np.asarray(source(x, training=False))
    )
    return converted, _gap(source, converted.model, converted), _gap(source, control, converted), predict


def _unmapped_twin(source, to, sgd, converted):
    """Same weights, the normalisation's epsilon and statistics as the source's: no map."""
    return twins.twin(source, to), clone_optimizer(sgd)


@pytest.mark.parametrize(
    "norm,to", [("batch", "standard"), ("batch", "inverted"), ("layer", "inverted")]
)  # LayerNorm's map is BatchNorm's epsilon part: one direction
def test_dropout_then_normalisation_trains_in_step(norm, to, f64):
    converted, gap, control, predict = _run(lambda v: norm_net(v, norm), X, to, _unmapped_twin)
    kind = "batch normalization" if norm == "batch" else "normalization epsilon"
    assert converted.maps["drop"][0][0] == "norm" and converted.maps["drop"][0][1].startswith(kind)
    t = 0.8 if to == "standard" else 1 / 0.8  # the norm reads t times the source input
    assert float(converted.model.get_layer("norm").epsilon) == pytest.approx(1e-3 * t**2, rel=1e-15)
    tol = STEPS * 4 * 2 * EPS * 10  # K = 2: the norm and the Dense after it
    assert gap <= tol and predict <= tol, (gap, predict)
    assert control > 1e-4, control


def _unmapped_optimizer(source, to, sgd, converted):
    """The mapped model with the source's SGD on every variable (its input kernel's lr unmapped)."""
    return twins.mapped_twin(source, to), clone_optimizer(sgd)


@pytest.mark.parametrize("to", ["standard"])  # the direction of a Keras text model
def test_embedding_dropout_lstm_trains_in_step(to, f64):
    converted, gap, control, predict = _run(lstm_net, TOKENS, to, _unmapped_optimizer)
    assert converted.maps == {"drop": (("lstm", "recurrent input kernel"),)}
    lstm = converted.model.get_layer("lstm")
    assert converted.consumers[0].variables == (lstm.cell.kernel,)  # not the recurrent kernel
    tol = STEPS * 4 * 2 * EPS * 10  # K = 2: the LSTM and the Dense after it
    assert gap <= tol and predict <= tol, (gap, predict)
    assert control > 1e-4, control


def test_bidirectional_lstm_with_an_l2_penalty_maps_both_input_kernels(f64):
    """IMDB-style: Embedding -> Dropout -> Bidirectional(LSTM(kernel_regularizer=L2)); via dl.verify."""
    x = keras.Input((5,), dtype="int32")
    h = _dropout("inverted")(L.Embedding(10, 4, embeddings_initializer=_init(4))(x))
    lstm = L.LSTM(3, kernel_regularizer=keras.regularizers.L2(0.01), kernel_initializer=_init(5))
    source = keras.Model(x, L.Dense(3, kernel_initializer=_init(7))(L.Bidirectional(lstm, name="bi")(h)))
    converted = dl.convert_model(source, to="standard")
    bi = converted.model.get_layer("bi")
    assert converted.maps == {"drop": (("bi", "recurrent input kernel"),)}
    assert converted.consumers[0].variables == (bi.forward_layer.cell.kernel, bi.backward_layer.cell.kernel)
    sgd = keras.optimizers.SGD(0.1)
    result = dl.verify(source, converted, TOKENS, Y, steps=STEPS, optimizer=sgd, run_eagerly=True)
    copied = twins.mapped_twin(source, "standard", hyperparameters="copied")  # L2 not mapped
    control = dl.verify(
        source,
        twins.ConvertedModel(copied, None, "to_standard", converted.consumers),
        TOKENS,
        Y,
        steps=STEPS,
        optimizer=sgd,
        run_eagerly=True,
    )
    assert result.exact, result
    assert max(control.gaps) > 1e-4, control


@pytest.mark.parametrize("to", ["standard", "inverted"])
def test_batch_renormalization_after_a_dropout_is_refused_naming_both(to):
    """renorm=True keeps renorm_mean/renorm_stddev/moving_stddev, which the map leaves alone.

    Unrefused (before this test), one SGD step put the converted model's
    predictions 0.2-0.5 (relative) from the source's: refusing is the promise.
    """
    source_variant = "inverted" if to == "standard" else "standard"
    model = keras.Sequential(
        [
            keras.Input((4,)),
            L.Dense(6, "relu"),
            _dropout(source_variant),
            L.BatchNormalization(renorm=True, name="renorm_bn"),
            L.Dense(3),
        ]
    )
    with pytest.raises(dl.NotConvertibleError, match=r"'renorm_bn'.*'drop'.*renorm=True.*renorm=False"):
        dl.convert_model(model, to=to)
