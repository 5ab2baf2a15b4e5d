"""Tests of dropout_lib.book.keras_trajectories: recording ``model.fit`` and comparing twins.

A Keras net with ``keras.layers.Dropout(rate)`` and its mapped twin with the
paper's dropout (``W / p``, shared masks) trained by ``model.fit`` in float64,
the twin with the mapped optimizer, must follow the same trajectory; with the
same optimizer they must not. ``keep_prob`` is ``p = 1 - rate``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dropout_lib import mapping, twins  # noqa: E402
from dropout_lib.book.keras_trajectories import fit_trajectory, trajectory_gaps  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("keras_float64"),  # tests/conftest.py
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]
RATE = 0.3  # Keras's drop probability; keep_prob p = 0.7
STEPS = 8
_rng = np.random.default_rng(3)
X = _rng.normal(size=(16, 4))
Y = _rng.normal(size=(16, 2))


def net(rate: float = RATE) -> keras.Model:
    init = keras.initializers
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(
                6,
                "relu",
                kernel_initializer=init.HeNormal(1),
                bias_initializer=init.RandomNormal(stddev=0.1, seed=2),
            ),
            keras.layers.Dropout(rate, seed=3),
            keras.layers.Dense(2, kernel_initializer=init.HeNormal(4)),
        ]
    )


def test_snapshots_start_at_the_initial_weights_and_move():
    model = net()
    w0 = [v.numpy().copy() for v in model.trainable_variables]
    history = fit_trajectory(model, keras.optimizers.SGD(0.1), X, Y, steps=STEPS)
    assert len(history) == STEPS + 1
    assert all(np.array_equal(a, b) for a, b in zip(history[0], w0))
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(history[-1], model.trainable_variables))
    assert not np.array_equal(history[1][0], history[0][0])


def test_mapped_twin_follows_the_same_trajectory_and_control_does_not():
    inv = net()
    std = twins.mapped_twin(inv, "standard")
    control = twins.mapped_twin(inv, "standard")
    opt = keras.optimizers.RMSprop(2**-6, epsilon=2**-10)
    std_opt = mapping.mapped_multi_optimizer(std, opt, "to_standard")  # before opt trains
    ref = fit_trajectory(inv, opt, X, Y, steps=STEPS)
    mapped = fit_trajectory(std, std_opt, X, Y, steps=STEPS)
    gaps = trajectory_gaps(ref, mapped, std, "to_inverted")
    assert gaps.shape == (STEPS + 1,)
    assert gaps.max() < 1e-12, f"mapped twin off by {gaps.max():.1e}"
    same = fit_trajectory(control, mapping.clone_optimizer(opt), X, Y, steps=STEPS)
    assert trajectory_gaps(ref, same, control, "to_inverted")[-1] > 1e-4


def test_gaps_use_the_direction():
    inv = net()
    std = twins.mapped_twin(inv, "standard")
    w_inv = [v.numpy() for v in inv.trainable_variables]
    w_std = [v.numpy() for v in std.trainable_variables]
    assert trajectory_gaps([w_inv], [w_std], std, "to_inverted")[0] < 1e-15
    assert trajectory_gaps([w_std], [w_inv], inv, "to_standard")[0] < 1e-15
    assert trajectory_gaps([w_inv], [w_std], std, "to_standard")[0] > 0.5


def test_bad_arguments_raise():
    model = net()
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        fit_trajectory(model, keras.optimizers.SGD(0.1), X, Y, steps=0)
    with pytest.raises(ValueError, match="same positive number"):
        fit_trajectory(model, keras.optimizers.SGD(0.1), X, Y[:3], steps=1)
    w = [v.numpy() for v in model.trainable_variables]
    with pytest.raises(ValueError, match="snapshots"):
        trajectory_gaps([w], [w, w], model, "to_inverted")
    with pytest.raises(ValueError, match="direction"):
        trajectory_gaps([w], [w], model, "sideways")
