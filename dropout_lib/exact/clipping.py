"""Gradient clipping in front of an optimizer, in Keras's three forms, recording when it acts.

Notation: ``keep_prob`` is the paper's ``p``, the probability that a unit is
kept; Keras's ``rate`` is ``1 - p``.

Keras clips the gradients before the update, in one of three ways set on the
optimizer (``_clip_gradients`` in ``keras/src/optimizers/base_optimizer.py``,
Keras 3.15.1; at most one of the three may be given):

=================  ===================================================================
Keras option       what happens to the gradient ``g_name`` of each parameter
=================  ===================================================================
``clipnorm=c``     ``g * c / max(||g||, c)``: each tensor on its own
                   (:func:`dropout_lib.exact.optimizers.clip_by_norm`)
``clipvalue=v``    ``clip(g, -v, v)``: each entry on its own (:func:`clip_by_value`)
``global_clipnorm  ``g * c * min(1/N, 1/c)``, ``N = sqrt(sum_name ||g_name||^2)``: one
=c``               factor for all tensors
                   (:func:`dropout_lib.exact.optimizers.clip_by_global_norm`)
=================  ===================================================================

:class:`dropout_lib.exact.optimizers.Optimizer` has ``clipnorm`` and
``global_clipnorm`` but no ``clipvalue``. :class:`Clipped` wraps any optimizer
(without clipping of its own) with any of the three rules, thresholds per
parameter where the rule allows it, and records at every step which tensors
it clipped, so a check can show that its clipping was not vacuous.

The dropout maps (inverted -> standard), for a weight consuming a dropped
layer with keep probability ``p``: its gradient is ``p`` times the inverted
net's, so ``clipnorm`` and ``clipvalue`` map to ``c * p`` and ``v * p`` (both
rules are positively homogeneous: ``C_{s c}(s g) = s C_c(g)`` for ``s > 0``).
``global_clipnorm`` has no threshold map under SGD when the map scales
different tensors by different factors (the global norm mixes rescaled and
unrescaled gradients: a bias, an undropped layer, two keep probabilities).
When every clipped tensor is a kernel consuming a dropped layer with one keep
probability ``p``, every gradient and so the global norm scale by ``p``, and
``global_clipnorm`` maps to ``c * p`` (SGD and Adam; ``c / p`` the other way).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from dropout_lib.exact.optimizers import (
    HyperParam,
    Optimizer,
    Params,
    _lookup,
    clip_by_global_norm,
    clip_by_norm,
)

Rule = Literal["norm", "value", "global_norm"]
RULES: tuple[Rule, ...] = ("norm", "value", "global_norm")

__all__ = ["RULES", "Clipped", "clip_by_value"]


def clip_by_value(g: NDArray, clipvalue: float) -> NDArray:
    """Return ``clip(g, -v, v)`` entry by entry: Keras's ``clipvalue`` (``ops.clip(g, -v, v)``).

    Parameters
    ----------
    g
        A gradient array, any shape.
    clipvalue
        The threshold ``v > 0``.

    Every entry of the result is ``g_i`` if ``|g_i| <= v`` and ``sign(g_i) v``
    otherwise. For ``s > 0``, ``clip_by_value(s g, s v) = s clip_by_value(g, v)``
    exactly (each entry is one of the same products).
    """
    v = _check_threshold(clipvalue, "clipvalue")
    return np.clip(np.asarray(g, dtype=np.float64), -v, v)


def _check_threshold(value: float, what: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{what} must be a finite number > 0; got {value!r}.")
    return v


class Clipped(Optimizer):
    """Clip the gradients by one of Keras's three rules, then take the wrapped optimizer's step.

    Parameters
    ----------
    optimizer
        A :class:`dropout_lib.exact.optimizers.Optimizer` without ``clipnorm`` or
        ``global_clipnorm`` of its own (Keras allows one clipping rule).
    rule
        ``'norm'`` (Keras's ``clipnorm``), ``'value'`` (``clipvalue``) or
        ``'global_norm'`` (``global_clipnorm``); see the module table.
    threshold
        ``c`` or ``v``: a float, or for ``'norm'`` and ``'value'`` a dict
        ``{parameter name: float}`` (e.g. ``c * p`` on consuming weights, from
        :func:`dropout_lib.exact.mlp.per_parameter`). ``'global_norm'`` takes one float.

    Attributes
    ----------
    active
        One dict per step taken, ``{name: True}`` where the rule changed that
        tensor's gradient (``||g|| > c``, any ``|g_i| > v``, or ``N > c`` for
        every tensor at once).

    The wrapped optimizer sees the clipped gradients, so with ``rule='norm'``
    or ``'global_norm'`` this is the same arithmetic as the optimizer's own
    ``clipnorm`` or ``global_clipnorm``. An :class:`~dropout_lib.exact.optimizers.Optimizer`
    itself (for :func:`dropout_lib.exact.training.train` and
    :func:`dropout_lib.exact.compare.compare_training`): ``step`` and ``eval_point``
    delegate to the wrapped optimizer, and ``iterations``, ``state`` and ``lr``
    are the wrapped optimizer's.
    """

    clipnorm = None
    global_clipnorm = None

    def __init__(self, optimizer: Optimizer, rule: Rule, threshold: HyperParam) -> None:
        # Optimizer.__init__ is not called: every hyperparameter and all state
        # belong to the wrapped optimizer.
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a dropout_lib.exact.optimizers.Optimizer; got {type(optimizer).__name__}."
            )
        if optimizer.clipnorm is not None or optimizer.global_clipnorm is not None:
            raise ValueError(
                "the wrapped optimizer clips already (clipnorm or global_clipnorm); "
                "Keras allows one clipping rule: give the optimizer none."
            )
        if rule not in RULES:
            raise ValueError(
                f"rule must be one of {RULES} (Keras's clipnorm, clipvalue, global_clipnorm); got {rule!r}."
            )
        if isinstance(threshold, Mapping):
            if rule == "global_norm":
                raise ValueError(
                    "global_norm clipping has one threshold for all tensors; got a dict. Give a float."
                )
            for name, v in threshold.items():
                _check_threshold(v, f"threshold[{name!r}]")
        else:
            _check_threshold(threshold, "threshold")
        self.optimizer = optimizer
        self.rule = rule
        self.threshold = threshold
        self.active: list[dict[str, bool]] = []

    @property
    def iterations(self) -> int:  # type: ignore[override]
        """Steps taken by the wrapped optimizer."""
        return self.optimizer.iterations

    @property
    def state(self) -> dict[str, dict[str, NDArray]]:  # type: ignore[override]
        """The wrapped optimizer's state."""
        return self.optimizer.state

    @property
    def lr(self) -> HyperParam:  # type: ignore[override]
        """The wrapped optimizer's learning rate."""
        return self.optimizer.lr

    def eval_point(self, params: Mapping[str, NDArray]) -> Mapping[str, NDArray]:
        """The wrapped optimizer's evaluation point."""
        return self.optimizer.eval_point(params)

    def clip(self, grads: Mapping[str, NDArray]) -> tuple[Params, dict[str, bool]]:
        """Return the clipped gradients and, per name, whether the rule changed them."""
        grads = {n: np.asarray(g, dtype=np.float64) for n, g in grads.items()}
        if self.rule == "global_norm":
            c = float(self.threshold)  # type: ignore[arg-type]
            total = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
            return clip_by_global_norm(grads, c), {n: total > c for n in grads}
        out: Params = {}
        active: dict[str, bool] = {}
        for name, g in grads.items():
            t = _lookup(self.threshold, name, "threshold")
            if self.rule == "norm":
                out[name] = clip_by_norm(g, t)
                active[name] = float(np.linalg.norm(g)) > t
            else:
                out[name] = clip_by_value(g, t)
                active[name] = bool(np.any(np.abs(g) > t))
        return out, active

    def step(self, params: dict[str, NDArray], grads: Mapping[str, NDArray]) -> None:
        """Clip ``grads`` by the rule, record which tensors it changed, then step."""
        clipped, active = self.clip(grads)
        self.active.append(active)
        self.optimizer.step(params, clipped)

    def active_fraction(self, names: list[str] | None = None) -> float:
        """Fraction of (step, tensor) pairs, over ``names`` (default: all), that were clipped."""
        if not self.active:
            raise ValueError("no step taken yet; train first.")
        names = list(self.active[0]) if names is None else names
        return float(np.mean([[a[n] for n in names] for a in self.active]))
