"""Tests of dropout_lib.conversion: weights, penalties, constraints, initialisers between variants.

The central check (PLAN #1): after ``convert_weights``, a model with
``keras.layers.Dropout`` and its twin with ``StandardDropout`` (same ``rate``
and seed; ``rate`` is Keras's drop probability ``1 - p``) give the same
outputs, at training time (same masks) and at inference, on every
architecture the graph walk accepts; architectures it refuses raise
``NotConvertibleError`` with the reason.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402
from keras import layers as L  # noqa: E402
from keras import ops  # noqa: E402

from dropout_lib import conversion  # noqa: E402
from dropout_lib.conversion import NotConvertibleError  # noqa: E402
from dropout_lib.layers import StandardDropout  # noqa: E402
from dropout_lib.mapping import NoExactMapError  # noqa: E402

# One forward pass: the twins differ by a few roundings per layer (~1e-16
# each); 1e-13 is a wide margin, and a wrong kernel scale is off by O(1).
TOL = 1e-13
EPS = np.finfo(np.float64).eps
# Keras's convert_to_numpy calls np.array(x) on TF tensors (numpy 2 warns).
pytestmark = [
    pytest.mark.usefixtures("keras_float64"),  # tests/conftest.py
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]
_rng = np.random.default_rng(7)


def drop(variant: str, rate: float, seed: int, **kw):
    """``rate`` is Keras's drop probability, keep_prob = 1 - rate."""
    return (L.Dropout if variant == "inverted" else StandardDropout)(rate, seed=seed, **kw)


def _init(seed: int):
    return dict(
        kernel_initializer=keras.initializers.GlorotUniform(seed),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed + 100),
    )


# ------------------------------------------------------------ architectures


def mlp(v):
    return keras.Sequential(
        [
            keras.Input((6,)),
            drop(v, 0.2, 1),
            L.Dense(8, activation="relu", **_init(1)),
            drop(v, 0.5, 2),
            L.Dense(3, **_init(2)),
        ]
    )


def cnn(v):
    x = keras.Input((8, 8, 2))
    h = L.Conv2D(4, 3, activation="relu", **_init(3))(x)
    h = drop(v, 0.3, 3, noise_shape=(None, 1, 1, None))(h)
    h = L.MaxPooling2D()(h)
    h = L.ZeroPadding2D(1)(h)
    h = L.Conv2D(3, 3, **_init(4))(h)
    h = L.Flatten()(h)
    h = drop(v, 0.4, 4)(h)
    return keras.Model(x, L.Dense(3, **_init(5))(h))


def separable_depthwise_transpose(v):
    x = keras.Input((8, 8, 2))
    h = drop(v, 0.25, 5)(x)
    h = L.SeparableConv2D(
        4,
        3,
        activation="relu",
        depthwise_initializer=keras.initializers.GlorotUniform(6),
        pointwise_initializer=keras.initializers.GlorotUniform(60),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=106),
    )(h)
    h = drop(v, 0.4, 6)(h)
    h = L.UpSampling2D()(h)
    h = L.DepthwiseConv2D(
        3,
        activation="relu",
        depthwise_initializer=keras.initializers.GlorotUniform(7),
        bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=107),
    )(h)
    h = drop(v, 0.1, 7)(h)
    h = L.Conv2DTranspose(2, 3, **_init(8))(h)
    h = L.GlobalAveragePooling2D()(h)
    h = drop(v, 0.3, 8)(h)
    return keras.Model(x, L.EinsumDense("ab,bc->ac", output_shape=3, bias_axes="c", **_init(9))(h))


def merges_and_chains(v):
    x = keras.Input((6,))
    a = drop(v, 0.4, 9)(L.Dense(8, **_init(10))(x))
    b = drop(v, 0.4, 10)(L.Dense(8, **_init(11))(x))
    s = L.LeakyReLU()(L.Add()([a, b]))  # same factor on both branches
    c = L.Concatenate()([drop(v, 0.3, 11)(x), drop(v, 0.3, 12)(x)])
    m = L.Multiply()([drop(v, 0.4, 13)(x), drop(v, 0.5, 14)(x)])  # factors multiply
    d = drop(v, 0.5, 16)(drop(v, 0.2, 15)(x))  # chained: p = 0.8 * 0.5
    d = L.PReLU(alpha_initializer=keras.initializers.Constant(0.25))(d)
    d = L.GaussianDropout(0.2, seed=18)(d)  # multiplicative noise: passes
    h = L.Concatenate()(
        [
            L.Dense(4, **_init(12))(s),
            L.Dense(4, **_init(13))(c),
            L.Dense(4, **_init(14))(m),
            L.Dense(4, **_init(15))(d),
        ]
    )
    r = L.Reshape((4, 4))(drop(v, 0.5, 17)(h))
    r = L.Conv1D(2, 2, **_init(16))(r)
    return keras.Model(x, L.Dense(3, **_init(17))(L.Flatten()(r)))


ARCHS = {
    "mlp": (mlp, (6,), [("dense", 0.8), ("dense_1", 0.5)]),
    "cnn": (cnn, (8, 8, 2), None),
    "separable_depthwise_transpose": (separable_depthwise_transpose, (8, 8, 2), None),
    "merges_and_chains": (merges_and_chains, (6,), None),
}


@pytest.mark.parametrize("direction", ["to_standard", "to_inverted"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_converted_twins_compute_the_same_function(name, direction):
    build, shape, _ = ARCHS[name]
    src_v, dst_v = ("inverted", "standard")[:: 1 if direction == "to_standard" else -1]
    src, dst = build(src_v), build(dst_v)
    conversion.convert_weights(src, dst, direction)
    x = _rng.normal(size=(5, *shape))
    for training in (True, False, True):  # masks advance in step in both twins
        a = ops.convert_to_numpy(src(x, training=training))
        b = ops.convert_to_numpy(dst(x, training=training))
        err = np.max(np.abs(a - b)) / np.max(np.abs(a))
        assert err < TOL, f"training={training}: twins differ by {err:.1e}"


def test_consumers_and_their_keep_probs():
    model = merges_and_chains("inverted")
    found = {
        type(c.layer).__name__ + ":" + c.layer.name: round(c.keep_prob, 12)
        for c in conversion.dropout_consumers(model)
    }
    keep = sorted(found.values())
    # Add of two p=0.6 branches, Concatenate of two p=0.7, Multiply 0.6*0.5,
    # chain 0.8*0.5, and the Conv1D behind p=0.5.
    assert keep == sorted([0.6, 0.7, 0.3, 0.4, 0.5])
    sep = separable_depthwise_transpose("inverted")
    kinds = {type(c.layer).__name__: [v.name for v in c.variables] for c in conversion.dropout_consumers(sep)}
    assert kinds == {
        "SeparableConv2D": ["depthwise_kernel"],
        "DepthwiseConv2D": ["kernel"],
        "Conv2DTranspose": ["kernel"],
        "EinsumDense": ["kernel"],
    }


def test_scaling_the_bias_too_breaks_the_function():
    src, dst = mlp("inverted"), mlp("standard")
    conversion.convert_weights(src, dst, "to_standard")
    out = dst.layers[-1]
    out.bias.assign(out.bias / 0.5)  # the 'obvious' but wrong map b -> b/p
    x = _rng.normal(size=(5, 6))
    gap = np.max(np.abs(ops.convert_to_numpy(src(x)) - ops.convert_to_numpy(dst(x))))
    assert gap > 1e-3


# ----------------------------------------------------------------- refusals


def _chain(*middle, output=True):
    x = keras.Input((6,))
    h = L.Dropout(0.5, seed=1)(L.Dense(8, activation="relu")(x))
    for layer in middle:
        h = layer(h)
    return keras.Model(x, L.Dense(3)(h) if output else h)


def _add_undropped():
    x = keras.Input((6,))
    h = L.Dense(8)(x)
    return keras.Model(x, L.Dense(3)(L.Add()([L.Dropout(0.5)(h), h])))


def _op_on_dropped():
    x = keras.Input((6,))
    return keras.Model(x, L.Dense(3)(ops.tanh(L.Dropout(0.5)(x))))


def _shared_layers_only():
    x = keras.Input((6,))
    shared = L.Dense(6)
    return keras.Model(x, L.Add()([shared(L.Dropout(0.5)(x)), shared(x)]))


def _nested():
    inner = keras.Sequential([keras.Input((8,)), L.Dropout(0.5), L.Dense(8)])
    x = keras.Input((6,))
    return keras.Model(x, L.Dense(3)(inner(L.Dense(8)(x))))


REFUSED = [
    ("UnitNormalization", lambda: _chain(L.UnitNormalization()), "1e-12 hard-coded"),
    ("tanh", lambda: _chain(L.Activation("tanh")), "homogeneous"),
    ("ReLU max_value", lambda: _chain(L.ReLU(max_value=6.0)), "homogeneous"),
    ("GaussianNoise", lambda: _chain(L.GaussianNoise(0.1)), "adds noise"),
    ("Add with undropped branch", _add_undropped, "different factors"),
    ("dropout as output", lambda: _chain(output=False), "model output"),
    ("shared kernel", _shared_layers_only, "dropped input and on an undropped"),
    ("keras op on dropped tensor", _op_on_dropped, "only known Keras layers"),
    ("nested model with dropout", _nested, "nested model"),
]


def test_normalisations_and_recurrent_layers_absorb_the_factor():
    """BatchNorm / LayerNorm (epsilon map), an LSTM (its input kernel): consumers of their kind."""
    for layer, kind in (
        (L.BatchNormalization(), conversion.BATCH_NORMALIZATION),
        (L.LayerNormalization(), conversion.NORMALIZATION_EPSILON),
        (L.GroupNormalization(groups=2), conversion.NORMALIZATION_EPSILON),
    ):
        (consumer,) = conversion.dropout_consumers(_chain(layer))
        assert consumer.kind == kind and consumer.layer is layer and consumer.keep_prob == 0.5
    x = keras.Input((5, 6))
    lstm = L.LSTM(3)
    (consumer,) = conversion.dropout_consumers(keras.Model(x, lstm(L.Dropout(0.5)(x))))
    assert consumer.kind == conversion.RECURRENT_INPUT_KERNEL and consumer.variables == (lstm.cell.kernel,)


@pytest.mark.parametrize("build, why", [pytest.param(b, w, id=i) for i, b, w in REFUSED])
def test_unconvertible_graphs_are_refused(build, why):
    with pytest.raises(NotConvertibleError, match=why):
        conversion.dropout_consumers(build())


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(3)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 6)))
    with pytest.raises(TypeError, match="subclassed"):
        conversion.dropout_consumers(net)


def test_convert_weights_checks_the_twins():
    with pytest.raises(ValueError, match="needs inverted dropout"):
        conversion.convert_weights(mlp("standard"), mlp("standard"), "to_standard")
    other = keras.Sequential(
        [
            keras.Input((6,)),
            StandardDropout(0.3),
            L.Dense(8, activation="relu"),
            StandardDropout(0.5),
            L.Dense(3),
        ]
    )
    with pytest.raises(ValueError, match="rate"):
        conversion.convert_weights(mlp("inverted"), other, "to_standard")
    with pytest.raises(ValueError, match="direction"):
        conversion.convert_weights(mlp("inverted"), mlp("standard"), "standard")


# --------------------------------------------------- penalties, constraints


@settings(max_examples=40, deadline=None)
@given(
    w=hnp.arrays(np.float64, (5, 3), elements=st.floats(-3, 3, allow_subnormal=False)),
    p=st.floats(0.05, 1.0),
    lam=st.floats(1e-6, 1.0),
    direction=st.sampled_from(["to_standard", "to_inverted"]),
)
def test_scalar_maps_leave_the_penalty_and_the_projection_unchanged(w, p, lam, direction):
    """What the maps are for, not their formulas: with W_tgt = s W (s = 1/p to standard,
    p to inverted) the mapped L2 and L1 penalties equal the source's, and the mapped
    max-norm projection is s times the source's projection. Each side is a few
    float64 operations: 16 eps relative (or 1e-300 absolute for a zero W) bounds the
    rounding; a map off by one factor of p is off by >= 5 % here (p <= 0.95 drawn
    or the factor is 1, where every map is the identity)."""
    s = conversion.kernel_scale(p, direction)
    tol = 16 * np.finfo(np.float64).eps
    l2, l1 = conversion.map_l2(lam, p, direction), conversion.map_l1(lam, p, direction)
    assert math.isclose(l2 * np.sum((s * w) ** 2), lam * np.sum(w**2), rel_tol=tol, abs_tol=1e-300)
    assert math.isclose(l1 * np.sum(np.abs(s * w)), lam * np.sum(np.abs(w)), rel_tol=tol, abs_tol=1e-300)
    c = 1.0
    src = np.asarray(conversion.EquivariantMaxNorm(c)(w))
    tgt = np.asarray(conversion.EquivariantMaxNorm(conversion.map_max_norm(c, p, direction))(s * w))
    np.testing.assert_allclose(tgt, s * src, rtol=tol, atol=1e-300)


def test_scalar_maps_refuse_a_rate_for_a_keep_prob():
    with pytest.raises(ValueError, match="keep_prob"):
        conversion.map_l2(0.01, 1.5, "to_standard")


@pytest.mark.parametrize(
    "reg",
    [keras.regularizers.L2(0.01), keras.regularizers.L1(0.02), keras.regularizers.L1L2(l1=0.03, l2=0.01)],
    ids=["L2", "L1", "L1L2"],
)
def test_mapped_regularizer_gives_the_same_penalty_and_rescaled_gradient(reg):
    p = 0.7
    w = tf.Variable(_rng.normal(size=(8, 3)))
    w_std = tf.Variable(w / p)
    mapped = conversion.map_regularizer(reg, p, "to_standard")
    assert type(mapped) is type(reg)
    with tf.GradientTape(persistent=True) as tape:
        a, b = reg(w), mapped(w_std)
    # The penalty of the float32-rounded factor vs its float64 map: exact.
    assert abs(float(a) - float(b)) <= 1e-15 * abs(float(a))
    ga, gb = tape.gradient(a, w).numpy(), tape.gradient(b, w_std).numpy()
    np.testing.assert_allclose(gb, p * ga, rtol=1e-14)  # g_std = p g_inv
    again = keras.regularizers.deserialize(keras.regularizers.serialize(mapped))
    assert type(again) is type(reg)
    with pytest.raises(NoExactMapError, match="no map derived"):
        conversion.map_regularizer(keras.regularizers.OrthogonalRegularizer(), p, "to_standard")


def test_equivariant_max_norm_is_exact_and_keras_max_norm_is_not():
    w = _rng.normal(size=(8, 4))
    w[:, 1] *= 0.01  # one column inside the bound
    w[:, 2] = 0.0  # and a zero column
    c, s = 0.5, 1 / 0.7
    ours = conversion.EquivariantMaxNorm(c)
    a = ops.convert_to_numpy(ours(w))
    b = ops.convert_to_numpy(conversion.EquivariantMaxNorm(c * s)(s * w))
    np.testing.assert_allclose(b, s * a, rtol=1e-15, atol=0)
    assert np.array_equal(a[:, 1], w[:, 1]) and np.all(a[:, 2] == 0)
    np.testing.assert_allclose(np.linalg.norm(a, axis=0)[[0, 3]], c, rtol=1e-15)
    theirs = keras.constraints.MaxNorm(c)
    ka = ops.convert_to_numpy(theirs(w))
    kb = ops.convert_to_numpy(keras.constraints.MaxNorm(c * s)(s * w))
    assert np.max(np.abs(kb - s * ka)) / np.max(np.abs(ka)) > 1e-9  # the 1e-7 epsilon
    assert not np.array_equal(ka[:, 1], w[:, 1])  # shrinks in-bound columns


def test_map_constraint():
    mapped = conversion.map_constraint(conversion.EquivariantMaxNorm(2.0, axis=0), 0.5, "to_standard")
    assert isinstance(mapped, conversion.EquivariantMaxNorm) and mapped.max_value == 4.0
    non_neg = conversion.map_constraint("non_neg", 0.5, "to_standard")
    assert isinstance(non_neg, keras.constraints.NonNeg)
    assert conversion.map_constraint(None, 0.5, "to_standard") is None
    with pytest.raises(NoExactMapError, match="epsilon"):
        conversion.map_constraint(keras.constraints.MaxNorm(2.0), 0.5, "to_standard")
    with pytest.raises(NoExactMapError, match="UnitNorm"):
        conversion.map_constraint(keras.constraints.UnitNorm(), 0.5, "to_standard")


INITS = [
    keras.initializers.RandomNormal(mean=0.1, stddev=0.3, seed=1),
    keras.initializers.TruncatedNormal(stddev=0.3, seed=2),
    keras.initializers.RandomUniform(-0.2, 0.4, seed=3),
    keras.initializers.GlorotUniform(seed=4),
    keras.initializers.HeNormal(seed=5),
    keras.initializers.Orthogonal(gain=2.0, seed=6),
    keras.initializers.Constant(0.3),
    keras.initializers.Ones(),
    keras.initializers.Identity(),
]


@pytest.mark.parametrize("init", INITS, ids=lambda i: type(i).__name__)
@pytest.mark.parametrize("direction", ["to_standard", "to_inverted"])
def test_mapped_initializer_draws_s_times_the_source(init, direction):
    """A plain Keras initializer (no project class in a saved config) drawing s times the source.

    In memory: to float64 rounding, ``4 eps`` of the largest draw (``s`` enters
    each draw through one or two extra roundings). From a saved config, Keras
    rounds a constant and uniform bounds through float32 (relative ``2**-24``
    each, so ``2**-23`` for a draw).
    """
    p = 0.7
    s = 1 / p if direction == "to_standard" else p
    mapped = conversion.map_initializer(init, p, direction, shape=(8, 8))
    # Keras's Identity loses its gain in a config: that one stays a ScaledInitializer
    plain = not isinstance(init, keras.initializers.Identity)
    assert type(mapped).__module__.startswith("keras.src.") == plain, type(mapped)
    a = s * ops.convert_to_numpy(init((8, 8), dtype="float64"))
    b = ops.convert_to_numpy(mapped((8, 8), dtype="float64"))
    assert np.max(np.abs(b - a)) <= 4 * EPS * np.max(np.abs(a))
    again = keras.initializers.deserialize(keras.initializers.serialize(mapped))
    c = ops.convert_to_numpy(again((8, 8), dtype="float64"))
    assert np.max(np.abs(c - a)) <= 2.0**-23 * np.max(np.abs(a))


def test_an_initializer_without_a_plain_map_is_scaled_draw_for_draw():
    """No shape for a uniform VarianceScaling (or an unknown initializer): ScaledInitializer."""
    init = keras.initializers.GlorotUniform(seed=4)
    mapped = conversion.map_initializer(init, 0.5, "to_standard")
    assert type(mapped) is conversion.ScaledInitializer
    np.testing.assert_array_equal(
        ops.convert_to_numpy(mapped((3, 3), dtype="float64")),
        2 * ops.convert_to_numpy(init((3, 3), dtype="float64")),
    )


def test_mapped_initializer_scales_sigma():
    """sigma -> sigma/p in distribution: the std of 40 000 draws."""
    p, sigma = 0.6, 0.3
    mapped = conversion.map_initializer(
        keras.initializers.RandomNormal(stddev=sigma, seed=9), p, "to_standard"
    )
    draws = ops.convert_to_numpy(mapped((200, 200), dtype="float64"))
    se = sigma / p / np.sqrt(2 * draws.size)  # standard error of a sample std
    assert abs(draws.std() - sigma / p) < 5 * se
