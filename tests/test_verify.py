"""dl.verify: exactness made visible step by step, beside a one-ulp control (issue 19, item 4).

Its decision rule (``Verification.exact``): every step's gap within
``10 * ULPS_PER_LAYER * K`` times the one-ulp control's distance (or eps),
the rounding budget of the package's tests. A wrong map (biases scaled too,
the book's negative control) is ``O(1 - p)`` apart from the start.
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
RNG = np.random.default_rng(2)
X, Y = RNG.normal(size=(12, 4)), RNG.normal(size=(12, 3))


def paper_net():
    return keras.Sequential(
        [
            keras.Input((4,)),
            L.Dense(8, "relu", kernel_initializer=keras.initializers.HeNormal(seed=1)),
            dl.StandardDropout(0.3, seed=1),
            L.Dense(
                3,
                kernel_regularizer=keras.regularizers.L2(0.01),
                bias_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=2),
                name="out",
            ),
        ]
    )


def test_verify_tells_an_exact_conversion_from_a_wrong_one():
    with twins.keras_float64():
        paper = paper_net()
        ported = dl.convert_model(paper, to="inverted")
        sgd = keras.optimizers.SGD(0.1, momentum=0.9)
        good = dl.verify(paper, ported, X, Y, steps=3, optimizer=sgd, run_eagerly=True)
        wrong_model = twins._copy_model(ported.model)
        twins.scale_consumer_biases(wrong_model, "to_inverted")  # the wrong map: biases too
        wrong = dl.verify(
            paper,
            twins.ConvertedModel(wrong_model, None, ported.direction, ported.consumers),
            X,
            Y,
            steps=3,
            optimizer=sgd,
            run_eagerly=True,
        )
    assert good.exact and len(good.gaps) == len(good.controls) == 4
    assert max(good.gaps) <= 4 * 2.0**-52 * 10 * 3, good  # rounding level, as the tests' budget
    assert not wrong.exact and max(wrong.gaps) > 1e-3, wrong


def test_verify_leaves_the_models_alone_and_checks_its_arguments():
    with twins.keras_float64():
        paper = paper_net()
        before = [w.copy() for w in paper.get_weights()]
        ported = dl.convert_model(paper, to="inverted")
        dl.verify(paper, ported, X, Y, steps=1, optimizer=keras.optimizers.SGD(0.1))
        for a, b in zip(before, paper.get_weights()):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(ValueError, match="optimizer="):
            dl.verify(paper, ported, X, Y, steps=1)
        with pytest.raises(ValueError, match="need 24 rows"):
            dl.verify(paper, ported, X, Y, steps=2, batch_size=12, optimizer=keras.optimizers.SGD(0.1))


def test_a_keras_application_converts_exactly_step_by_step():
    """MobileNet (weights=None, 32x32, alpha 0.25): Dropout -> Conv2D classifier, chaotic float64 training."""
    with twins.keras_float64():
        net = keras.applications.MobileNet(input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=3)
        converted = dl.convert_model(net, to="standard")
        x = np.random.default_rng(0).normal(size=(8, 32, 32, 3))
        y = keras.utils.to_categorical(np.arange(8) % 3, 3)
        sgd = keras.optimizers.SGD(0.01)
        result = dl.verify(
            net, converted, x, y, steps=2, optimizer=sgd, loss="categorical_crossentropy", run_eagerly=True
        )
    assert converted.maps == {"dropout": (("conv_preds", "kernel"),)}
    assert result.exact, result


def test_a_residual_dropout_without_a_producer_map_is_refused_naming_the_dropout():
    """Dropout(noise_shape=(None, 1)) on a residual branch that ends in tanh: no map on either side."""
    x = keras.Input((4,))
    branch = L.Dropout(0.2, noise_shape=(None, 1), name="drop_path")(L.Dense(4, activation="tanh")(x))
    model = keras.Model(x, L.Dense(2)(L.Add(name="merge")([x, branch])))
    match = r"'merge'.*dropout 'drop_path'.*producer side.*does not apply.*not positively homogeneous"
    with pytest.raises(dl.NotConvertibleError, match=match):
        dl.convert_model(model, to="standard")


@pytest.mark.parametrize("last", ["dense", "batchnorm"])
def test_verify_keeps_every_mapped_attribute_of_a_residual_producer(last):
    """Bias/gamma/beta L2 and an activity L2 on a producer survive verify's copies.

    Before, verify rebuilt the producer's bias L2 from its config (the mapped
    float64 factor rounded through float32): 1.6e-11..9.1e-11 apart beside a
    2.5e-16 control, exact=False on an exact conversion.
    """
    with twins.keras_float64():
        source = _producer_net(last)
        ported = dl.convert_model(source, to="standard")
        sgd = keras.optimizers.SGD(0.05)
        result = dl.verify(source, ported, X, Y, steps=3, optimizer=sgd, run_eagerly=True)
    assert result.exact and max(result.gaps) <= 4 * 2.0**-52 * 10 * 3, result


def _producer_net(last):
    """x + Dropout(F(x)) -> Dense; F ends in a Dense or BatchNorm with L2s on all its parameters."""
    reg = keras.regularizers.L2
    x = keras.Input((4,))
    h = L.Dense(4, "relu", kernel_initializer=keras.initializers.HeNormal(seed=1))(x)
    if last == "dense":
        kw = dict(bias_regularizer=reg(0.3), kernel_regularizer=reg(0.2), activity_regularizer=reg(0.1))
        f = L.Dense(4, bias_initializer=keras.initializers.RandomNormal(seed=2), name="f", **kw)(h)
    else:
        f = L.BatchNormalization(
            momentum=0.5, gamma_regularizer=reg(0.3), beta_regularizer=reg(0.2), name="f"
        )(h)
    out = L.Dense(3)(L.Add()([x, L.Dropout(0.4, seed=3)(f)]))
    return keras.Model(x, out)
