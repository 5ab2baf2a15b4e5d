"""Keras check of the LayerNorm map: dropout before ``LayerNormalization``, trained by ``fit``.

Notation: ``keep_prob`` is the paper's ``p``; Keras's ``rate`` is ``1 - p``.

The map (:func:`dropout_lib.theory.variance_shift.equivalent_layernorm_epsilon`):
LayerNorm with ``epsilon`` after inverted dropout computes what LayerNorm with
``p^2 epsilon`` after the paper's dropout computes, on the same masks, when the
dropped tensor reaches LayerNorm through bias-free, positively homogeneous
layers. :func:`fit_ln_nets` trains such nets with ``model.fit`` from the same
weights, so a chapter can compare their weights
(:func:`dropout_lib.book.variance_checks.weight_gap`) and predictions.
Keras is imported only inside the functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from dropout_lib.reference import check_keep_prob, check_variant

__all__ = ["ln_regression_net", "fit_ln_nets"]


def ln_regression_net(
    variant: str, rate: float, epsilon: float, n_in: int, *, rms_scaling: bool = False
) -> Any:
    """``Dense(16, relu) -> dropout -> Dense(8, use_bias=False) -> LayerNormalization -> ReLU -> Dense(1)``.

    In float64. ``variant="inverted"`` is ``keras.layers.Dropout(rate)``,
    ``"standard"`` the paper's :class:`dropout_lib.layers.StandardDropout(rate)`;
    both with seed 5, hence the same masks in every net built here. The
    ``Dense`` between dropout and LayerNorm has no bias, as the map requires.
    """
    import keras

    from dropout_lib.layers import StandardDropout

    f64 = "float64"
    cls = keras.layers.Dropout if check_variant(variant) == "inverted" else StandardDropout
    norm = keras.layers.LayerNormalization(epsilon=epsilon, rms_scaling=rms_scaling, dtype=f64)
    return keras.Sequential(
        [
            keras.Input((n_in,), dtype=f64),
            keras.layers.Dense(16, activation="relu", dtype=f64),
            cls(rate, seed=5, dtype=f64),
            keras.layers.Dense(8, use_bias=False, dtype=f64),
            norm,
            keras.layers.ReLU(dtype=f64),
            keras.layers.Dense(1, dtype=f64),
        ]
    )


def fit_ln_nets(
    configs: Mapping[str, tuple[str, float]],
    keep_prob: float,
    x: ArrayLike,
    y: ArrayLike,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Train copies of :func:`ln_regression_net` by ``model.fit``; return them by name.

    ``configs`` maps a name to ``(variant, epsilon)``. Every net starts from the
    first net's weights (LayerNorm's ``gamma = 1``, ``beta = 0`` included, and
    trained like every other weight), sees the same batches (``shuffle=False``)
    and masks, and is trained with Adam at the same ``learning_rate`` (MSE) for
    ``epochs``: the optimizer is not mapped. When ``batch_size`` divides the
    number of rows, the epochs run as one ``fit`` epoch over ``epochs`` copies
    of the data (the same batches in the same order, less overhead).
    """
    import keras

    from dropout_lib.book.keras_trajectories import build_optimizer

    p = check_keep_prob(keep_prob)
    if not configs:
        raise ValueError("configs is empty; give at least one name: (variant, epsilon).")
    keras.utils.set_random_seed(seed)
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(xs) % int(batch_size) == 0:
        xs, ys, epochs = np.tile(xs, (epochs, 1)), np.tile(ys, (epochs, 1)), 1
    nets = {name: ln_regression_net(v, 1.0 - p, eps, xs.shape[1]) for name, (v, eps) in configs.items()}
    start = next(iter(nets.values())).get_weights()
    for net in nets.values():
        net.set_weights(start)
        net.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", jit_compile=False)
        build_optimizer(net)  # before fit: the train step is traced once
        net.fit(xs, ys, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    return nets
