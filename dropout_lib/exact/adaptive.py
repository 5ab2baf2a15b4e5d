"""The dropout map for adaptive optimizers (Adam, RMSprop, Adagrad) on the numpy nets.

Notation: ``keep_prob`` is the paper's ``p``, the probability of KEEPING a unit;
Keras's ``rate`` is ``1 - p``.

An adaptive optimizer divides the gradient (or its running mean ``m``) by a
running root of squared gradients (``v``, or Adagrad's sum ``G``), plus an
``epsilon``. Two placements occur (:data:`EPSILON_PLACEMENT`, read from
:mod:`dropout_lib.exact.optimizers`, whose docstrings cite the Keras lines):

* outside the root, ``m / (sqrt(v) + eps)``: Adam (both forms), the paper form
  of RMSprop and of Adagrad;
* inside the root, ``g / sqrt(v + eps)``: Keras's ``RMSprop`` and ``Adagrad``.

*Scale lemma.* Feed every step the gradient ``c g`` (``c > 0``) instead of
``g``, and use ``eps' = c eps`` (outside) or ``eps' = c^2 eps`` (inside) and
Adagrad's ``G_0' = c^2 G_0``: then ``m' = c m``, ``v' = c^2 v``,
``G' = c^2 G`` at every step, and every step ``lr * (ratio)`` is unchanged,
because numerator and denominator of the ratio both gain the factor ``c``.

*The dropout map* (inverted -> standard). The standard net's consuming weight
is ``W / p`` and its gradient ``p`` times the inverted one's (the gradient map
of chapter 4). By the lemma with ``c = p`` the ratio is the same in both
nets; the standard coordinate is ``1/p`` times larger, so its step must be
too. On each weight ``W_k`` consuming a layer dropped with keep probability
``p_k``:

==============================  ==========================================
hyperparameter                  standard net (inverted net's value times)
==============================  ==========================================
learning rate                   ``1 / p_k``  (SGD needs ``1 / p_k**2``)
epsilon, outside the root       ``p_k``
epsilon, inside the root        ``p_k**2``
``initial_accumulator_value``   ``p_k**2``   (Adagrad)
==============================  ==========================================

and the optimizer state maps as ``state_std = p_k**power * state_inv`` with
``power`` from :data:`STATE_POWERS` (1 for first moments, 2 for second
moments, -1 for RMSprop's momentum buffer, which is a sum of steps). Every
other parameter (biases, weights with ``p_k = 1``) keeps every value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from dropout_lib.exact import compare, mlp
from dropout_lib.exact import optimizers as _optimizers
from dropout_lib.exact.optimizers import FORMS, Adagrad, Adam, Form, Optimizer, RMSprop

Placement = Literal["outside", "inside"]
ADAPTIVE: tuple[type[Optimizer], ...] = (Adam, RMSprop, Adagrad)

__all__ = [
    "ADAPTIVE",
    "EPSILON_PLACEMENT",
    "STATE_POWERS",
    "compare_runs",
    "epsilon_power",
    "epsilon_ratio",
    "standard_optimizer",
    "state_to_inverted",
]

#: Where each numpy optimizer adds its epsilon, by (class name, form).
EPSILON_PLACEMENT: dict[tuple[str, Form], Placement] = {
    ("Adam", "keras"): "outside",  # m * alpha / (sqrt(v) + eps), v uncorrected
    ("Adam", "paper"): "outside",  # m_hat / (sqrt(v_hat) + eps)
    ("RMSprop", "keras"): "inside",  # g / sqrt(v + eps)
    ("RMSprop", "paper"): "outside",  # g / (sqrt(v) + eps)
    ("Adagrad", "keras"): "inside",  # g / sqrt(G + eps)
    ("Adagrad", "paper"): "outside",  # g / (eps + sqrt(G))
}

#: ``state_std = p**power * state_inv`` on a consuming weight, per state key.
STATE_POWERS: dict[str, dict[str, int]] = {
    name: _optimizers.STATE_POWERS[name]
    for name in ("Adam", "RMSprop", "Adagrad")  # the one table
}


def _adaptive_name(optimizer: type[Optimizer] | str) -> str:
    name = optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", None)
    if isinstance(optimizer, type):
        base = next((c for c in ADAPTIVE if issubclass(optimizer, c)), None)
        name = None if base is None else base.__name__
    if name not in STATE_POWERS:
        raise ValueError(
            f"optimizer must be one of Adam, RMSprop, Adagrad (a class of "
            f"dropout_lib.exact.optimizers or its name); got {optimizer!r}. Plain SGD has "
            "no epsilon: its map is lr / p**2 (dropout_lib.exact.mlp.per_parameter)."
        )
    return name


def _check_form(form: str) -> Form:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}; got {form!r}.")
    return form  # type: ignore[return-value]


def epsilon_power(optimizer: type[Optimizer] | str, form: Form = "keras") -> int:
    """Return ``e`` with ``eps_std = eps_inv * p**e``: 1 outside the root, 2 inside.

    ``optimizer`` is :class:`~dropout_lib.exact.optimizers.Adam`,
    :class:`~dropout_lib.exact.optimizers.RMSprop` or
    :class:`~dropout_lib.exact.optimizers.Adagrad` (or its name); ``form`` is
    ``'keras'`` or ``'paper'`` (see :data:`EPSILON_PLACEMENT`).
    """
    placement = EPSILON_PLACEMENT[_adaptive_name(optimizer), _check_form(form)]
    return 1 if placement == "outside" else 2


def standard_optimizer(
    optimizer: type[Optimizer],
    params: Mapping[str, NDArray],
    keep_probs: Sequence[float],
    *,
    lr: float,
    eps: float,
    form: Form = "keras",
    initial_accumulator_value: float | None = None,
    lr_power: float = -1.0,
    eps_power: float | None = None,
    accumulator_power: float = 2.0,
    **kwargs,
) -> Optimizer:
    """The standard net's optimizer for an inverted net trained with ``optimizer(lr, eps=eps)``.

    On each weight ``W_k`` consuming a layer dropped with keep probability
    ``p_k < 1`` (``keep_probs[k-1]``; Keras's ``rate`` is ``1 - p_k``) it uses

    * learning rate ``lr * p_k**lr_power``,
    * ``eps * p_k**eps_power``,
    * Adagrad's ``initial_accumulator_value * p_k**accumulator_power``,

    and the unmapped values on every other parameter. The defaults are the
    exact map (module docstring): ``lr_power = -1``, ``eps_power`` =
    :func:`epsilon_power` (1 outside the root, 2 inside),
    ``accumulator_power = 2``. Other powers build negative controls, e.g.
    ``lr_power=0, eps_power=0`` (the same hyperparameters in both nets) or
    ``lr_power=-2`` (SGD's map).

    Parameters
    ----------
    optimizer
        :class:`~dropout_lib.exact.optimizers.Adam`, :class:`~dropout_lib.exact.optimizers.RMSprop`
        or :class:`~dropout_lib.exact.optimizers.Adagrad`.
    params
        The net's parameters (only their names are used).
    initial_accumulator_value
        Adagrad only; ``None`` for the form's default (Keras 0.1, paper 0),
        which is then mapped like a given value.
    kwargs
        Passed on unchanged (``beta_1``, ``rho``, ``momentum``, ...).
    """
    name = _adaptive_name(optimizer)
    if not (isinstance(optimizer, type) and issubclass(optimizer, Optimizer)):
        raise ValueError(
            f"optimizer must be a class (Adam, RMSprop or Adagrad from "
            f"dropout_lib.exact.optimizers); got {optimizer!r}."
        )
    form = _check_form(form)
    if eps_power is None:
        eps_power = epsilon_power(name, form)

    def mapped(value: float, power: float) -> dict[str, float]:
        return mlp.per_parameter(float(value), params, keep_probs, power)

    extra = dict(kwargs)
    if name == "Adagrad":
        g0 = initial_accumulator_value
        if g0 is None:
            g0 = 0.1 if form == "keras" else 0.0
        extra["initial_accumulator_value"] = mapped(g0, accumulator_power)
    elif initial_accumulator_value is not None:
        raise ValueError(
            f"initial_accumulator_value is an Adagrad hyperparameter; {name} has none "
            f"(got {initial_accumulator_value!r}). Leave it out."
        )
    return optimizer(mapped(lr, lr_power), eps=mapped(eps, eps_power), form=form, **extra)


def state_to_inverted(
    optimizer: type[Optimizer] | str, key: str, keep_probs: Sequence[float]
) -> Callable[[Mapping[str, NDArray]], dict[str, NDArray]]:
    """The map taking the standard net's optimizer state ``key`` to the inverted net's.

    Returns ``S -> {name: S[name] * p_k**(-power)}`` on consuming weights
    (``power`` from :data:`STATE_POWERS`) and ``S[name]`` elsewhere: the
    ``to_inverted`` argument of
    :meth:`dropout_lib.exact.compare.Comparison.state_gap`. For example Adam's
    ``'v'`` (power 2): the inverted net's second moment is the standard
    one's divided by ``p_k**2``.
    """
    name = _adaptive_name(optimizer)
    powers = STATE_POWERS[name]
    if key not in powers:
        raise ValueError(f"{name} has no state {key!r}; it has {sorted(powers)}.")
    consumers = mlp.consuming_weights(keep_probs)
    power = powers[key]

    def to_inverted(state: Mapping[str, NDArray]) -> dict[str, NDArray]:
        return {
            n: np.asarray(s) * consumers[n] ** (-power) if n in consumers else np.asarray(s)
            for n, s in state.items()
        }

    return to_inverted


def epsilon_ratio(optimizer: Optimizer) -> dict[str, NDArray[np.float64]]:
    """How much epsilon weighs in the denominator, entry by entry, in the current state.

    Returns ``{name: eps / q}`` with ``q`` the quantity epsilon is added to:
    ``sqrt(v)`` (Keras's Adam: uncorrected ``v``), ``sqrt(v / (1 - beta_2^t))``
    (paper Adam, ``t`` = steps taken), ``v`` or ``sqrt(v)`` (RMSprop, Keras /
    paper form; ``v - a^2`` if centered; AMSGrad's ``v_hat`` for Adam),
    ``G`` or ``sqrt(G)`` (Adagrad, Keras / paper form). A ratio near or above
    1 means epsilon shapes the step; far below 1, it hardly does. Entries
    with ``q = 0`` give ``inf``.

    Raises
    ------
    ValueError
        If ``optimizer`` is not Adam, RMSprop or Adagrad, or has taken no step.
    """
    name = _adaptive_name(type(optimizer))
    if not optimizer.state:
        raise ValueError("the optimizer has taken no step yet: it has no state to compare with.")
    placement = EPSILON_PLACEMENT[name, optimizer.form]
    out: dict[str, NDArray[np.float64]] = {}
    for param, s in optimizer.state.items():
        if name == "Adagrad":
            second = s["G"]
        elif name == "Adam":
            second = s["v_hat"] if optimizer.amsgrad else s["v"]
            if optimizer.form == "paper":
                second = second / (1 - optimizer.beta_2**optimizer.iterations)
        else:
            second = s["v"] - s["a"] * s["a"] if optimizer.centered else s["v"]
        q = second if placement == "inside" else np.sqrt(second)
        eps = _lookup_eps(optimizer.eps, param)
        with np.errstate(divide="ignore"):
            out[param] = np.where(q > 0, eps / np.where(q > 0, q, 1.0), np.inf)
    return out


def _lookup_eps(eps: float | Mapping[str, float], name: str) -> float:
    return float(eps[name]) if isinstance(eps, Mapping) else float(eps)


def compare_runs(
    params_inverted: Mapping[str, NDArray],
    data_batches: Sequence[tuple[NDArray, NDArray]],
    masks_sequence: Sequence[mlp.Masks],
    *,
    keep_probs: Sequence[float],
    optimizer_inverted: Optimizer,
    optimizers_standard: Mapping[str, Optimizer],
    steps: int,
    **train_kw,
) -> dict[str, compare.Comparison]:
    """One inverted run against several standard runs: ``{key: Comparison}``.

    As :func:`dropout_lib.exact.compare.compare_training` with
    ``optimizer_standard = optimizers_standard[key]`` for each key, but the
    inverted net is trained once (it does not depend on the standard
    optimizer), which halves the work when one map is compared with several
    controls. Every standard run starts from
    :func:`dropout_lib.exact.mlp.to_standard_params` of ``params_inverted`` (``W_k / p_k``,
    biases unchanged) and sees the same batches and masks. Give fresh
    optimizers (they hold the final state afterwards).
    """
    opts = [optimizer_inverted, *optimizers_standard.values()]
    if len({id(o) for o in opts}) != len(opts) or any(o.iterations or o.state for o in opts):
        raise ValueError(
            "every run needs its own fresh optimizer (no shared objects, no steps taken); "
            "build a new one for each key."
        )
    return compare.paired_runs(
        params_inverted,
        data_batches,
        masks_sequence,
        keep_probs=keep_probs,
        steps=steps,
        optimizer_inverted=optimizer_inverted,
        optimizers_standard=optimizers_standard,
        params_standard=mlp.to_standard_params(params_inverted, keep_probs),
        to_inverted=partial(mlp.to_inverted_params, keep_probs=keep_probs),
        **train_kw,
    )
