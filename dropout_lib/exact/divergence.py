"""Where two training runs part: hidden units that are active in one run and not in the other.

Notation: ``keep_prob`` is the paper's ``p``; Keras's ``rate`` is ``1 - p``.

Two runs of :func:`dropout_lib.exact.compare.compare_training` (or
:func:`dropout_lib.exact.adaptive.compare_runs`) compute the same function at every
step when their hyperparameters are mapped, and nearly the same when a
hyperparameter is slightly off. A small difference in the weights changes the
loss, hence the next step, smoothly, as long as every ReLU unit is on (or off)
in both runs for every example. When a pre-activation ``z`` sits so close to
0 that the small difference moves it across, the unit is on in one run and
off in the other: the two gradients then differ in a whole term, not by a
small amount, and the runs can part quickly. :func:`activation_flips` counts
these events step by step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from dropout_lib.exact import mlp
from dropout_lib.exact.compare import Comparison

__all__ = ["activation_flips", "first_flip"]


def activation_flips(
    comparison: Comparison,
    data_batches: Sequence[tuple[NDArray, NDArray]],
    masks_sequence: Sequence[mlp.Masks],
    *,
    keep_probs: Sequence[float],
    activation: mlp.Activation = "relu",
) -> NDArray[np.int64]:
    """``flips[t]``: hidden pre-activations whose sign differs between the two runs at step ``t``.

    For each step ``t`` (``0 .. steps - 1``) both nets are evaluated in
    training mode at their parameters before the step
    (``comparison.inverted.history[t]`` and ``comparison.standard.history[t]``),
    on step ``t``'s batch ``data_batches[t % len(data_batches)]`` with masks
    ``masks_sequence[t]``, as :func:`dropout_lib.exact.training.train` did (the
    gradient point of every optimizer except Sutskever's Nesterov form). The
    count is over every hidden layer, example and unit of ``z > 0`` in one
    run and ``z <= 0`` in the other. With ``activation='relu'`` this is a unit
    switched on in one run and off in the other; for smooth activations it
    only marks a sign change.

    Parameters
    ----------
    keep_probs
        The paper's ``p`` per layer input (Keras's ``rate`` is ``1 - p``), as
        given to the comparison.

    Raises
    ------
    ValueError
        If the comparison was recorded without histories, or if fewer masks
        than steps are given.
    """
    inv, std = comparison.inverted.history, comparison.standard.history
    steps = len(inv) - 1
    if steps < 1 or len(std) != len(inv):
        raise ValueError(
            "the comparison holds no step history (or the two histories differ in "
            "length); record both runs (compare_training always does)."
        )
    if len(masks_sequence) < steps:
        raise ValueError(
            f"{len(masks_sequence)} steps' masks for a run of {steps} steps; pass the "
            "masks the runs were trained with."
        )
    kw = dict(keep_probs=keep_probs, training=True, activation=activation)
    flips = np.zeros(steps, dtype=np.int64)
    for t in range(steps):
        x, _ = data_batches[t % len(data_batches)]
        _, cache_inv = mlp.forward(inv[t], x, variant="inverted", masks=masks_sequence[t], **kw)
        _, cache_std = mlp.forward(std[t], x, variant="standard", masks=masks_sequence[t], **kw)
        flips[t] = sum(
            int(np.count_nonzero((a > 0) != (b > 0)))
            for a, b in zip(cache_inv["z"][:-1], cache_std["z"][:-1])
        )
    return flips


def first_flip(flips: NDArray[np.int64]) -> int | None:
    """The first step with at least one flip (see :func:`activation_flips`), or ``None``."""
    hits = np.flatnonzero(np.asarray(flips) > 0)
    return int(hits[0]) if hits.size else None
