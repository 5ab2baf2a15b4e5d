"""Tests of dropout_lib.twins: twin Keras models on shared masks, and the same-function map.

``keep_prob`` is ``p``; every Keras layer here takes Keras's ``rate = 1 - p``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dropout_lib import twins  # noqa: E402
from dropout_lib.conversion import NotConvertibleError, dropout_consumers  # noqa: E402
from dropout_lib.exact import mlp
from dropout_lib.layers import StandardDropout  # noqa: E402

L = keras.layers
F64 = "float64"
RNG = np.random.default_rng(2014)
X_DENSE = RNG.normal(size=(16, 6))
X_IMAGE = RNG.normal(size=(4, 7, 7, 3))
X_SEQ = RNG.normal(size=(4, 9, 5))
WRONG = 1e-3  # every wrong map below is off by O(1 - p) >= 0.1 relative


def _bias(seed: int) -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(stddev=0.5, seed=seed)


def dense_net(rates=(0.2, 0.5, 0.3), dtype=F64, seeds=(1, 2, 3)) -> keras.Model:
    """Input dropout and dropout after each hidden layer (rate = 1 - p)."""
    return keras.Sequential(
        [
            keras.Input((6,), dtype=dtype),
            L.Dropout(rates[0], seed=seeds[0], dtype=dtype),
            L.Dense(
                8,
                "relu",
                kernel_initializer=keras.initializers.HeNormal(10),
                bias_initializer=_bias(11),
                dtype=dtype,
            ),
            L.Dropout(rates[1], seed=seeds[1], dtype=dtype),
            L.Dense(
                8,
                "tanh",
                kernel_initializer=keras.initializers.HeNormal(12),
                bias_initializer=_bias(13),
                dtype=dtype,
            ),
            L.Dropout(rates[2], seed=seeds[2], dtype=dtype),
            L.Dense(
                3, kernel_initializer=keras.initializers.HeNormal(14), bias_initializer=_bias(15), dtype=dtype
            ),
        ]
    )


def functional_net(dtype=F64) -> keras.Model:
    """Two dropped branches (different rates) merged after their consumers."""
    x = keras.Input((6,), dtype=dtype)
    a = L.Dense(5, bias_initializer=_bias(1), dtype=dtype)(L.Dropout(0.4, seed=5, dtype=dtype)(x))
    b = L.Dense(5, bias_initializer=_bias(2), dtype=dtype)(L.Dropout(0.1, seed=6, dtype=dtype)(x))
    h = L.Activation("sigmoid", dtype=dtype)(L.Add(dtype=dtype)([a, b]))
    y = L.Dense(3, bias_initializer=_bias(3), dtype=dtype)(L.Dropout(0.25, seed=7, dtype=dtype)(h))
    return keras.Model(x, y)


def conv_net(dtype=F64) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((7, 7, 3), dtype=dtype),
            L.SpatialDropout2D(0.3, seed=8, dtype=dtype),
            L.Conv2D(4, 3, activation="relu", bias_initializer=_bias(4), dtype=dtype),
            L.MaxPooling2D(dtype=dtype),
            L.Flatten(dtype=dtype),
            L.Dropout(0.5, seed=9, dtype=dtype),
            L.Dense(3, bias_initializer=_bias(5), dtype=dtype),
        ]
    )


def seq_net(dtype=F64) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((9, 5), dtype=dtype),
            L.SpatialDropout1D(0.4, seed=10, dtype=dtype),
            L.Conv1D(4, 3, bias_initializer=_bias(6), dtype=dtype),
            L.GlobalAveragePooling1D(dtype=dtype),
            L.Dense(2, bias_initializer=_bias(7), dtype=dtype),
        ]
    )


def _tol(model: keras.Model, dtype=F64) -> float:
    return twins.rounding_tolerance(len(dropout_consumers(model)), dtype)


# ------------------------------------------------------------- the twins


def test_twin_swaps_every_dropout_and_keeps_rate_seed_dtype_name():
    model = dense_net()
    std = twins.twin(model, "standard")
    pairs = list(zip(twins.dropout_layers(model), twins.dropout_layers(std)))
    assert len(pairs) == 3
    for a, b in pairs:
        assert type(a) is L.Dropout and type(b) is StandardDropout
        assert (b.rate, b.seed, b.name, b.dtype) == (a.rate, a.seed, a.name, a.dtype)
        assert b.keep_prob == pytest.approx(1.0 - a.rate)
    # weights copied, not rescaled
    for wa, wb in zip(model.get_weights(), std.get_weights()):
        assert np.array_equal(wa, wb)
    back = twins.twin(std, "inverted")
    assert [type(layer) for layer in twins.dropout_layers(back)] == [L.Dropout] * 3


@pytest.mark.parametrize(
    "layer, expected",
    [
        (L.SpatialDropout1D(0.2), (None, 1, None)),
        (L.SpatialDropout2D(0.2), (None, 1, 1, None)),
        (L.SpatialDropout2D(0.2, data_format="channels_first"), (None, None, 1, 1)),
        (L.SpatialDropout3D(0.2), (None, 1, 1, 1, None)),
        (L.SpatialDropout3D(0.2, data_format="channels_first"), (None, None, 1, 1, 1)),
    ],
)
def test_spatial_noise_shape(layer, expected):
    assert twins.spatial_noise_shape(layer) == expected


@pytest.mark.parametrize(
    "spatial, x",
    [
        (lambda: L.SpatialDropout1D(0.4, seed=3, dtype=F64), X_SEQ),
        (lambda: L.SpatialDropout2D(0.4, seed=3, dtype=F64), X_IMAGE),
        (lambda: L.SpatialDropout2D(0.4, seed=3, data_format="channels_first", dtype=F64), X_IMAGE),
        (lambda: L.SpatialDropout3D(0.4, seed=3, dtype=F64), X_IMAGE[..., None]),
    ],
)
def test_spatial_dropout_draws_the_masks_of_dropout_with_noise_shape(spatial, x):
    layer = spatial()
    ns = twins.spatial_noise_shape(layer)
    masks = twins.drawn_masks(layer, x)
    for other in (
        L.Dropout(0.4, noise_shape=ns, seed=3, dtype=F64),
        StandardDropout(0.4, noise_shape=ns, seed=3, dtype=F64),
    ):
        for m, n in zip(masks, twins.drawn_masks(other, x)):
            assert np.array_equal(m, n)
    # whole feature maps: the mask is constant over every spatial axis
    axes = tuple(i for i, d in enumerate(ns) if d == 1)
    whole_maps = np.broadcast_to(masks[0].max(axis=axes, keepdims=True), x.shape)
    assert np.array_equal(masks[0], whole_maps)
    # and different seeds give different masks (the comparison can fail)
    assert not all(
        np.array_equal(m, n) for m, n in zip(masks, twins.drawn_masks(spatial().__class__(0.4, seed=4), x))
    )


def test_masks_are_shared_even_without_seeds_and_after_earlier_calls():
    model = keras.Sequential([keras.Input((6,), dtype=F64), L.Dropout(0.5, dtype=F64), L.Dense(3, dtype=F64)])
    model(X_DENSE, training=True)  # advance the source's generator first
    std = twins.twin(model, "standard")
    a, b = twins.dropout_layers(model)[0], twins.dropout_layers(std)[0]
    assert a.seed is None
    for m, n in zip(twins.drawn_masks(a, X_DENSE), twins.drawn_masks(b, X_DENSE)):
        assert np.array_equal(m, n)


# ------------------------------------------------ the same function (PLAN #1)


@pytest.mark.parametrize(
    "build, x", [(dense_net, X_DENSE), (functional_net, X_DENSE), (conv_net, X_IMAGE), (seq_net, X_SEQ)]
)
def test_mapped_twin_computes_the_same_function(build, x):
    inv = build()
    std = twins.mapped_twin(inv, "standard")
    result = twins.compare_twins(std, inv, x, training_calls=2)  # predict: training=False
    assert result.worst < _tol(inv), result
    # and back: the inverted twin of the standard net is the original function
    again = twins.mapped_twin(std, "inverted")
    assert twins.compare_twins(again, std, x, training_calls=2, predict=False).worst < _tol(inv)


def test_channels_first_spatial_dropout_through_permute():
    """channels_first masks; Permute carries the factor to a channels_last Conv2D."""
    x = np.moveaxis(X_IMAGE, -1, 1)
    inv = keras.Sequential(
        [
            keras.Input((3, 7, 7), dtype=F64),
            L.SpatialDropout2D(0.3, seed=8, data_format="channels_first", dtype=F64),
            L.Permute((2, 3, 1), dtype=F64),
            L.Conv2D(4, 3, bias_initializer=_bias(4), dtype=F64),
            L.GlobalMaxPooling2D(dtype=F64),
        ]
    )
    std = twins.mapped_twin(inv, "standard")
    assert twins.compare_twins(std, inv, x, training_calls=2, predict=False).worst < _tol(inv)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rates=st.tuples(*[st.floats(0.05, 0.8)] * 3), seed=st.integers(0, 2**31 - 1))
def test_same_function_for_any_rates(rates, seed):
    inv = dense_net(rates, seeds=(seed, seed + 1, seed + 2))
    std = twins.mapped_twin(inv, "standard")
    assert twins.compare_twins(std, inv, X_DENSE, training_calls=1, predict=False).worst < _tol(inv)


def test_rate_one_half_is_bit_exact():
    """p = 1/2: x / p and W / p are exact (a power of two), so both nets round alike."""
    inv = dense_net((0.5, 0.5, 0.5))
    std = twins.mapped_twin(inv, "standard")
    assert twins.compare_twins(std, inv, X_DENSE, predict=False).bitwise
    # not so for p = 0.7: 1/p is not a power of two
    inv = dense_net((0.3, 0.3, 0.3))
    std = twins.mapped_twin(inv, "standard")
    assert not twins.compare_twins(std, inv, X_DENSE, predict=False).bitwise


def test_float32_agrees_to_float32_rounding_only():
    inv = dense_net(dtype="float32")
    std = twins.mapped_twin(inv, "standard")
    x = X_DENSE.astype("float32")
    result = twins.compare_twins(std, inv, x, training_calls=2, predict=False)
    assert result.worst < _tol(inv, "float32")
    assert result.worst > _tol(inv, F64)  # it really ran in float32


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    kp=st.tuples(*[st.floats(0.2, 0.95)] * 3),
    activation=st.sampled_from(["relu", "tanh", "sigmoid"]),
)
def test_compare_mlp_twins(seed, kp, activation):
    """numpy float64 twins: same function to 4 K eps; scaled biases break it."""
    sizes = (5, 8, 6, 3)
    rng = np.random.default_rng(seed)
    params = mlp.init_params(sizes, rng, bias_scale=0.5)
    x = rng.normal(size=(10, 5))
    kw = dict(keep_probs=kp, masks=mlp.sample_masks(sizes, kp, 10, rng), activation=activation)
    result = twins.compare_mlp_twins(params, x, **kw)
    assert len(result.training) == 1
    assert result.worst < twins.rounding_tolerance(3, F64)
    bad = twins.compare_mlp_twins(params, x, scale_biases=True, **kw)
    assert min(bad.training + (bad.inference,)) > WRONG


def test_compare_mlp_twins_bitwise_for_one_half():
    sizes, kp = (5, 8, 6, 3), (0.5, 0.5, 0.5)
    rng = np.random.default_rng(0)
    params = mlp.init_params(sizes, rng, bias_scale=0.5)
    masks = mlp.sample_masks(sizes, kp, 10, rng)
    assert twins.compare_mlp_twins(params, rng.normal(size=(10, 5)), keep_probs=kp, masks=masks).bitwise


# ------------------------------------------------------ negative controls


def test_scaling_the_biases_too_breaks_it():
    inv = dense_net()
    bad = twins.mapped_twin(inv, "standard")
    assert twins.scale_consumer_biases(bad, "to_standard") == 3
    result = twins.compare_twins(bad, inv, X_DENSE, training_calls=2, predict=False)
    assert min(result.training + (result.inference,)) > WRONG


def test_unmapped_twin_differs_and_other_seeds_differ():
    inv = dense_net()
    same_weights = twins.twin(inv, "standard")
    result = twins.compare_twins(same_weights, inv, X_DENSE, training_calls=1, predict=False)
    assert result.worst > WRONG
    other_masks = twins.mapped_twin(inv, "standard")
    for layer in twins.dropout_layers(other_masks):
        layer.seed_generator.state.assign(np.array([99, 0]))
    result = twins.compare_twins(other_masks, inv, X_DENSE, training_calls=1, predict=False)
    assert result.training[0] > WRONG and result.inference < _tol(inv)


# ------------------------------------------------------------- validation


def test_clear_errors():
    inv = dense_net()
    std = twins.twin(inv, "standard")
    with pytest.raises(ValueError, match="variant must be"):
        twins.twin(inv, "paper")
    with pytest.raises(ValueError, match="already has standard dropout"):
        twins.twin(std, "standard")
    with pytest.raises(ValueError, match="already has inverted dropout"):
        twins.twin(inv, "inverted")

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="subclassed"):
        twins.twin(Sub(), "standard")

    class MyDropout(L.Dropout):
        pass

    odd = keras.Sequential([keras.Input((6,)), MyDropout(0.5), L.Dense(2)])
    with pytest.raises(TypeError, match="MyDropout"):
        twins.twin(odd, "standard")
    with pytest.raises(ValueError, match="dropout layers"):
        twins.share_masks(inv, keras.Sequential([keras.Input((6,)), L.Dense(2)]))
    with pytest.raises(ValueError, match="rate"):
        twins.share_masks(inv, dense_net((0.2, 0.5, 0.4)))
    with pytest.raises(ValueError, match="zero entries"):
        twins.drawn_masks(L.Dropout(0.5), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="calls"):
        twins.drawn_masks(L.Dropout(0.5), X_DENSE, calls=0)
    with pytest.raises(ValueError, match="training_calls"):
        twins.compare_twins(inv, std, X_DENSE, training_calls=-1)
    with pytest.raises(ValueError, match="n_consumers"):
        twins.rounding_tolerance(0, F64)
    with pytest.raises(ValueError, match="shapes differ"):
        twins.relative_difference(np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="direction"):
        twins.scale_consumer_biases(inv, "sideways")
    tanh_after_dropout = keras.Sequential(
        [keras.Input((6,)), L.Dropout(0.5), L.Activation("tanh"), L.Dense(2)]
    )
    with pytest.raises(NotConvertibleError, match="tanh|homogeneous"):
        twins.mapped_twin(tanh_after_dropout, "standard")


def test_rounding_tolerance_values():
    assert twins.rounding_tolerance(3, F64) == 12 * 2.0**-52
    assert twins.rounding_tolerance(1, "float32") == 4 * 2.0**-23
