"""Record the weights Keras's ``model.fit`` visits, and compare two such trajectories.

Notation: ``keep_prob`` is the paper's ``p``; Keras's ``rate`` is ``1 - p``.

:func:`fit_trajectory` runs real ``model.fit`` (the compiled train step,
callbacks and all) full batch for a given number of steps and returns the
trainable weights before the first step and after every step.
:func:`build_optimizer` builds a compiled model's optimizer before ``fit``, so
that the train step is traced once. :func:`trajectory_gaps` maps one model's
snapshots into the other's coordinates (the consuming kernels times ``s``, see
:func:`dropout_lib.mapping.kernel_scale`) and returns the relative gap at
every step, as :func:`dropout_lib.exact.compare.trajectory_gaps` does for the numpy
nets:

    gaps[t] = max_variable || s * W_other[t] - W_ref[t] || / || W_ref[t] ||.

Both models must draw the same dropout masks at every step: build the twin
with :func:`dropout_lib.twins.mapped_twin`, which shares the generators'
states, and fit both the same number of steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from numpy.typing import ArrayLike, NDArray

from dropout_lib.conversion import dropout_consumers
from dropout_lib.mapping import Direction, check_direction, kernel_scale

Snapshot = list[NDArray]

__all__ = ["WeightRecorder", "build_optimizer", "fit_trajectory", "trajectory_gaps"]


class WeightRecorder(keras.callbacks.Callback):
    """A callback that keeps a copy of the trainable weights after every batch.

    ``snapshots[0]`` holds the weights when training begins and
    ``snapshots[t]`` those after the ``t``-th batch, in the order of
    ``model.trainable_variables``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.snapshots: list[Snapshot] = []

    def _record(self) -> None:
        # Variable.numpy(): the same values as ops.convert_to_numpy(v.value), read for less per step
        self.snapshots.append([np.array(v.numpy()) for v in self.model.trainable_variables])

    def on_train_begin(self, logs: Any = None) -> None:
        self.snapshots = []
        self._record()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._record()


def build_optimizer(model: keras.Model) -> None:
    """Create the compiled optimizer's variables for ``model``'s trainable variables, if not yet built.

    Keras's TensorFlow trainer otherwise builds the optimizer inside the first
    trace of the train step; a ``tf.function`` that creates variables while
    tracing is traced a second time, so ``fit`` pays for two traces. Building
    it first changes no value: the optimizer makes the same variables with the
    same initial values, for the same variables in the same order, as it would
    on its first ``apply``. Call it after ``model.compile``.
    """
    optimizer = model.optimizer
    if optimizer is None:
        raise ValueError("compile the model first: it has no optimizer to build.")
    if not optimizer.built:
        optimizer.build(model.trainable_variables)


def fit_trajectory(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    x: ArrayLike,
    y: ArrayLike,
    *,
    steps: int,
    loss: str = "mse",
) -> list[Snapshot]:
    """Compile ``model`` with ``optimizer`` and ``loss``, fit ``steps`` full-batch steps.

    One epoch over ``steps`` copies of ``(x, y)`` with ``batch_size=len(x)``
    and ``shuffle=False``: every step sees the whole data set, as ``steps``
    epochs would, without Keras's per-epoch overhead. The optimizer is built
    on the model's trainable variables before ``fit`` (:func:`build_optimizer`),
    so TensorFlow traces the train step once, not twice. Returns ``steps + 1``
    snapshots of the trainable weights (:class:`WeightRecorder`).

    Raises
    ------
    ValueError
        If ``steps`` is not a positive integer or ``x`` and ``y`` differ in length.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}.")
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"x and y must hold the same positive number of examples; got {len(x)} and {len(y)}."
        )
    recorder = WeightRecorder()
    model.compile(optimizer=optimizer, loss=loss)
    build_optimizer(model)
    reps = (int(steps),) + (1,) * (x.ndim - 1), (int(steps),) + (1,) * (y.ndim - 1)
    model.fit(
        np.tile(x, reps[0]),
        np.tile(y, reps[1]),
        batch_size=len(x),
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )
    return recorder.snapshots


def _scales(model: keras.Model, direction: Direction) -> list[float]:
    """``s`` per trainable variable: ``kernel_scale(p, direction)`` on consuming kernels, else 1."""
    scale = {
        id(v): kernel_scale(c.keep_prob, direction) for c in dropout_consumers(model) for v in c.variables
    }
    return [scale.get(id(v), 1.0) for v in model.trainable_variables]


def trajectory_gaps(
    reference: Sequence[Snapshot],
    other: Sequence[Snapshot],
    other_model: keras.Model,
    direction: Direction,
) -> NDArray[np.float64]:
    """Per-step relative gap between two recorded trajectories, in the reference's coordinates.

    ``other`` was recorded from ``other_model``; its consuming kernels are
    multiplied by ``s = kernel_scale(p, direction)`` (``'to_inverted'``:
    ``s = p``, for a standard-dropout ``other_model`` compared with an inverted
    reference; ``'to_standard'``: ``s = 1/p``). Computed in float64 whatever
    the models' dtype. Returns ``gaps`` with ``gaps[t]`` the largest
    ``||s W_other - W_ref|| / ||W_ref||`` over the variables after step ``t``.

    Raises
    ------
    ValueError
        If the trajectories differ in length or in their variables' shapes.
    """
    check_direction(direction)
    if len(reference) != len(other) or len(reference) == 0:
        raise ValueError(
            f"the trajectories have {len(reference)} and {len(other)} snapshots; record "
            "both with the same number of steps."
        )
    scales = _scales(other_model, direction)
    gaps = np.empty(len(reference))
    for t, (ref, oth) in enumerate(zip(reference, other)):
        if len(ref) != len(oth) or len(oth) != len(scales):
            raise ValueError(
                f"snapshot {t} has {len(ref)} and {len(oth)} variables (other_model has "
                f"{len(scales)}): are these the twin models' trajectories?"
            )
        worst = 0.0
        for r, o, s in zip(ref, oth, scales):
            r64, o64 = np.asarray(r, dtype=np.float64), np.asarray(o, dtype=np.float64)
            if r64.shape != o64.shape:
                raise ValueError(f"snapshot {t}: shapes {r64.shape} and {o64.shape} differ.")
            diff = float(np.linalg.norm(s * o64 - r64))
            norm = float(np.linalg.norm(r64))
            worst = max(worst, diff / norm if norm > 0.0 else diff)
        gaps[t] = worst
    return gaps
