"""Tests of dropout_lib.book.layernorm_checks and the LayerNorm map on Keras's own layers.

Notation: keep_prob = p (the paper's); Keras's rate = 1 - p.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dropout_lib.book import layernorm_checks as lc
from dropout_lib.book.variance_checks import weight_gap
from dropout_lib.theory import variance_shift as vs

P, EPS = 0.6, 1e-3


def _dropped(rng):
    """The same mask through Keras's Dropout and the paper's StandardDropout (float64)."""
    import keras

    from dropout_lib.layers import StandardDropout

    h = np.abs(rng.normal(size=(64, 8)))
    inv = keras.layers.Dropout(1 - P, seed=3, dtype="float64")
    std = StandardDropout(1 - P, seed=3, dtype="float64")
    return np.asarray(inv(h, training=True)), np.asarray(std(h, training=True))


@pytest.mark.parametrize("rms_scaling", [False, True])
def test_keras_layernorm_with_p2_eps_after_paper_dropout_equals_keras_dropout(rms_scaling):
    import keras

    rng = np.random.default_rng(0)
    y_inv, y_std = _dropped(rng)
    assert np.abs(P * y_inv - y_std).max() < 1e-15  # same mask
    layers = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rms_scaling is deprecated in Keras 3.15
        for name, eps in (("inv", EPS), ("std", vs.equivalent_layernorm_epsilon(P, EPS)), ("same", EPS)):
            layers[name] = keras.layers.LayerNormalization(
                epsilon=eps, rms_scaling=rms_scaling, dtype="float64"
            )
            layers[name].build((None, 8))
        weights = [rng.normal(size=w.shape) for w in layers["inv"].get_weights()]
        for layer in layers.values():
            layer.set_weights(weights)
        out = {n: np.asarray(layers[n](y_inv if n == "inv" else y_std)) for n in layers}
    assert np.abs(out["std"] - out["inv"]).max() < 1e-14
    assert np.abs(out["same"] - out["inv"]).max() > 1e-4
    gamma = weights[0]
    beta = None if rms_scaling else weights[1]
    ref = vs.layernorm(y_inv, EPS, gamma, 0.0 if beta is None else beta, rms_scaling=rms_scaling)
    assert np.abs(out["inv"] - ref).max() < 1e-14  # the numpy form is Keras's


def test_fit_ln_nets_mapped_equals_inverted_and_unmapped_differs():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 5))
    y = np.sin(x @ rng.normal(size=5))[:, None]
    configs = {
        "inverted": ("inverted", EPS),
        "mapped": ("standard", vs.equivalent_layernorm_epsilon(P, EPS)),
        "same": ("standard", EPS),
    }
    nets = lc.fit_ln_nets(configs, P, x, y, epochs=2, batch_size=16, learning_rate=1e-2)
    steps = 2 * 64 // 16
    tol = 30 * steps * 2.0**-53
    x_new = rng.normal(size=(32, 5))
    pred = {n: np.asarray(net(x_new)) for n, net in nets.items()}
    assert weight_gap(nets["mapped"], nets["inverted"]) < tol
    assert np.abs(pred["mapped"] - pred["inverted"]).max() < tol
    assert weight_gap(nets["same"], nets["inverted"]) > 1e-6
    with pytest.raises(ValueError):
        lc.fit_ln_nets({}, P, x, y, epochs=1, batch_size=16, learning_rate=1e-2)
