"""convert_model never returns a silently wrong result (issue 19, items 2, 3 and 5).

``keep_prob`` is ``p``; Keras layers take ``rate = 1 - p``.

Tolerances. As in test_convert_model: mapped twins differ by rounding only,
``steps * 4 K eps * 10`` for ``K`` consuming layers after ``steps`` SGD
steps (:func:`dropout_lib.twins.rounding_tolerance`; the factor 10 bounds the
gain with which a step passes earlier differences on). The controls (an
unmapped learning rate) are off by ``O(1 - p)`` of a step, ``> 1e-4``.
"""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras.src.applications.convnext import StochasticDepth  # noqa: E402

import dropout_lib as dl  # noqa: E402
from dropout_lib import twins  # noqa: E402
from dropout_lib.mapping import map_optimizer  # noqa: E402
from dropout_lib.validation import NothingToConvertWarning  # noqa: E402

L = keras.layers
RNG = np.random.default_rng(5)
X, Y = RNG.normal(size=(16, 4)), RNG.normal(size=(16, 3))


@pytest.fixture
def f64():
    with twins.keras_float64():
        yield


def paper_net():
    """The paper's recipe: Dense -> StandardDropout(0.2) -> Dense; one consuming layer."""
    return keras.Sequential(
        [
            keras.Input((4,)),
            L.Dense(8, activation="relu", kernel_initializer=keras.initializers.HeNormal(seed=1)),
            dl.StandardDropout(0.2, seed=1, name="drop"),
            L.Dense(3, kernel_initializer=keras.initializers.HeNormal(seed=2), name="out"),
        ]
    )


def _gap(source, converted):
    """Largest relative gap between the source's weights and the converted's, unscaled."""
    scale = {id(v): c.keep_prob for c in converted.consumers for v in c.variables}
    if converted.direction == "to_standard":
        scale = {k: 1 / p for k, p in scale.items()}
    return max(
        np.max(np.abs(np.asarray(v.numpy()) / scale.get(id(v), 1.0) - w.numpy())) / np.max(np.abs(w.numpy()))
        for w, v in zip(source.weights, converted.model.weights)
    )


# ------------------------------------------------------------ unknown random layers


def _stochastic_depth_block():
    x = keras.Input((4,))
    h = L.Dense(4, name="branch")(x)
    return keras.Model(x, L.Dense(2)(L.Add()([x, StochasticDepth(0.2, name="drop_path")(h)])))


def test_unseeded_stochastic_depth_is_refused_by_name():
    """ConvNeXt's StochasticDepth (unseeded keras.random.uniform) was passed through as 'converted'."""
    with pytest.raises(dl.NotConvertibleError, match=r"'drop_path' \(StochasticDepth\) may draw random"):
        dl.convert_model(_stochastic_depth_block(), to="standard")


class Noisy(L.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.generator = keras.random.SeedGenerator(1)

    def call(self, x, training=False):
        return x


def test_a_layer_holding_a_seed_generator_is_refused():
    model = keras.Sequential([keras.Input((4,)), Noisy(name="noisy"), L.Dropout(0.5), L.Dense(2)])
    with pytest.raises(dl.NotConvertibleError, match="'noisy'.*SeedGenerator"):
        dl.convert_model(model, to="standard")


def test_keras_random_layers_draw_what_the_source_draws(f64):
    """GaussianNoise before the dropout: its generator state is copied, so both train in step."""
    source = keras.Sequential(
        [
            keras.Input((4,)),
            L.GaussianNoise(0.3),
            L.Dense(8, "relu"),
            L.Dropout(0.2, seed=3),
            L.Dense(3),
        ]
    )
    source(X, training=True)  # advance the generators: the states, not the seeds, are copied
    converted = dl.convert_model(source, to="standard")
    y_src, y_conv = source(X, training=True), converted.model(X, training=True)
    assert twins.relative_difference(np.asarray(y_conv), np.asarray(y_src)) <= twins.rounding_tolerance(
        1, "float64"
    )


def test_a_model_without_dropout_says_nothing_was_converted():
    model = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    with pytest.warns(NothingToConvertWarning, match="no dropout layer"):
        dl.convert_model(model, to="standard")


# ------------------------------------------------------------ lookup tables


def test_an_adapted_vocabulary_survives_the_clone():
    """StringLookup's table is neither weight nor config: it got lost ('Table not initialized')."""
    lookup = L.StringLookup(name="vocab")
    lookup.adapt(np.array(["a", "b", "c", "a"]))
    x = keras.Input((1,), dtype="string")
    h = L.Flatten()(
        L.Embedding(5, 3, embeddings_initializer=keras.initializers.RandomNormal(seed=1))(lookup(x))
    )
    model = keras.Model(x, L.Dense(2)(L.Dropout(0.5, seed=1)(h)))
    converted = dl.convert_model(model, to="standard")
    words = np.array([["a"], ["c"], ["zzz"]])
    assert converted.model.get_layer("vocab").get_vocabulary() == lookup.get_vocabulary()
    np.testing.assert_allclose(
        converted.model(words), model(words), rtol=twins.rounding_tolerance(1, "float32")
    )


# ------------------------------------------------------------ learning-rate callbacks


def _fit(model, optimizer, callback, epochs=3):
    model.compile(optimizer=optimizer, loss="mse", run_eagerly=True)  # no tracing: tiny models
    model.fit(X, Y, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=[callback])


CALLBACKS = {
    "absolute LearningRateScheduler": lambda: keras.callbacks.LearningRateScheduler(
        lambda epoch, lr: 0.01 if epoch >= 1 else lr
    ),
    # min_delta huge: every epoch counts as no improvement, so the rate falls to min_lr
    "ReduceLROnPlateau to min_lr": lambda: keras.callbacks.ReduceLROnPlateau(
        monitor="loss", factor=0.5, patience=0, min_delta=1e9, min_lr=0.03
    ),
}


@pytest.mark.parametrize(
    "name,to", [("absolute LearningRateScheduler", "inverted"), ("ReduceLROnPlateau to min_lr", "standard")]
)
def test_learning_rate_callbacks_keep_the_map(name, to, f64):
    """Keras's callbacks set each sub-optimizer's rate; the kernels' follows the default's times k."""
    make, steps = CALLBACKS[name], 6
    source = paper_net()
    if to == "standard":  # an inverted source: the paper's net ported to Keras first
        source = dl.convert_model(source, to="inverted").model
    converted = dl.convert_model(source, to=to, optimizer=keras.optimizers.SGD(0.1))
    control = twins.mapped_twin(source, to)
    p, direction = converted.consumers[0].keep_prob, converted.direction
    # the control: the kernels' rate a plain number, which the callbacks overwrite as is
    selector = keras.optimizers.OptimizerMap(default_optimizer=keras.optimizers.SGD(0.1))
    selector["out/kernel"] = map_optimizer(keras.optimizers.SGD(0.1), p, direction)
    _fit(source, keras.optimizers.SGD(0.1), make())
    _fit(converted.model, converted.optimizer, make())
    _fit(control, keras.optimizers.MultiOptimizer(selector), make())
    tol = steps * twins.rounding_tolerance(1, "float64") * 10
    gap = _gap(source, converted)
    control_gap = _gap(source, twins.ConvertedModel(control, None, direction, converted.consumers))
    assert gap <= tol, gap
    assert control_gap > 1e-4, control_gap  # an absolute rate set on the kernels' optimizer as is


# ------------------------------------------------------------ the optimizer goes back


def test_the_returned_optimizer_converts_back_to_the_original(f64):
    sgd = keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=np.float64(1e-3), clipnorm=1.0)
    ported = dl.convert_model(paper_net(), to="inverted", optimizer=sgd)
    back = dl.convert_model(ported.model, to="standard", optimizer=ported.optimizer)
    assert type(back.optimizer) is keras.optimizers.SGD
    config, original = back.optimizer.get_config(), sgd.get_config()
    config.pop("name"), original.pop("name")
    assert config == original


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        lambda: keras.optimizers.Adam(0.01, weight_decay=0.01, clipnorm=1.0),
    ],
    ids=["sgd", "adam"],
)
def test_the_round_trip_in_float32_returns_what_the_user_gave(make):
    """Default float32: keep_prob 0.8's mapped learning rate is stored rounded to float32.

    Before, the exact comparison of that rate refused the returned MultiOptimizer
    (TypeError, 'not the map of the default optimizer'); the L2 factor 0.1 came
    back as 0.10000000149011612 (the float32 value Keras computes with).
    """
    optimizer = make()
    model = keras.Sequential(
        [
            keras.Input((4,)),
            L.Dense(8, activation="relu"),
            dl.StandardDropout(0.2, seed=1),
            L.Dense(3, kernel_regularizer=keras.regularizers.L2(0.1), name="out"),
        ]
    )
    ported = dl.convert_model(model, to="inverted", optimizer=optimizer)
    back = dl.convert_model(ported.model, to="standard", optimizer=ported.optimizer)
    config, original = back.optimizer.get_config(), optimizer.get_config()
    config.pop("name"), original.pop("name")
    assert config == original
    assert back.model.get_layer("out").kernel_regularizer.l2 == 0.1


def test_a_multi_optimizer_of_another_form_is_refused(f64):
    model = paper_net()
    multi = keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(default_optimizer=keras.optimizers.SGD(0.1))
    )
    with pytest.raises(TypeError, match="out/kernel.*not the map of the default"):
        dl.convert_model(model, to="inverted", optimizer=multi)


# ------------------------------------------------------------ plain Keras out


LOAD = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np
folder = sys.argv[1]
x = np.load(os.path.join(folder, "x.npy"))
inverted = keras.models.load_model(os.path.join(folder, "inverted.keras"))
assert not any(name.startswith("dropout_lib") for name in sys.modules), "needed the project"
np.save(os.path.join(folder, "y_inverted.npy"), inverted.predict(x, verbose=0))
import dropout_lib  # a plain import registers StandardDropout and the project's Keras classes
standard = keras.models.load_model(os.path.join(folder, "standard.keras"))
np.save(os.path.join(folder, "y_standard.npy"), standard.predict(x, verbose=0))
"""


def test_converted_models_load_in_a_fresh_process(tmp_path):
    """To inverted: plain Keras, loads without dropout_lib; to standard: after importing it."""
    paper = paper_net()  # default float32: what a user saves
    inverted = dl.convert_model(paper, to="inverted").model
    standard = dl.convert_model(inverted, to="standard").model
    config = str(inverted.get_config())
    assert "dropout_lib" not in config, config
    x = X.astype("float32")
    np.save(tmp_path / "x.npy", x)
    inverted.save(tmp_path / "inverted.keras")
    standard.save(tmp_path / "standard.keras")
    subprocess.run([sys.executable, "-c", LOAD, str(tmp_path)], check=True, env=dict(os.environ))
    np.testing.assert_array_equal(np.load(tmp_path / "y_inverted.npy"), inverted.predict(x, verbose=0))
    np.testing.assert_array_equal(np.load(tmp_path / "y_standard.npy"), standard.predict(x, verbose=0))


LOAD_BEFORE_KERAS = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import dropout_lib  # before Keras: lazy, and the classes register when Keras is imported
assert "keras" not in sys.modules
import keras, numpy as np
folder = sys.argv[1]
model = keras.models.load_model(os.path.join(folder, "standard.keras"))
np.save(os.path.join(folder, "y.npy"), model.predict(np.load(os.path.join(folder, "x.npy")), verbose=0))
np.savez(os.path.join(folder, "w.npz"), *model.get_weights())
assert [type(layer).__name__ for layer in model.layers][1:] == sys.argv[2].split(","), model.layers
"""


def test_a_plain_import_before_keras_loads_every_project_class(tmp_path):
    """StandardMultiHeadAttention, StandardDropout, ScaledInitializer after `import dropout_lib`.

    Before, the lazy package import registered nothing and load_model failed
    ("could not be deserialized") unless dropout_lib.conversion was imported.
    """
    x = keras.Input((3, 4))
    attention = L.MultiHeadAttention(num_heads=2, key_dim=2, dropout=0.3, seed=4)(x, x)
    identity = keras.initializers.Identity()  # no plain Keras map: ScaledInitializer
    y = L.Dense(4, kernel_initializer=identity)(L.Dropout(0.5, seed=7)(attention))
    standard = dl.convert_model(keras.Model(x, y), to="standard").model
    kinds = {type(layer).__name__ for layer in standard.layers}
    assert {"StandardMultiHeadAttention", "StandardDropout"} <= kinds, kinds
    assert type(standard.layers[-1].kernel_initializer).__name__ == "ScaledInitializer"
    data = RNG.normal(size=(2, 3, 4)).astype("float32")
    np.save(tmp_path / "x.npy", data)
    standard.save(tmp_path / "standard.keras")
    names = ",".join(type(layer).__name__ for layer in standard.layers[1:])
    command = [sys.executable, "-c", LOAD_BEFORE_KERAS, str(tmp_path), names]
    subprocess.run(command, check=True, env=dict(os.environ))
    loaded = np.load(tmp_path / "w.npz")
    for i, w in enumerate(standard.get_weights()):
        np.testing.assert_array_equal(loaded[f"arr_{i}"], w)  # the same weights, bit for bit
    # the same function: float32 rounding of another process's kernels (seen: 2.5e-6 relative
    # on an entry of 0.015; 1.4e-7 absolute), far below a missing map's factor 0.5
    y = standard.predict(data, verbose=0)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), y, rtol=0, atol=32 * 2.0**-23 * np.max(np.abs(y)))


# ------------------------------------------------------------ backends' optimizer classes


def test_keras_backend_subclasses_map_like_their_public_class_and_others_are_refused():
    """KERAS_BACKEND=torch builds keras.src.backend.torch...torch_sgd.SGD for keras.optimizers.SGD."""

    def subclass(module):
        return type("SGD", (keras.optimizers.SGD,), {"__module__": module})

    backend_sgd = subclass("keras.src.backend.torch.optimizers.torch_sgd")(0.1, momentum=0.9)
    mapped = map_optimizer(backend_sgd, 0.5, "to_inverted")
    assert type(mapped) is type(backend_sgd) and float(mapped.learning_rate) == pytest.approx(0.025, rel=1e-7)
    with pytest.raises(dl.NoExactMapError, match="no map derived for my_project.SGD"):
        map_optimizer(subclass("my_project")(0.1), 0.5, "to_inverted")
