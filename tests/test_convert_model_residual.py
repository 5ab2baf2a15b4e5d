"""Residual dropout, x + Dropout(F(x)): the producer-side map in convert_model (issue 19, item 1).

``keep_prob`` is ``p``; Keras layers take ``rate = 1 - p``.

No consumer-side map exists where a dropped branch meets an undropped one
(the merge would need two factors). Chapter 8's producer-side map scales F's
last layer instead, kernel and bias (or a normalisation's gamma and beta) by
``s`` (``1/p`` to standard), so ``F'(x) = s F(x)`` and the dropout's output is
the same tensor in both variants; F's last layer then has gradients ``1/s``
times the source's and its optimizer maps like a consuming kernel's.

Tolerances: :func:`dropout_lib.twins.verify`'s rule, every step's weight gap
within ``10 * 4 K`` times a one-ulp control's (the package's rounding budget,
``K`` absorbing layers); the forward check of EfficientNet likewise, against
the same net with every weight moved by one ulp (its training-mode
BatchNorms over a batch of 4 amplify rounding far beyond a gain of 1). The
control: the unmapped twin, apart by ``O(1 - p)`` (on EfficientNet, measured
once: 0.04-0.2 in training, 0.006 at inference; not rerun, to save time).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dropout_lib as dl  # noqa: E402
from dropout_lib import twins  # noqa: E402

L = keras.layers
RNG = np.random.default_rng(4)
X, Y = RNG.normal(size=(16, 4)), RNG.normal(size=(16, 2))


def residual_net(variant, last):
    """x + Dropout(F(x)), per-sample (noise_shape (None, 1), stochastic depth); F ends in ``last``."""
    cls = L.Dropout if variant == "inverted" else dl.StandardDropout
    init = keras.initializers.RandomNormal(stddev=0.5, seed=1)
    x = keras.Input((4,))
    h = L.Dense(4, "relu", kernel_initializer=init, bias_initializer=init)(x)
    if last == "dense":
        h = L.Dense(4, kernel_initializer=init, bias_initializer=init, name="f_out")(h)
    else:
        h = L.BatchNormalization(momentum=0.5, gamma_initializer=init, name="f_out")(h)
    branch = cls(0.25, noise_shape=(None, 1), seed=3, name="drop_path")(h)
    return keras.Model(x, L.Dense(2, kernel_initializer=init)(L.Add()([x, branch])))


@pytest.mark.parametrize("last,to", [("dense", "standard"), ("dense", "inverted"), ("batchnorm", "inverted")])
def test_residual_dropout_maps_on_the_producer_side(last, to):
    source_variant = "inverted" if to == "standard" else "standard"
    with twins.keras_float64():
        source = residual_net(source_variant, last)
        converted = dl.convert_model(source, to=to)
        sgd = keras.optimizers.SGD(0.1, momentum=0.9)
        result = dl.verify(source, converted, X, Y, steps=4, optimizer=sgd, run_eagerly=True)
        unmapped = twins.ConvertedModel(
            twins.twin(source, to), None, converted.direction, converted.consumers
        )
        control = dl.verify(source, unmapped, X, Y, steps=1, optimizer=sgd, run_eagerly=True)
    assert converted.maps == {"drop_path": (("f_out", "producer"),)}
    assert result.exact, result
    assert max(control.gaps) > 1e-2, control


def test_efficientnet_stochastic_depth_converts():
    """EfficientNetB0 (weights=None, 32x32): stochastic depth by Dropout(noise_shape), 9 producer maps."""
    with twins.keras_float64():
        net = keras.applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=3)
        converted = dl.convert_model(net, to="standard")
        x = np.random.default_rng(0).normal(size=(4, 32, 32, 3))
        ulp = twins._copy_model(net)
        for v in ulp.weights:
            value = np.asarray(v.numpy())
            if value.dtype.kind == "f":
                v.assign(np.nextafter(value, np.inf))
        twins.share_masks(net, converted.model)  # the next training calls draw the same masks
        twins.share_masks(net, ulp)
        y = np.asarray(net(x, training=True))
        gap = twins.relative_difference(np.asarray(converted.model(x, training=True)), y)
        control = twins.relative_difference(np.asarray(ulp(x, training=True)), y)
    producers = [c for c in converted.consumers if c.kind == "producer"]
    assert len(producers) == 9 and converted.maps["block2b_drop"] == (("block2b_project_bn", "producer"),)
    assert converted.maps["top_dropout"] == (("predictions", "kernel"),)
    k = len(converted.consumers)
    assert gap <= 10 * twins.ULPS_PER_LAYER * k * max(control, np.finfo(np.float64).eps), (gap, control)


def attention_block():
    """A Transformer block's attention: x + MHA(x, x) (dropout 0.2 on the probabilities), LayerNorm."""
    init = keras.initializers.RandomNormal(stddev=0.5, seed=5)
    x = keras.Input((5, 8))
    attention = L.MultiHeadAttention(2, 4, dropout=0.2, seed=3, kernel_initializer=init, name="mha")(x, x)
    h = L.LayerNormalization()(L.Add()([x, attention]))
    return keras.Model(x, L.Dense(2, kernel_initializer=init)(L.GlobalAveragePooling1D()(h)))


def test_attention_dropout_maps_in_the_output_projection_both_ways():
    """MultiHeadAttention(dropout=0.2) -> the paper's dropout inside, W_o / p; and back."""
    x, y = RNG.normal(size=(12, 5, 8)), RNG.normal(size=(12, 2))
    with twins.keras_float64():
        source = attention_block()
        standard = dl.convert_model(source, to="standard")
        back = dl.convert_model(standard.model, to="inverted")
        sgd = keras.optimizers.SGD(0.1, momentum=0.9)
        forward = dl.verify(source, standard, x, y, steps=3, optimizer=sgd, run_eagerly=True)
        backward = dl.verify(standard.model, back, x, y, steps=3, optimizer=sgd, run_eagerly=True)
        unmapped = twins.ConvertedModel(
            twins.twin(source, "standard"), None, "to_standard", standard.consumers
        )
        control = dl.verify(source, unmapped, x, y, steps=1, optimizer=sgd, run_eagerly=True)
    assert type(standard.model.get_layer("mha")) is dl.layers.StandardMultiHeadAttention
    assert type(back.model.get_layer("mha")) is L.MultiHeadAttention
    assert standard.maps == {"mha/attention_dropout": (("mha", "attention output projection"),)}
    assert forward.exact and backward.exact, (forward, backward)
    assert max(control.gaps) > 1e-2, control


def _activity_net(regularizer):
    """x + Dropout(Dense(relu, activity_regularizer=...)(x)) -> Dense: F's output is penalised."""
    init = keras.initializers.RandomNormal(stddev=0.5, seed=1)
    x = keras.Input((4,))
    f = L.Dense(4, "relu", kernel_initializer=init, activity_regularizer=regularizer, name="f")(x)
    branch = L.Dropout(0.4, seed=3, name="drop")(f)
    return keras.Model(x, L.Dense(2, kernel_initializer=init)(L.Add()([x, branch])))


def _train_in_step(source, converted, sgd, steps=3):
    """Prediction gap after ``steps`` eager SGD steps of 4 rows (source: its own sgd clone)."""
    source.compile(optimizer=twins.clone_optimizer(sgd), loss="mse", run_eagerly=True)
    converted.model.compile(optimizer=converted.optimizer, loss="mse", run_eagerly=True)
    for i in range(steps):
        for model in (source, converted.model):
            model.train_on_batch(X[4 * i : 4 * i + 4], Y[4 * i : 4 * i + 4])
    return twins.relative_difference(
        np.asarray(converted.model(X, training=False)), np.asarray(source(X, training=False))
    )


@pytest.mark.parametrize("kind", ["l2", "l1l2"])
def test_a_residual_producers_activity_regularizer_is_mapped(kind):
    """The producer's output is s F(x): L2 lambda / s**2, L1 lambda / s (s = 1/p to standard).

    Control: the same conversion with the penalty left as the source's.
    """
    regularizer = keras.regularizers.L2(0.1) if kind == "l2" else keras.regularizers.L1L2(l1=0.05, l2=0.1)
    sgd = keras.optimizers.SGD(0.1, momentum=0.9)
    with twins.keras_float64():
        source = _activity_net(regularizer)
        converted = dl.convert_model(source, to="standard", optimizer=sgd)
        mapped = converted.model.get_layer("f").activity_regularizer
        # lambda p**2, of the lambda Keras computes with (0.1 through float32)
        assert float(mapped.l2) == pytest.approx(float(np.float32(0.1)) * 0.6**2, rel=1e-15)
        gap = _train_in_step(source, converted, sgd)
        source = _activity_net(regularizer)
        control = dl.convert_model(source, to="standard", optimizer=sgd)
        control.model.get_layer("f").activity_regularizer = source.get_layer("f").activity_regularizer
        control_gap = _train_in_step(source, control, sgd)
    assert converted.maps == {"drop": (("f", "producer"),)}
    assert gap <= 3 * 4 * 2 * np.finfo(np.float64).eps * 10, gap  # 3 steps, K = 2 (f, the Dense)
    assert control_gap > 1e-3, control_gap


def test_a_residual_producers_unknown_activity_regularizer_is_refused():
    net = _activity_net(keras.regularizers.OrthogonalRegularizer(0.1))
    with pytest.raises(dl.NotConvertibleError, match=r"dropout 'drop'.*producer 'f'.*activity_regularizer"):
        dl.convert_model(net, to="standard")


def test_a_residual_producer_that_is_also_a_model_output_is_refused():
    """Model(x, [out, F(x)]): the producer map would scale the exposed F(x) by s (was 0.4-0.67 apart)."""
    x = keras.Input((4,))
    f = L.Dense(4, "relu", name="f")(x)
    out = L.Dense(2)(L.Add()([x, L.Dropout(0.4, seed=3, name="drop")(f)]))
    with pytest.raises(dl.NotConvertibleError, match=r"'drop'.*'f'.*also a model output"):
        dl.convert_model(keras.Model(x, [out, f]), to="standard")


def test_a_dropped_tensor_that_is_a_model_output_is_refused_naming_the_dropout():
    x = keras.Input((4,))
    dropped = L.Dropout(0.4, seed=3, name="drop")(L.Dense(4, "relu")(x))
    with pytest.raises(
        dl.NotConvertibleError, match=r"model output is a dropped tensor \(behind dropout 'drop'\)"
    ):
        dl.convert_model(keras.Model(x, [L.Dense(2)(dropped), L.ReLU()(dropped)]), to="standard")
