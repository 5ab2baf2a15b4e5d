"""convert_model on the keras.applications models that contain dropout (issue 19, item 6).

``keep_prob`` is ``p``; Keras layers take ``rate = 1 - p``.

Each model is built with ``weights=None`` and a small input, converted both
ways where a map exists, and trained in step by :func:`dropout_lib.verify`
(its decision rule, :attr:`~dropout_lib.twins.Verification.exact`: every
step's weight gap within ``10 * ULPS_PER_LAYER * K`` times a one-ulp
control's distance, ``K`` the layers that absorb a factor; conclusive while
that budget times the control stays below ``1e-3``, far below the ``O(1 - p)``
of a wrong map). Every model here stays conclusive over its steps (EfficientNet
included: one step of 4 images, its training-mode BatchNorms carry the
one-ulp control to a few 1e-12 only), so every verdict is ``exact``. Refusals
are checked by their message: the layer named, the reason, a way out.

float64 (:func:`dropout_lib.twins.keras_float64`), SGD with momentum 0.9, the
copies compiled with ``run_eagerly=True`` (faster for two or three steps).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras.src.applications import convnext  # noqa: E402

import dropout_lib as dl  # noqa: E402
from dropout_lib import twins  # noqa: E402

L = keras.layers


def _images(n, classes=3, seed=0):
    """``n`` images of 32x32x3 (the smallest input these applications accept) and one-hot labels."""
    x = np.random.default_rng(seed).normal(size=(n, 32, 32, 3))
    return x, keras.utils.to_categorical(np.arange(n) % classes, classes)


def _sgd():
    return keras.optimizers.SGD(0.01, momentum=0.9)


def _dropout_names(model):
    return [layer.name for layer in model.layers if isinstance(layer, (L.Dropout, dl.StandardDropout))]


# ------------------------------------------------------------ MobileNetV3Small


def test_mobilenet_v3_small_converts_exactly_both_ways():
    """MobileNetV3Small's top: conv_2 -> hard_swish -> Dropout(0.2) -> Conv2D 'logits'."""
    x, y = _images(8)
    with twins.keras_float64():
        net = keras.applications.MobileNetV3Small(
            input_shape=(32, 32, 3), alpha=0.75, minimalistic=True, weights=None, classes=3
        )
        (drop,) = _dropout_names(net)
        standard = dl.convert_model(net, to="standard")
        back = dl.convert_model(standard.model, to="inverted")
        kw = dict(optimizer=_sgd(), loss="categorical_crossentropy", run_eagerly=True)
        forward = dl.verify(net, standard, x, y, 2, **kw)
        backward = dl.verify(standard.model, back, x, y, 2, **kw)
    assert standard.maps == back.maps == {drop: (("logits", "kernel"),)}
    assert type(standard.model.get_layer(drop)) is dl.StandardDropout
    assert type(back.model.get_layer(drop)) is L.Dropout
    assert forward.conclusive and forward.exact, forward
    assert backward.conclusive and backward.exact, backward


# ------------------------------------------------------------ MobileNet (v1)


def test_mobilenet_converts_back_to_inverted_exactly():
    """MobileNet (alpha 0.25): Dropout -> Conv2D 'conv_preds'; to standard (tested elsewhere), then back."""
    x, y = _images(8)
    with twins.keras_float64():
        net = keras.applications.MobileNet(input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=3)
        standard = dl.convert_model(net, to="standard")
        back = dl.convert_model(standard.model, to="inverted")
        kw = dict(optimizer=_sgd(), loss="categorical_crossentropy", run_eagerly=True)
        backward = dl.verify(standard.model, back, x, y, 2, **kw)
    assert back.direction == "to_inverted"
    assert back.maps == {"dropout": (("conv_preds", "kernel"),)}
    assert type(back.model.get_layer("dropout")) is L.Dropout
    assert backward.conclusive and backward.exact, backward


# ------------------------------------------------------------ ConvNeXt


def test_convnext_with_drop_path_is_refused_naming_its_stochastic_depth():
    """ConvNeXt-Tiny's configuration with drop_path_rate 0.1: unseeded StochasticDepth layers.

    ``keras.applications.ConvNeXtTiny`` fixes ``drop_path_rate=0.0`` (no
    dropout at all), so the Tiny configuration is built with
    ``keras.src.applications.convnext.ConvNeXt``, the function it calls. The
    rates rise linearly from 0 over the 18 blocks: block 0 of stage 0 has an
    identity, block 1 the first StochasticDepth.
    """
    tiny = convnext.MODEL_CONFIGS["tiny"]
    net = convnext.ConvNeXt(
        depths=tiny["depths"],
        projection_dims=tiny["projection_dims"],
        drop_path_rate=0.1,
        input_shape=(32, 32, 3),
        weights=None,
        classes=3,
        name="convnext_tiny",
    )
    first = "convnext_tiny_stage_0_block_1_stochastic_depth"
    assert type(net.get_layer(first)) is convnext.StochasticDepth
    for to in ("standard", "inverted"):
        with pytest.raises(dl.NotConvertibleError) as refusal:
            dl.convert_model(net, to=to)
        message = str(refusal.value)
        assert f"{first!r} (StochasticDepth) may draw random numbers" in message, message
        assert "stay in Keras's inverted variant" in message, message  # the reason
        assert "keras.layers.Dropout(rate, noise_shape=(None, 1, ..., 1), seed=...)" in message, message
        assert "keep this model on its own dropout variant" in message, message  # the ways out


# ------------------------------------------------------------ EfficientNetB0


def test_efficientnet_converts_back_to_inverted_exactly():
    """EfficientNetB0 (32x32): 9 stochastic-depth producer maps and the top kernel, standard -> inverted.

    One SGD step on 4 images keeps ``verify`` conclusive (measured in two runs:
    control 1.2e-12 and 3.7e-12, gap 0.9e-12 and 2.2e-12, budget 400 times the
    control), so its verdict is checked; ``gaps[0]`` compares the mapped
    weights before training. (The training-mode forward check of the other
    direction is in test_convert_model_residual.py; not repeated here, to
    save 1.3 s.)
    """
    x, y = _images(4)
    with twins.keras_float64():
        net = keras.applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=3)
        standard = dl.convert_model(net, to="standard")
        back = dl.convert_model(standard.model, to="inverted")
        kw = dict(optimizer=_sgd(), loss="categorical_crossentropy", run_eagerly=True)
        result = dl.verify(standard.model, back, x, y, 1, **kw)
    producers = [c for c in back.consumers if c.kind == "producer"]
    assert len(producers) == 9 and back.maps["block2b_drop"] == (("block2b_project_bn", "producer"),)
    assert back.maps["top_dropout"] == (("predictions", "kernel"),)
    assert type(back.model.get_layer("block2b_drop")) is L.Dropout
    assert result.conclusive and result.exact, result


# ------------------------------------------------------------ Transformer encoder block


def encoder_block(residual_dropout_after_attention=False):
    """A post-LN Transformer encoder block on sequences of 5 tokens of width 8, then a 2-unit head.

    ``x + MHA(x, x)`` (dropout 0.1 on the attention probabilities) ->
    LayerNorm -> ``h + Dropout(0.2)(Dense(8)(Dense(16, relu)(h)))`` ->
    LayerNorm. With ``residual_dropout_after_attention`` the attention
    branch gets its residual dropout too, ``x + Dropout(0.1)(MHA(x, x))``, as
    in the Keras Transformer examples.
    """
    init = keras.initializers.RandomNormal(stddev=0.5, seed=5)
    x = keras.Input((5, 8))
    attention = L.MultiHeadAttention(2, 4, dropout=0.1, seed=3, kernel_initializer=init, name="mha")(x, x)
    if residual_dropout_after_attention:
        attention = L.Dropout(0.1, seed=6, name="attention_drop")(attention)
    h = L.LayerNormalization(name="ln_1")(L.Add()([x, attention]))
    f = L.Dense(16, "relu", kernel_initializer=init, name="ffn_1")(h)
    f = L.Dense(8, kernel_initializer=init, bias_initializer=init, name="ffn_2")(f)
    f = L.Dropout(0.2, seed=4, name="ffn_drop")(f)
    out = L.LayerNormalization(name="ln_2")(L.Add()([h, f]))
    return keras.Model(x, L.Dense(2, kernel_initializer=init)(L.GlobalAveragePooling1D()(out)))


def test_transformer_encoder_block_converts_exactly_both_ways():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(12, 5, 8)), rng.normal(size=(12, 2))
    with twins.keras_float64():
        source = encoder_block()
        standard = dl.convert_model(source, to="standard")
        back = dl.convert_model(standard.model, to="inverted")
        forward = dl.verify(source, standard, x, y, 3, optimizer=_sgd(), run_eagerly=True)
        backward = dl.verify(standard.model, back, x, y, 3, optimizer=_sgd(), run_eagerly=True)
    expected = {
        "mha/attention_dropout": (("mha", "attention output projection"),),
        "ffn_drop": (("ffn_2", "producer"),),
    }
    assert standard.maps == back.maps == expected
    assert type(standard.model.get_layer("mha")) is dl.layers.StandardMultiHeadAttention
    assert type(back.model.get_layer("mha")) is L.MultiHeadAttention
    assert forward.conclusive and forward.exact, forward
    assert backward.conclusive and backward.exact, backward


def test_residual_dropout_after_attention_is_refused_naming_the_dropout():
    """``x + Dropout(MHA(x, x))``: the attention layer is not among the producers the map scales."""
    with pytest.raises(dl.NotConvertibleError) as refusal:
        dl.convert_model(encoder_block(residual_dropout_after_attention=True), to="standard")
    message = str(refusal.value)
    assert "dropout 'attention_drop' reads the output of 'mha' (MultiHeadAttention)" in message, message
    assert "keep this model on its own dropout variant" in message, message
