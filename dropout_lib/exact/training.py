"""A training loop for the numpy MLP on given batches and given masks.

Both dropout variants can be trained on *identical* randomness: the masks are
an input, not drawn inside. So an inverted run and a standard run with the
mapped hyperparameters can be compared step by step
(:func:`dropout_lib.exact.mlp.to_inverted_params` maps the standard trajectory back).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from dropout_lib.exact.mlp import Activation, Loss, Masks, Params, loss_and_grads
from dropout_lib.exact.optimizers import Optimizer
from dropout_lib.reference import Variant

__all__ = ["TrainResult", "run", "train"]


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    params
        Final parameters.
    losses
        ``losses[t]``: the training loss (with its masks, and the L2 term) at
        step ``t``, evaluated where the gradient was taken.
    history
        Parameter snapshots: ``history[0]`` the initial parameters,
        ``history[t + 1]`` those after step ``t`` (empty if ``record=False``).
    """

    params: Params
    losses: NDArray[np.float64]
    history: list[Params] = field(default_factory=list)


def train(
    params: Mapping[str, NDArray],
    data_batches: Sequence[tuple[NDArray, NDArray]],
    masks_sequence: Sequence[Masks] | Callable[[int], Masks],
    *,
    variant: Variant,
    keep_probs: Sequence[float],
    optimizer: Optimizer,
    steps: int,
    activation: Activation = "relu",
    loss: Loss = "mse",
    l2: Mapping[str, float] | None = None,
    constraints: Mapping[str, Callable[[NDArray], NDArray]] | None = None,
    record: bool = True,
) -> TrainResult:
    """Run ``steps`` optimizer steps and return the trajectory; ``params`` is not modified.

    Step ``t`` uses batch ``data_batches[t % len(data_batches)]`` (an ``(x, y)``
    pair) and masks ``masks_sequence[t]`` (or ``masks_sequence(t)``; one entry
    per layer input, ``None`` where ``keep_prob = 1``; see
    :func:`dropout_lib.exact.mlp.sample_masks`). The gradient of
    ``loss + sum l2[name] ||W||^2`` is taken at ``optimizer.eval_point(params)``,
    then ``optimizer.step`` updates the parameters, then each
    ``constraints[name]`` is applied (``w <- constraint(w)``, as Keras applies
    a variable's constraint after the optimizer step).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0; got {steps}.")
    if len(data_batches) == 0:
        raise ValueError("data_batches is empty; give at least one (x, y) pair.")
    if not callable(masks_sequence) and len(masks_sequence) < steps:
        raise ValueError(
            f"masks_sequence holds {len(masks_sequence)} steps' masks but steps={steps}; "
            "give one entry per step (or a callable t -> masks)."
        )
    for name in constraints or {}:
        if name not in params:
            raise ValueError(f"constraints names {name!r}, which is not a parameter; have {sorted(params)}.")

    def gradients(t: int, at: Mapping[str, NDArray]) -> tuple[float, Mapping[str, NDArray]]:
        x, y = data_batches[t % len(data_batches)]
        masks = masks_sequence(t) if callable(masks_sequence) else masks_sequence[t]
        return loss_and_grads(
            at,
            x,
            y,
            variant=variant,
            keep_probs=keep_probs,
            masks=masks,
            activation=activation,
            loss=loss,
            l2=l2,
        )

    return run(params, optimizer, steps, gradients, constraints=constraints, record=record)


def run(
    params: Mapping[str, NDArray],
    optimizer: Optimizer,
    steps: int,
    gradients: Callable[[int, Mapping[str, NDArray]], tuple[float, Mapping[str, NDArray]]],
    *,
    constraints: Mapping[str, Callable[[NDArray], NDArray]] | None = None,
    record: bool = True,
) -> TrainResult:
    """The package's one training loop: ``steps`` optimizer steps from ``params`` (not modified).

    Step ``t`` computes ``loss, grads = gradients(t, optimizer.eval_point(current))``,
    then ``optimizer.step(current, grads)``, then applies each
    ``constraints[name]`` (``w <- constraint(w)``, as Keras applies a variable's
    constraint after the optimizer step), and records a snapshot if ``record``.

    Examples
    --------
    >>> import numpy as np
    >>> from dropout_lib.exact.optimizers import SGD
    >>> def loss_and_grads(t, p):                  # loss w^2, gradient 2 w
    ...     return float(p["w"][0] ** 2), {"w": 2 * p["w"]}
    >>> result = run({"w": np.array([1.0])}, SGD(0.25), 2, loss_and_grads)
    >>> result.params["w"], result.losses
    (array([0.25]), array([1.  , 0.25]))
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0; got {steps}.")
    current = {n: np.array(v, dtype=np.float64) for n, v in params.items()}
    history = [{n: v.copy() for n, v in current.items()}] if record else []
    losses = np.empty(steps)
    for t in range(steps):
        losses[t], grads = gradients(t, optimizer.eval_point(current))
        optimizer.step(current, grads)
        for name, constraint in (constraints or {}).items():
            current[name] = np.asarray(constraint(current[name]), dtype=np.float64)
        if record:
            history.append({n: v.copy() for n, v in current.items()})
    return TrainResult(params=current, losses=losses, history=history)
