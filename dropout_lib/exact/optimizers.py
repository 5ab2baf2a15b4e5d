"""numpy optimizers with per-parameter hyperparameters, in their papers' and Keras's forms.

Every hyperparameter the dropout maps touch (learning rate ``lr``, ``eps``,
``weight_decay``, ``clipnorm``, Adagrad's ``initial_accumulator_value``) is
either one float or a dict ``{parameter name: float}``, so a standard-dropout
net can use ``eta / p^2`` on the weights that consume a dropped layer and
``eta`` elsewhere (see :func:`dropout_lib.exact.mlp.per_parameter`).

``opt.step(params, grads)`` updates the dict ``params`` in place; the state is
kept per parameter name. One step does, as Keras's ``BaseOptimizer.apply``
(``keras/src/optimizers/base_optimizer.py``, ``_backend_apply_gradients``):

1. clip the gradients (``clipnorm`` per tensor, or ``global_clipnorm``);
2. decoupled weight decay, if ``weight_decay`` is set;
3. the optimizer's own update with the clipped gradients.

Weight decay comes in two forms (``decay_form``), with ``eta_t`` the schedule
multiplier (``schedule(t)``, 1 by default) and ``lr_t = eta_t * lr``:

* ``'keras'``: ``w -= lr_t * wd * w``, as Keras 3 (``_apply_weight_decay``) and
  PyTorch's ``AdamW``/``SGD`` with decoupled decay: the decay scales with ``lr``;
* ``'lh'``: ``w -= eta_t * wd * w``, Loshchilov & Hutter (2019, Algorithms 1-2):
  the decay follows the schedule but not the base learning rate ``lr``.

Gradients must be computed at :meth:`Optimizer.eval_point`, which is the
parameters themselves except for Sutskever's Nesterov momentum (``form='paper'``).

The Keras sources cited are those of Keras 3.15.1,
``keras/src/optimizers/{sgd,adam,rmsprop,adagrad,adamw,base_optimizer}.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Params = dict[str, NDArray[np.float64]]
HyperParam = float | Mapping[str, float]
Form = Literal["keras", "paper"]
DecayForm = Literal["keras", "lh"]
FORMS: tuple[Form, ...] = ("keras", "paper")
DECAY_FORMS: tuple[DecayForm, ...] = ("keras", "lh")

#: How each optimizer's state scales on a consuming weight, ``W_std = W_inv / p``:
#: ``state_std = p**power * state_inv`` per state key (the package's one table).
#: A first moment is a sum of gradients (``g_std = p g_inv``: power 1), a second
#: moment of squared gradients (2), a momentum velocity a sum of weight steps (-1).
STATE_POWERS: dict[str, dict[str, int]] = {
    "SGD": {"v": -1},
    "Adam": {"m": 1, "v": 2, "v_hat": 2},
    "RMSprop": {"v": 2, "a": 1, "mom": -1},
    "Adagrad": {"G": 2},
}

__all__ = [
    "STATE_POWERS",
    "Optimizer",
    "SGD",
    "Adam",
    "RMSprop",
    "Adagrad",
    "clip_by_norm",
    "clip_by_global_norm",
    "max_norm",
]


# ------------------------------------------------------------------- helpers


def clip_by_norm(g: NDArray, clipnorm: float) -> NDArray:
    """Return ``g * c / max(||g||, c)``: ``g`` rescaled to Frobenius norm at most ``c``.

    Keras's ``clipnorm`` (each gradient tensor on its own; ``_clip_by_norm`` in
    ``base_optimizer.py``, ``tf.clip_by_norm`` on the TensorFlow backend).
    """
    c = _check_positive(clipnorm, "clipnorm")
    return g * c / max(float(np.linalg.norm(g)), c)


def clip_by_global_norm(grads: Mapping[str, NDArray], clipnorm: float) -> Params:
    """Scale every gradient by ``c * min(1/N, 1/c)``, ``N = sqrt(sum_name ||g_name||^2)``.

    Keras's ``global_clipnorm`` (``clip_by_global_norm`` in ``base_optimizer.py``):
    one factor for all tensors, so the joint norm is at most ``c``.
    """
    c = _check_positive(clipnorm, "global_clipnorm")
    total = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    scale = c * min(1.0 / total, 1.0 / c) if total > 0.0 else 1.0
    return {n: g * scale for n, g in grads.items()}


def max_norm(w: NDArray, max_value: float, *, axis: int = 0, eps: float = 0.0) -> NDArray:
    """Max-norm projection ``w * clip(n, 0, c) / (eps + n)``, ``n = ||w||`` along ``axis``.

    With ``eps = 0`` this is the exact projection onto ``||w_j|| <= c`` for each
    unit ``j`` (``axis=0``: the incoming weights of each output unit of a
    ``(n_in, n_out)`` kernel). Keras's ``MaxNorm`` constraint
    (``keras/src/constraints/constraints.py``) uses ``eps = keras.config.epsilon()
    = 1e-7``, which shrinks every column by ``n / (n + eps)`` even when
    ``n < c``; pass ``eps=1e-7`` to reproduce it.
    """
    c = _check_positive(max_value, "max_value")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0; got {eps!r}.")
    n = np.sqrt(np.sum(w * w, axis=axis, keepdims=True))
    if eps == 0.0:
        return w * (np.minimum(n, c) / np.where(n > 0.0, n, 1.0))
    return w * (np.clip(n, 0.0, c) / (eps + n))


def _check_positive(value: float, what: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{what} must be a finite number > 0; got {value!r}.")
    return v


def _check_hyper(value: HyperParam, what: str, low: float, high: float = math.inf) -> HyperParam:
    """Check a scalar-or-dict hyperparameter lies in ``[low, high)``."""
    items = value.items() if isinstance(value, Mapping) else [(None, value)]
    for name, v in items:
        v = float(v)
        if not (math.isfinite(v) and low <= v < high):
            where = f"{what}[{name!r}]" if name is not None else what
            raise ValueError(f"{where} must be in [{low}, {high}); got {v!r}.")
    return value


def _lookup(value: HyperParam, name: str, what: str) -> float:
    if not isinstance(value, Mapping):
        return float(value)
    if name not in value:
        raise ValueError(
            f"{what} has no entry for parameter {name!r} (it has {sorted(value)}); "
            "give a value for every parameter, or a single float for all."
        )
    return float(value[name])


# ---------------------------------------------------------------- base class


class Optimizer:
    """Common machinery: per-parameter lookup, clipping, decoupled weight decay, state.

    Parameters
    ----------
    lr
        Learning rate, a float or ``{name: float}``.
    form
        ``'keras'`` (the update Keras 3.15.1 executes) or ``'paper'`` (the
        original paper's); see each subclass.
    weight_decay
        Decoupled weight decay ``wd`` (float or dict; ``None`` for none).
        Parameters whose value is 0 are not decayed.
    decay_form
        ``'keras'``: ``w -= lr_t * wd * w``; ``'lh'``: ``w -= eta_t * wd * w``.
    schedule
        ``t -> eta_t``, a multiplier of the learning rate at step ``t = 0, 1, ...``
        (Loshchilov & Hutter's schedule multiplier); ``None`` means 1.
    clipnorm, global_clipnorm
        Per-tensor (float or dict) or global gradient clipping; at most one.
    """

    def __init__(
        self,
        lr: HyperParam,
        *,
        form: Form = "keras",
        weight_decay: HyperParam | None = None,
        decay_form: DecayForm = "keras",
        schedule: Callable[[int], float] | None = None,
        clipnorm: HyperParam | None = None,
        global_clipnorm: float | None = None,
    ) -> None:
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}; got {form!r}.")
        if decay_form not in DECAY_FORMS:
            raise ValueError(
                f"decay_form must be one of {DECAY_FORMS}; got {decay_form!r}. 'keras' "
                "decays by lr * wd * w (Keras, PyTorch AdamW); 'lh' by eta_t * wd * w."
            )
        if clipnorm is not None and global_clipnorm is not None:
            raise ValueError("give at most one of clipnorm (per tensor) and global_clipnorm, as Keras.")
        self.lr = _check_hyper(lr, "lr", 0.0)
        self.form = form
        self.weight_decay = weight_decay
        if weight_decay is not None:
            _check_hyper(weight_decay, "weight_decay", 0.0)
        self.decay_form = decay_form
        self.schedule = schedule
        self.clipnorm = clipnorm
        if clipnorm is not None:
            values = clipnorm.values() if isinstance(clipnorm, Mapping) else [clipnorm]
            for v in values:
                _check_positive(v, "clipnorm")
        self.global_clipnorm = global_clipnorm
        if global_clipnorm is not None:
            self.global_clipnorm = _check_positive(global_clipnorm, "global_clipnorm")
        self.iterations = 0
        self.state: dict[str, dict[str, NDArray]] = {}

    def eval_point(self, params: Mapping[str, NDArray]) -> Mapping[str, NDArray]:
        """The parameters at which to evaluate the next gradient: ``params`` itself."""
        return params

    def step(self, params: dict[str, NDArray], grads: Mapping[str, NDArray]) -> None:
        """Update ``params`` in place from ``grads`` taken at :meth:`eval_point`.

        Only parameters named in ``grads`` are updated.
        """
        missing = set(grads) - set(params)
        if missing:
            raise ValueError(f"grads name parameters not in params: {sorted(missing)}.")
        if self.global_clipnorm is not None:
            grads = clip_by_global_norm(grads, self.global_clipnorm)
        eta_t = 1.0 if self.schedule is None else float(self.schedule(self.iterations))
        for name, g in grads.items():
            g = np.asarray(g, dtype=np.float64)
            if self.clipnorm is not None:
                g = clip_by_norm(g, _lookup(self.clipnorm, name, "clipnorm"))
            lr_t = eta_t * _lookup(self.lr, name, "lr")
            w = params[name]
            if self.weight_decay is not None:
                wd = _lookup(self.weight_decay, name, "weight_decay")
                if wd != 0.0:
                    factor = lr_t if self.decay_form == "keras" else eta_t
                    w -= w * wd * factor
            if name not in self.state:
                self.state[name] = self._init_state(name, w)
            self._update(name, w, g, lr_t, self.state[name])
        self.iterations += 1

    def _init_state(self, name: str, w: NDArray) -> dict[str, NDArray]:
        return {}

    def _update(self, name: str, w: NDArray, g: NDArray, lr: float, s: dict) -> None:
        raise NotImplementedError


# ------------------------------------------------------------- the optimizers


class SGD(Optimizer):
    """Stochastic gradient descent, with optional heavy-ball or Nesterov momentum.

    Keras form (``sgd.py``, ``update_step``), ``mu`` = ``momentum``:

    * no momentum:  ``w -= lr * g``;
    * momentum:     ``v = mu * v - lr * g``;  ``w += v``;
    * Nesterov:     ``v = mu * v - lr * g``;  ``w += mu * v - lr * g``,
      the gradient taken at ``w`` (Bengio et al., 2013's reformulation).

    Paper form: plain SGD and heavy-ball momentum are the same as Keras's
    (Polyak's ``w_{t+1} = w_t - lr g_t + mu (w_t - w_{t-1})`` is the velocity form
    with ``v_t = w_t - w_{t-1}``, Sutskever et al., 2013, eq. 1-2). Nesterov
    follows Sutskever et al. (2013, eq. 3-4): ``v = mu * v - lr * g(w + mu v)``;
    ``w += v``, so :meth:`eval_point` returns ``w + mu v``. Keras's iterate is
    exactly that look-ahead point ``w + mu v`` of the paper's.

    There is no epsilon. Dropout map (inverted -> standard): ``lr -> lr / p^2``
    on consuming weights, ``mu`` unchanged.

    On the TensorFlow backend Keras casts ``momentum`` to the variable's dtype
    through float32 (``ops.cast`` of a Python float), even for float64
    variables: pass ``momentum=float(np.float32(0.9))`` to reproduce Keras bit
    for bit (checked against Keras 3.15.1, 30 steps, identical).
    """

    def __init__(
        self,
        lr: HyperParam = 0.01,
        *,
        momentum: float = 0.0,
        nesterov: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(lr, **kwargs)
        self.momentum = float(_check_hyper(momentum, "momentum", 0.0, 1.0))
        if nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0; got momentum=0.")
        self.nesterov = bool(nesterov)

    def _init_state(self, name: str, w: NDArray) -> dict[str, NDArray]:
        return {"v": np.zeros_like(w)} if self.momentum else {}

    def eval_point(self, params: Mapping[str, NDArray]) -> Mapping[str, NDArray]:
        """``w + mu v`` for the paper's Nesterov, ``w`` otherwise."""
        if not (self.nesterov and self.form == "paper"):
            return params
        return {
            n: w + self.momentum * self.state[n]["v"] if n in self.state else w for n, w in params.items()
        }

    def _update(self, name: str, w: NDArray, g: NDArray, lr: float, s: dict) -> None:
        mu = self.momentum
        if not mu:
            w -= g * lr
            return
        s["v"] = s["v"] * mu - g * lr
        if self.nesterov and self.form == "keras":
            w += s["v"] * mu - g * lr
        else:
            w += s["v"]


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), optionally AMSGrad; with ``weight_decay``, AdamW.

    Both forms keep ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2`` (AMSGrad:
    ``v_hat = max(v_hat, v)`` is used for ``v``), ``t`` = step number from 1.

    * paper form (Algorithm 1), epsilon OUTSIDE the square root, after bias
      correction: ``w -= lr * m_hat / (sqrt(v_hat) + eps)``,
      ``m_hat = m / (1 - b1^t)``, ``v_hat = v / (1 - b2^t)``;
    * Keras form (``adam.py``), the paper's "efficient version" (end of its
      Section 2): bias correction folded into the learning rate,
      ``alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)``,
      ``w -= m * alpha / (sqrt(v) + eps)``; epsilon is OUTSIDE the square root
      of the *uncorrected* ``v`` (Keras's "epsilon hat"), i.e. the paper's
      ``eps`` times ``sqrt(1 - b2^t)``.

    Keras's ``AdamW`` (``adamw.py``) is this ``Adam`` with ``weight_decay``
    (default 0.004) applied as ``w -= lr * wd * w`` (``decay_form='keras'``).
    Dropout map: ``lr -> lr / p``, ``eps -> eps * p``, Keras-form ``wd -> wd * p``,
    ``'lh'``-form ``wd`` unchanged.

    On the TensorFlow backend Keras rounds ``beta_1``, ``beta_2`` to float32
    inside the powers ``b^t`` of ``alpha`` (not in the moment updates), even for
    float64 variables; this class uses the exact values, so it matches Keras to
    ~1e-7, not bit for bit, unless the betas are float32 numbers.
    """

    def __init__(
        self,
        lr: HyperParam = 0.001,
        *,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        eps: HyperParam = 1e-7,
        amsgrad: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(lr, **kwargs)
        self.beta_1 = float(_check_hyper(beta_1, "beta_1", 0.0, 1.0))
        self.beta_2 = float(_check_hyper(beta_2, "beta_2", 0.0, 1.0))
        self.eps = _check_hyper(eps, "eps", 0.0)
        self.amsgrad = bool(amsgrad)

    def _init_state(self, name: str, w: NDArray) -> dict[str, NDArray]:
        s = {"m": np.zeros_like(w), "v": np.zeros_like(w)}
        if self.amsgrad:
            s["v_hat"] = np.zeros_like(w)
        return s

    def _update(self, name: str, w: NDArray, g: NDArray, lr: float, s: dict) -> None:
        b1, b2, eps = self.beta_1, self.beta_2, _lookup(self.eps, name, "eps")
        t = self.iterations + 1
        if self.form == "keras":  # operation order of keras/src/optimizers/adam.py
            alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            s["m"] += (g - s["m"]) * (1 - b1)
            s["v"] += (g * g - s["v"]) * (1 - b2)
        else:
            s["m"] = b1 * s["m"] + (1 - b1) * g
            s["v"] = b2 * s["v"] + (1 - b2) * g * g
        v = s["v"]
        if self.amsgrad:
            s["v_hat"] = np.maximum(s["v_hat"], v)
            v = s["v_hat"]
        if self.form == "keras":
            w -= s["m"] * alpha / (np.sqrt(v) + eps)
        else:
            w -= lr * (s["m"] / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)


class RMSprop(Optimizer):
    """RMSprop (Tieleman & Hinton, 2012, lecture 6e), with Keras's momentum and centering.

    ``v = rho v + (1 - rho) g^2``; centered: ``a = rho a + (1 - rho) g`` and the
    second moment is ``v - a^2``. Then ``inc = lr * g / denom`` and
    ``w -= inc``, or with momentum ``mom = momentum * mom + inc``, ``w -= mom``.

    * Keras form (``rmsprop.py``): ``denom = sqrt(v + eps)``, epsilon INSIDE
      the square root (centered: ``sqrt(v - a^2 + eps)``);
    * paper form: ``denom = sqrt(v) + eps``, epsilon OUTSIDE (as PyTorch). The
      lecture has no epsilon at all; ``eps=0`` gives it exactly.

    Dropout map: ``lr -> lr / p``; ``eps -> eps * p^2`` (Keras, inside) or
    ``eps * p`` (paper, outside); ``rho``, ``momentum`` unchanged.
    """

    def __init__(
        self,
        lr: HyperParam = 0.001,
        *,
        rho: float = 0.9,
        momentum: float = 0.0,
        centered: bool = False,
        eps: HyperParam = 1e-7,
        **kwargs,
    ) -> None:
        super().__init__(lr, **kwargs)
        self.rho = float(_check_hyper(rho, "rho", 0.0, 1.0))
        self.momentum = float(_check_hyper(momentum, "momentum", 0.0, 1.0))
        self.centered = bool(centered)
        self.eps = _check_hyper(eps, "eps", 0.0)

    def _init_state(self, name: str, w: NDArray) -> dict[str, NDArray]:
        return {"v": np.zeros_like(w), "a": np.zeros_like(w), "mom": np.zeros_like(w)}

    def _update(self, name: str, w: NDArray, g: NDArray, lr: float, s: dict) -> None:
        rho, eps = self.rho, _lookup(self.eps, name, "eps")
        s["v"] = rho * s["v"] + (1 - rho) * (g * g)
        second = s["v"]
        if self.centered:
            s["a"] = rho * s["a"] + (1 - rho) * g
            second = s["v"] - s["a"] * s["a"]
        if self.form == "keras":
            inc = lr * g / np.sqrt(second + eps)
        else:
            inc = lr * g / (np.sqrt(second) + eps)
        if self.momentum > 0.0:
            s["mom"] = self.momentum * s["mom"] + inc
            w -= s["mom"]
        else:
            w -= inc


class _Accumulator:
    """Adagrad's accumulator ``G``, for Keras's :class:`Adagrad` and PyTorch's (a mixin).

    ``initial_accumulator_value`` (``G_0 >= 0``) and ``eps`` (``>= 0``) are each a
    float or ``{name: float}``; each parameter's state starts at
    ``{'G': G_0[name]}`` in the parameter's shape (``G_0`` maps by ``p^2``: ``G``
    sums squared gradients). The subclass's ``_update`` adds ``g^2`` and steps.
    """

    def _set_accumulator(self, initial_accumulator_value: HyperParam, eps: HyperParam) -> None:
        self.initial_accumulator_value = _check_hyper(
            initial_accumulator_value, "initial_accumulator_value", 0.0
        )
        self.eps = _check_hyper(eps, "eps", 0.0)

    def _init_state(self, name: str, w: NDArray) -> dict[str, NDArray]:
        g0 = _lookup(self.initial_accumulator_value, name, "initial_accumulator_value")
        return {"G": np.full_like(w, g0)}


class Adagrad(_Accumulator, Optimizer):
    """Adagrad (Duchi, Hazan & Singer, 2011), diagonal version.

    ``G += g^2`` from ``G_0 = initial_accumulator_value``, then

    * Keras form (``adagrad.py``): ``w -= lr * g / sqrt(G + eps)``, epsilon
      INSIDE the square root, ``G_0 = 0.1`` by default;
    * paper form: ``w -= lr * g / (eps + sqrt(G))``, epsilon (the paper's
      ``delta``) OUTSIDE, ``G_0 = 0`` by default.

    Dropout map: ``lr -> lr / p``; ``eps -> eps * p^2`` (Keras) or ``eps * p``
    (paper); and ``G_0 -> G_0 * p^2`` (``G`` sums squared gradients, which scale
    by ``p^2``), so Keras's default ``0.1`` must be mapped too.

    On the TensorFlow backend Keras's ``Constant`` initializer rounds
    ``initial_accumulator_value`` to float32 even for float64 variables: pass
    ``float(np.float32(0.1))`` to reproduce Keras bit for bit. (So in Keras
    itself the mapped ``0.1 * p^2`` is rounded too, and the map is exact only to
    ~1e-8 unless ``0.1 * p^2`` is a float32 number.)
    """

    def __init__(
        self,
        lr: HyperParam = 0.001,
        *,
        initial_accumulator_value: HyperParam | None = None,
        eps: HyperParam = 1e-7,
        **kwargs,
    ) -> None:
        super().__init__(lr, **kwargs)
        if initial_accumulator_value is None:
            initial_accumulator_value = 0.1 if self.form == "keras" else 0.0
        self._set_accumulator(initial_accumulator_value, eps)

    def _update(self, name: str, w: NDArray, g: NDArray, lr: float, s: dict) -> None:
        eps = _lookup(self.eps, name, "eps")
        s["G"] += g * g
        if self.form == "keras":
            w -= lr * g / np.sqrt(s["G"] + eps)
        else:
            w -= lr * g / (eps + np.sqrt(s["G"]))
