"""numpy implementations of PyTorch's documented optimizer updates, per-parameter hyperparameters.

PyTorch is not installed and not a dependency: these classes follow the
algorithm boxes of the PyTorch documentation (``torch.optim.SGD``, ``Adam``,
``AdamW``, ``RMSprop``, ``Adagrad``; see :mod:`dropout_lib.pytorch` for the
links), with the same defaults, so that the dropout maps for PyTorch users can
be checked in float64 with :func:`dropout_lib.exact.training.train`. Where
PyTorch differs from Keras (the reason its maps differ), the docstrings say so:

* ``weight_decay`` of ``SGD``, ``Adam``, ``RMSprop`` and ``Adagrad`` is an L2
  term added to the gradient, ``g <- g + wd * w`` (coupled); ``AdamW`` (and
  ``Adam(decoupled_weight_decay=True)``) multiplies the weight by
  ``1 - lr * wd`` before the update (decoupled). Keras's ``weight_decay`` is
  decoupled for every optimizer.
* ``RMSprop`` and ``Adagrad`` add ``eps`` OUTSIDE the square root,
  ``g / (sqrt(v) + eps)``; Keras adds it inside, ``g / sqrt(v + eps)``.
* ``Adam`` divides by ``sqrt(v_hat) + eps`` with the bias-corrected
  ``v_hat``; Keras folds the correction into the learning rate and adds
  ``eps`` to ``sqrt(v)``. Both have ``eps`` outside the root.
* ``Adagrad`` has ``initial_accumulator_value`` (default 0, Keras's 0.1) and
  ``lr_decay``: step ``t`` uses ``lr / (1 + (t - 1) * lr_decay)``.
* ``SGD`` keeps a momentum buffer ``b`` with ``b_1 = g_1`` and
  ``b_t = mu b_{t-1} + (1 - dampening) g_t``, and steps ``w -= lr * b`` (or
  ``lr * (g + mu b)`` with ``nesterov``): the learning rate multiplies the
  buffer, not the gradient that enters it (Keras: ``v = mu v - lr g``).

Every hyperparameter the dropout maps touch (``lr``, ``eps``,
``weight_decay``, ``initial_accumulator_value``, ``clip_value``) is a float or
a dict ``{parameter name: float}`` (a PyTorch parameter group per consuming
kernel). ``clip_value`` clips every gradient entry to ``[-v, v]`` before the
step, as ``torch.nn.utils.clip_grad_value_`` does; ``clip_norm`` rescales each
gradient tensor on its own by ``min(c / (||g|| + clip_norm_eps), 1)``, as
``torch.nn.utils.clip_grad_norm_`` called on that one tensor does
(``clip_norm_eps = 1e-6`` is PyTorch's hard-coded constant; 0 gives the exact
projection, for comparison).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from dropout_lib.exact.optimizers import HyperParam, Optimizer, _Accumulator, _check_hyper, _lookup

__all__ = ["TorchSGD", "TorchAdam", "TorchAdamW", "TorchRMSprop", "TorchAdagrad"]


class _Torch(Optimizer):
    """Shared machinery: coupled or decoupled ``weight_decay`` and ``clip_value``."""

    decoupled = False

    def __init__(
        self,
        lr: HyperParam,
        *,
        weight_decay: HyperParam = 0.0,
        clip_value: HyperParam | None = None,
        clip_norm: HyperParam | None = None,
        clip_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__(lr)
        self.torch_weight_decay = _check_hyper(weight_decay, "weight_decay", 0.0)
        self.clip_value = clip_value
        if clip_value is not None:
            _check_hyper(clip_value, "clip_value", 1e-300)
        self.clip_norm = clip_norm
        if clip_norm is not None:
            _check_hyper(clip_norm, "clip_norm", 1e-300)
        self.clip_norm_eps = float(_check_hyper(clip_norm_eps, "clip_norm_eps", 0.0))

    def _prepare(self, name: str, w: NDArray, g: NDArray, lr: float) -> NDArray:
        """Clip, then apply weight decay as PyTorch does; return the gradient to use."""
        if self.clip_value is not None:
            v = _lookup(self.clip_value, name, "clip_value")
            g = np.clip(g, -v, v)
        if self.clip_norm is not None:
            c = _lookup(self.clip_norm, name, "clip_norm")
            g = g * min(c / (float(np.linalg.norm(g)) + self.clip_norm_eps), 1.0)
        wd = _lookup(self.torch_weight_decay, name, "weight_decay")
        if wd != 0.0:
            if self.decoupled:
                w *= 1.0 - lr * wd  # param.mul_(1 - lr * weight_decay)
            else:
                g = g + wd * w  # grad.add(param, alpha=weight_decay)
        return g


class TorchSGD(_Torch):
    """``torch.optim.SGD(lr, momentum=0, dampening=0, weight_decay=0, nesterov=False)``.

    Dropout map (inverted -> standard, consuming weights): ``lr / p**2``,
    ``weight_decay * p**2``; ``momentum``, ``dampening``, ``nesterov`` unchanged.
    """

    def __init__(
        self,
        lr: HyperParam = 1e-3,
        *,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(lr, **kwargs)
        self.momentum = float(_check_hyper(momentum, "momentum", 0.0, 1.0))
        self.dampening = float(_check_hyper(dampening, "dampening", 0.0, 1.0 + 1e-12))
        if nesterov and (self.momentum <= 0.0 or self.dampening != 0.0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening (PyTorch).")
        self.nesterov = bool(nesterov)

    def _update(self, name: str, w: NDArray, g: NDArray, lr: float, s: dict) -> None:
        g = self._prepare(name, w, g, lr)
        mu = self.momentum
        if mu != 0.0:
            if "b" not in s:
                s["b"] = g.copy()
            else:
                s["b"] = mu * s["b"] + (1.0 - self.dampening) * g
            g = g + mu * s["b"] if self.nesterov else s["b"]
        w -= lr * g


class TorchAdam(_Torch):
    """``torch.optim.Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False)``.

    ``m_hat = m / (1 - b1^t)``, ``v_hat = v / (1 - b2^t)`` (AMSGrad: the running
    maximum of ``v``), ``w -= lr * m_hat / (sqrt(v_hat) + eps)``: epsilon
    outside the root, after the bias correction. ``weight_decay`` is coupled
    (L2 in the gradient) unless ``decoupled_weight_decay=True`` (then AdamW).

    Dropout map: ``lr / p``, ``eps * p``; coupled ``weight_decay * p**2``,
    decoupled ``weight_decay * p``; betas and ``amsgrad`` unchanged.
    """

    def __init__(
        self,
        lr: HyperParam = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: HyperParam = 1e-8,
        amsgrad: bool = False,
        decoupled_weight_decay: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(lr, **kwargs)
        self.beta_1 = float(_check_hyper(betas[0], "betas[0]", 0.0, 1.0))
        self.beta_2 = float(_check_hyper(betas[1], "betas[1]", 0.0, 1.0))
        self.eps = _check_hyper(eps, "eps", 0.0)
        self.amsgrad = bool(amsgrad)
        self.decoupled = bool(decoupled_weight_decay) or self.decoupled

    def _init_state(self, name: str, w: NDArray) -> dict[str, NDArray]:
        return {"m": np.zeros_like(w), "v": np.zeros_like(w), "v_max": np.zeros_like(w)}

    def _update(self, name: str, w: NDArray, g: NDArray, lr: float, s: dict) -> None:
        g = self._prepare(name, w, g, lr)
        b1, b2, eps = self.beta_1, self.beta_2, _lookup(self.eps, name, "eps")
        t = self.iterations + 1
        s["m"] = b1 * s["m"] + (1.0 - b1) * g
        s["v"] = b2 * s["v"] + (1.0 - b2) * g * g
        v = s["v"]
        if self.amsgrad:
            s["v_max"] = np.maximum(s["v_max"], v)
            v = s["v_max"]
        denom = np.sqrt(v) / math.sqrt(1.0 - b2**t) + eps
        w -= (lr / (1.0 - b1**t)) * s["m"] / denom


class TorchAdamW(TorchAdam):
    """``torch.optim.AdamW``: ``TorchAdam`` with decoupled decay, default ``weight_decay=0.01``."""

    decoupled = True

    def __init__(self, lr: HyperParam = 1e-3, *, weight_decay: HyperParam = 1e-2, **kwargs) -> None:
        super().__init__(lr, weight_decay=weight_decay, **kwargs)


class TorchRMSprop(_Torch):
    """``torch.optim.RMSprop(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False)``.

    ``v = alpha v + (1 - alpha) g^2`` (centered: minus the square of the running
    mean of ``g``); ``u = g / (sqrt(v) + eps)``, epsilon OUTSIDE the root; then
    ``w -= lr * u``, or with momentum ``b = mu b + u``, ``w -= lr * b``.

    Dropout map: ``lr / p``, ``eps * p`` (Keras's RMSprop: ``eps * p**2``),
    ``weight_decay * p**2``; ``alpha``, ``momentum``, ``centered`` unchanged.
    """

    def __init__(
        self,
        lr: HyperParam = 1e-2,
        *,
        alpha: float = 0.99,
        eps: HyperParam = 1e-8,
        momentum: float = 0.0,
        centered: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(lr, **kwargs)
        self.alpha = float(_check_hyper(alpha, "alpha", 0.0, 1.0))
        self.eps = _check_hyper(eps, "eps", 0.0)
        self.momentum = float(_check_hyper(momentum, "momentum", 0.0, 1.0))
        self.centered = bool(centered)

    def _init_state(self, name: str, w: NDArray) -> dict[str, NDArray]:
        return {"v": np.zeros_like(w), "g_avg": np.zeros_like(w), "b": np.zeros_like(w)}

    def _update(self, name: str, w: NDArray, g: NDArray, lr: float, s: dict) -> None:
        g = self._prepare(name, w, g, lr)
        a, eps = self.alpha, _lookup(self.eps, name, "eps")
        s["v"] = a * s["v"] + (1.0 - a) * g * g
        second = s["v"]
        if self.centered:
            s["g_avg"] = a * s["g_avg"] + (1.0 - a) * g
            second = s["v"] - s["g_avg"] * s["g_avg"]
        u = g / (np.sqrt(second) + eps)
        if self.momentum > 0.0:
            s["b"] = self.momentum * s["b"] + u
            w -= lr * s["b"]
        else:
            w -= lr * u


class TorchAdagrad(_Accumulator, _Torch):
    """``torch.optim.Adagrad(lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10)``.

    ``G = G_0 + sum g^2``; step ``t`` (from 1) uses ``clr = lr / (1 + (t - 1) lr_decay)``
    and ``w -= clr * g / (sqrt(G) + eps)``: epsilon OUTSIDE the root.

    Dropout map: ``lr / p``, ``eps * p`` (Keras's Adagrad: ``eps * p**2``),
    ``initial_accumulator_value * p**2``, ``weight_decay * p**2``; ``lr_decay``
    unchanged.
    """

    def __init__(
        self,
        lr: HyperParam = 1e-2,
        *,
        lr_decay: float = 0.0,
        initial_accumulator_value: HyperParam = 0.0,
        eps: HyperParam = 1e-10,
        **kwargs,
    ) -> None:
        super().__init__(lr, **kwargs)
        self.lr_decay = float(_check_hyper(lr_decay, "lr_decay", 0.0))
        self._set_accumulator(initial_accumulator_value, eps)

    def _update(self, name: str, w: NDArray, g: NDArray, lr: float, s: dict) -> None:
        g = self._prepare(name, w, g, lr)
        clr = lr / (1.0 + self.iterations * self.lr_decay)
        s["G"] = s["G"] + g * g
        w -= clr * g / (np.sqrt(s["G"]) + eps_of(self, name))


def eps_of(opt: Optimizer, name: str) -> float:
    """The epsilon ``opt`` uses for parameter ``name``."""
    eps = opt.eps  # type: ignore[attr-defined]
    return _lookup(eps, name, "eps") if isinstance(eps, Mapping) else float(eps)
