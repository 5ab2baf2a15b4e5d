"""dl.convert_model: one call ports a model and its optimizer, or refuses with the reason.

``keep_prob`` is ``p``; Keras layers take ``rate = 1 - p``.

Tolerances. Mapped twins evaluate the same real-number expression with the
factor ``1/p`` rounded at other places; :func:`dropout_lib.twins.rounding_tolerance`
derives ``4 K eps`` for their relative output difference (``K`` consuming
layers). In the random graphs below every Dense layer may consume dropped
units, so ``K`` is the number of Dense layers (an upper bound). A wrong map is
off by ``O(1 - p) >= 0.1`` relative. Training: each step adds a difference of
that size and passes the previous ones on with a gain near 1 (SGD, Adam with
epsilon far below ``sqrt(v)``), so ``steps * 4 K eps`` with a factor 10 for the
gain, about ``1e-13`` for 10 steps; the negative controls are off by ``> 1e-4``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import dropout_lib as dl  # noqa: E402
from dropout_lib import twins  # noqa: E402
from dropout_lib.conversion import EquivariantMaxNorm  # noqa: E402
from dropout_lib.mapping import mapped_multi_optimizer  # noqa: E402
from dropout_lib.reference import relative_difference  # noqa: E402
from dropout_lib.validation import NothingToConvertWarning  # noqa: E402

L = keras.layers
EPS64 = np.finfo(np.float64).eps
RNG = np.random.default_rng(11)
X = RNG.normal(size=(8, 4))


@pytest.fixture
def f64():
    """float64 layers and optimizer variables for one test (the float32 test needs the default)."""
    with twins.keras_float64():
        yield


def _rel(a, b):
    return relative_difference(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------- the property

# Layers a dropped tensor may meet. "ok" ones pass or absorb the factor; the
# others must be refused when they receive a dropped tensor.
ALLOWED = ("dropout", "dense", "relu", "dense_relu", "layernorm")  # LayerNorm: the epsilon map
REFUSED_ON_DROPPED = ("tanh", "unitnorm", "skip_add", "shared_dense")


@st.composite
def graphs(draw):
    ops = draw(st.lists(st.sampled_from(ALLOWED + REFUSED_ON_DROPPED), min_size=1, max_size=5))
    rates = draw(st.lists(st.sampled_from([0.25, 0.5, 0.75]), min_size=len(ops), max_size=len(ops)))
    return ops, rates


def build(ops, rates):
    """A functional model from the op list, ending with a Dense output; returns (model, K).

    ``K`` counts the Dense and LayerNormalization layers, the ones that may absorb a factor.
    """
    x = keras.Input((4,))
    h, seen, first_dense, n_dense = x, [x], None, 1
    for i, (op, rate) in enumerate(zip(ops, rates)):
        init = keras.initializers.HeNormal(seed=100 + i)
        bias = keras.initializers.RandomNormal(stddev=0.3, seed=200 + i)
        if op == "dropout":
            h = L.Dropout(rate, seed=i + 1)(h)
        elif op in ("dense", "dense_relu"):
            layer = L.Dense(
                4, "relu" if op == "dense_relu" else None, kernel_initializer=init, bias_initializer=bias
            )
            first_dense = first_dense or layer
            h = layer(h)
            n_dense += 1
        elif op == "relu":
            h = L.ReLU()(h)
        elif op == "tanh":
            h = L.Activation("tanh")(h)
        elif op == "layernorm":
            h = L.LayerNormalization()(h)
            n_dense += 1  # it may absorb a factor: one more rounding budget
        elif op == "unitnorm":
            h = L.UnitNormalization()(h)
        elif op == "skip_add":
            h = L.Add()([h, seen[len(seen) // 2]])
        elif op == "shared_dense":
            if first_dense is None:
                first_dense = L.Dense(4, kernel_initializer=init, bias_initializer=bias)
                n_dense += 1
            h = first_dense(h)
        seen.append(h)
    y = L.Dense(
        2,
        kernel_initializer=keras.initializers.HeNormal(seed=99),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=98),
    )(h)
    return keras.Model(x, y), n_dense


@settings(max_examples=8, deadline=None)  # ~0.3 s each: the unit-test budget
@given(graph=graphs())
def test_random_graphs_convert_exactly_or_are_refused(graph):
    ops, rates = graph
    with twins.keras_float64():
        _check_graph(ops, rates)


def _check_graph(ops, rates):
    model, n_dense = build(ops, rates)
    try:
        converted = dl.convert_model(model, to="standard")
    except dl.NotConvertibleError as error:
        assert "layer" in str(error) or "output" in str(error)
        # a graph of allowed layers only (no skip, no shared kernel) is never refused
        assert not set(ops) <= set(ALLOWED), f"{ops} refused: {error}"
        return
    result = twins.compare_twins(model, converted.model, X, training_calls=2, predict=False)
    assert result.worst <= twins.rounding_tolerance(n_dense, "float64"), (ops, result)


# ------------------------------------------------------ the same training


def paper_net(l2=0.01, max_norm=1.5):
    """The paper's recipe: StandardDropout, L2 on one consumer, max-norm on another."""
    return keras.Sequential(
        [
            keras.Input((4,)),
            dl.StandardDropout(0.2, seed=1),
            L.Dense(
                8,
                "relu",
                kernel_regularizer=keras.regularizers.L2(l2),
                kernel_initializer=keras.initializers.HeNormal(seed=2),
                bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=3),
            ),
            dl.StandardDropout(0.5, seed=4),
            L.Dense(
                3,
                kernel_constraint=EquivariantMaxNorm(max_norm),
                kernel_initializer=keras.initializers.HeNormal(seed=5),
            ),
        ]
    )


def _fit(model, optimizer, steps=10):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(steps * 4, 4)), rng.normal(size=(steps * 4, 3))
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda: keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=np.float64(1e-3), clipnorm=1.0),
        lambda: keras.optimizers.Adam(0.01, epsilon=1e-7),
    ],
    ids=["sgd", "adam"],
)
def test_converted_model_trains_like_the_source(make_optimizer, f64):
    source = paper_net()
    converted = dl.convert_model(source, to="inverted", optimizer=make_optimizer())
    naive = twins.mapped_twin(source, "inverted", hyperparameters="copied")
    _fit(source, make_optimizer())
    _fit(converted.model, converted.optimizer)
    _fit(naive, mapped_multi_optimizer(naive, make_optimizer(), "to_inverted"))
    scale = {id(v): c.keep_prob for c in converted.consumers for v in c.variables}
    steps, k = 10, 3
    tol = steps * twins.rounding_tolerance(k, "float64") * 10
    gaps, naive_gaps = [], []
    for w_src, v_tgt, v_naive in zip(source.weights, converted.model.weights, naive.weights):
        s = scale.get(id(v_tgt), 1.0)  # W_inv = p W_std on the consuming kernels
        gaps.append(_rel(np.asarray(v_tgt.numpy()) / s, w_src.numpy()))
        naive_gaps.append(_rel(np.asarray(v_naive.numpy()) / s, w_src.numpy()))
    assert max(gaps) <= tol, gaps
    assert max(naive_gaps) > 1e-4, naive_gaps  # unmapped L2 / max-norm train differently
    # the regulariser and constraint were mapped, not copied: l2 / p^2, c * p to inverted (the
    # source's l2 is the float32 rounding of 0.01 that Keras computes with: rel 1e-7)
    assert float(converted.model.layers[1].kernel_regularizer.l2) == pytest.approx(0.01 / 0.8**2, rel=1e-7)
    assert converted.model.layers[3].kernel_constraint.max_value == pytest.approx(1.5 * 0.5, rel=1e-15)


def test_compiled_optimizer_is_used_and_everything_else_is_the_original(f64):
    source = paper_net()
    source.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    converted = dl.convert_model(source, to="inverted")
    opt = converted.optimizer
    assert isinstance(opt, keras.optimizers.MultiOptimizer)
    kernel = converted.consumers[0].variables[0]
    bias = converted.model.layers[1].bias
    # to inverted: lr * p^2 on the kernel behind keep probability p = 0.8; lr elsewhere
    assert float(opt._optimizer_map[kernel.path].learning_rate) == pytest.approx(0.1 * 0.8**2, rel=1e-15)
    assert float(opt._optimizer_map[bias.path].learning_rate) == pytest.approx(0.1, rel=1e-15)


def test_no_dropout_and_no_optimizer(f64):
    model = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    with pytest.warns(NothingToConvertWarning):
        converted = dl.convert_model(model, to="standard")
    assert converted.optimizer is None and converted.consumers == ()
    np.testing.assert_array_equal(converted.model.predict(X, verbose=0), model.predict(X, verbose=0))


# --------------------------------------------------------------- refusals


def _nested():
    inner = keras.Sequential([keras.Input((4,)), L.Dropout(0.5), L.Dense(4)], name="inner")
    x = keras.Input((4,))
    return keras.Model(x, L.Dense(2)(inner(x)))


class Custom(L.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.drop = L.Dropout(0.5)

    def call(self, x, training=False):
        return self.drop(x, training=training)


def _seq(*layers, shape=(4,)):
    return keras.Sequential([keras.Input(shape), *layers])


def _shared():
    x = keras.Input((4,))
    dense = L.Dense(4, name="shared")
    return keras.Model(x, L.Add()([dense(L.Dropout(0.5)(x)), dense(x)]))


REFUSALS = {
    "nested model": (_nested, "inner"),
    "gaussian dropout": (lambda: _seq(L.GaussianDropout(0.3, name="gd"), L.Dense(2)), "gd"),
    "alpha dropout": (lambda: _seq(L.AlphaDropout(0.3, name="ad"), L.Dense(2)), "ad"),
    "custom layer holding a dropout": (lambda: _seq(Custom(name="custom"), L.Dense(2)), "custom"),
    "attention dropout with a regulariser shared by the projections": (
        lambda: (
            lambda x: keras.Model(
                x, L.MultiHeadAttention(2, 2, dropout=0.1, kernel_regularizer="l2", name="mha")(x, x)
            )
        )(keras.Input((3, 4))),
        r"'mha'.*four projections",
    ),
    "recurrent dropout": (lambda: _seq(L.LSTM(3, dropout=0.2, name="lstm"), shape=(5, 4)), "lstm"),
    "recurrent dropout in a wrapped RNN": (
        lambda: _seq(L.Bidirectional(L.GRU(3, recurrent_dropout=0.2), name="bi"), shape=(5, 4)),
        "bi",
    ),
    "dropout in an RNN's cell": (
        lambda: _seq(L.RNN(L.LSTMCell(3, dropout=0.2), name="rnn"), shape=(5, 4)),
        "rnn",
    ),
    "shared matrix": (_shared, "shared"),
    "unknown consumer": (lambda: _seq(L.Dropout(0.5), L.Activation("tanh", name="act"), L.Dense(2)), "act"),
    "unit normalisation": (
        lambda: _seq(L.Dropout(0.5), L.UnitNormalization(name="un"), L.Dense(2)),
        r"'un'.*1e-12 hard-coded",
    ),
    "dropped output": (lambda: _seq(L.Dense(2), L.Dropout(0.5)), "output"),
    "keras max-norm": (
        lambda: _seq(L.Dropout(0.5), L.Dense(2, kernel_constraint=keras.constraints.MaxNorm(2), name="mn")),
        "mn",
    ),
    "already inverted": (lambda: _seq(L.Dropout(0.5, name="drop"), L.Dense(2)), "drop"),
    "activity regularizer on a dropped tensor": (
        lambda: _seq(L.Dropout(0.5), L.ReLU(activity_regularizer="l2", name="act_reg"), L.Dense(2)),
        "act_reg",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_refusals_name_the_layer(name):
    make, culprit = REFUSALS[name]
    to = "inverted" if name == "already inverted" else "standard"
    with pytest.raises(dl.NotConvertibleError, match=culprit):
        dl.convert_model(make(), to=to)


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(X)
    with pytest.raises(dl.NotConvertibleError, match="subclassed"):
        dl.convert_model(net, to="standard")


def test_twin_refuses_a_dropout_it_cannot_swap():
    with pytest.raises(dl.NotConvertibleError, match="inner"):
        twins.twin(_nested(), "standard")


def test_bad_direction_says_what_to_pass():
    with pytest.raises(ValueError, match="'inverted'.*'standard'"):
        dl.convert_model(_seq(L.Dense(2)), to="keras")


# -------------------------------------------------------- save and load


def test_standard_dropout_survives_a_keras_file(tmp_path):
    model = _seq(dl.StandardDropout(0.5, noise_shape=(None, 1), seed=7), L.Dense(2))
    path = tmp_path / "std.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.layers[0]
    assert type(layer) is dl.StandardDropout
    assert (layer.rate, layer.noise_shape, layer.seed) == (0.5, (None, 1), 7)
    x = X.astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    # a fresh layer with the same seed draws the same first mask as the loaded one
    np.testing.assert_array_equal(
        layer(x, training=True), dl.StandardDropout(0.5, (None, 1), seed=7)(x, training=True)
    )


def test_converted_model_survives_a_keras_file(tmp_path):
    converted = dl.convert_model(
        keras.Sequential(
            [
                keras.Input((4,)),
                L.Dropout(0.5, seed=1),
                L.Dense(
                    3,
                    kernel_regularizer=keras.regularizers.L2(0.01),
                    kernel_constraint=EquivariantMaxNorm(2.0),
                ),
            ]
        ),
        to="standard",
    )
    path = tmp_path / "converted.keras"
    converted.model.save(path)
    loaded = keras.saving.load_model(path)
    x = X.astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), converted.model.predict(x, verbose=0))
    dense = loaded.layers[1]
    assert float(dense.kernel_regularizer.l2) == pytest.approx(0.01 * 0.25, rel=1e-7)
    assert dense.kernel_constraint.max_value == pytest.approx(4.0)
    assert type(dense.kernel_initializer) is keras.initializers.RandomUniform  # GlorotUniform's bounds / p


# ------------------------------------------------------------ float32


def test_maps_under_float32_floatx():
    """Default floatx (float32): twins agree to float32 rounding, 4 K eps32, at most ~2.4e-7 * K."""
    assert keras.config.floatx() == "float32"
    source = paper_net()
    converted = dl.convert_model(source, to="inverted", optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    x = X.astype("float32")
    result = twins.compare_twins(source, converted.model, x, training_calls=2, predict=False)
    assert result.worst <= twins.rounding_tolerance(2, "float32")
    # a few training steps in float32: the same trajectory to float32 rounding
    _fit(source, keras.optimizers.SGD(0.05, momentum=0.9), steps=3)
    _fit(converted.model, converted.optimizer, steps=3)
    scale = {id(v): c.keep_prob for c in converted.consumers for v in c.variables}
    tol = 3 * twins.rounding_tolerance(2, "float32") * 10
    for w_src, v in zip(source.weights, converted.model.weights):
        assert _rel(np.asarray(v.numpy(), np.float64) / scale.get(id(v), 1.0), w_src.numpy()) <= tol


# ------------------------------------------------------------ the public API


def test_import_is_lazy_and_the_public_names_resolve():
    """`import dropout_lib` loads no Keras and sets no environment variable; the names resolve."""
    import subprocess
    import sys

    code = (
        "import os, sys; before = dict(os.environ); import dropout_lib as dl; "
        "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules; "
        "assert dict(os.environ) == before; "
        "assert sorted(dl.__all__) == ['NoExactMapError', 'NotConvertibleError', 'StandardDropout', "
        "'convert_model', 'to_inverted', 'to_standard', 'verify'], dl.__all__; "
        "from dropout_lib import validation; "
        "assert dl.NotConvertibleError is validation.NotConvertibleError; "
        "assert 'keras' not in sys.modules"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"} | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
