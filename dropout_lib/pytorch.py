"""The dropout maps for PyTorch's own optimizers (PyTorch itself is not needed).

Notation: ``keep_prob`` is the paper's ``p`` (probability of KEEPING a unit).
PyTorch's ``nn.Dropout(p)`` takes the probability of ZEROING a unit, Keras's
``rate``: ``nn.Dropout(p=0.2)`` keeps units with probability ``keep_prob = 0.8``,
and it is inverted dropout (kept units are divided by ``1 - p`` in training,
identity in ``eval()``).

The kernels (``nn.Linear.weight``, ``nn.Conv*.weight``) of the layers that
consume dropped units change coordinates between the two variants,
``W_tgt = s * W_src`` with ``s = 1/keep_prob`` (``'to_standard'``, from
PyTorch's dropout to the paper's) or ``s = keep_prob`` (``'to_inverted'``,
from a paper recipe to PyTorch); their gradients become ``g / s``. Everything
else (biases included) is unchanged. Give those kernels a parameter group of
their own with :func:`map_param_group`'s hyperparameters.

PyTorch's optimizers are not Keras's, so the maps differ (derivations in
:mod:`dropout_lib.exact.torch_optimizers`; ``to_standard`` shown):

==========  ==============  ===========================  ==================================
optimizer   ``lr``          ``eps``                      ``weight_decay`` (and others)
==========  ==============  ===========================  ==================================
SGD         ``lr / p**2``   (none)                       coupled L2: ``wd * p**2``
Adam        ``lr / p``      ``eps * p`` (Keras: same)    coupled L2: ``wd * p**2``
                                                         (Keras's Adam decay: ``wd * p``);
                                                         ``decoupled_weight_decay=True``:
                                                         ``wd * p``
AdamW       ``lr / p``      ``eps * p``                  decoupled: ``wd * p`` (default 0.01)
RMSprop     ``lr / p``      ``eps * p`` (Keras: p**2)    coupled L2: ``wd * p**2``
Adagrad     ``lr / p``      ``eps * p`` (Keras: p**2)    coupled L2: ``wd * p**2``;
                                                         ``initial_accumulator_value * p**2``;
                                                         ``lr_decay`` unchanged
==========  ==============  ===========================  ==================================

Gradient clipping: ``torch.nn.utils.clip_grad_value_(params, v)`` maps to
``v * p`` (to standard) when applied to the consuming kernels on their own.
``clip_grad_norm_`` has no exact map, even applied to one tensor: it scales by
``min(max_norm / (total_norm + 1e-6), 1)``, and the hard-coded ``1e-6`` does
not scale with the gradient (as Keras's ``MaxNorm`` epsilon); applied to all
parameters at once it is global-norm clipping, which has no consumer-side map.

Sources: the algorithm boxes of the PyTorch documentation,
https://docs.pytorch.org/docs/stable/optim.html (``SGD``, ``Adam``, ``AdamW``,
``RMSprop``, ``Adagrad``), ``torch.nn.Dropout`` and
``torch.nn.utils.clip_grads_with_norm_``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dropout_lib.reference import check_keep_prob
from dropout_lib.validation import NoExactMapError, check_rate  # the package's one class: dl.NoExactMapError

__all__ = ["DEFAULTS", "NoExactMapError", "keep_prob_from_torch_p", "map_param_group", "scale"]


# PyTorch's defaults for the hyperparameters a map changes (documentation, signatures).
DEFAULTS: dict[str, dict[str, Any]] = {
    "SGD": {"weight_decay": 0.0},
    "Adam": {"eps": 1e-8, "weight_decay": 0.0},
    "AdamW": {"eps": 1e-8, "weight_decay": 1e-2},
    "RMSprop": {"lr": 1e-2, "eps": 1e-8, "weight_decay": 0.0},
    "Adagrad": {"lr": 1e-2, "eps": 1e-10, "weight_decay": 0.0, "initial_accumulator_value": 0.0},
}
_LR_DEFAULT = {"Adam": 1e-3, "AdamW": 1e-3}

# Hyperparameters that no map changes (scale-free, or acting on the loss's sign).
_UNCHANGED = {
    "SGD": {"momentum", "dampening", "nesterov", "maximize", "foreach", "differentiable", "fused"},
    "Adam": {
        "betas",
        "amsgrad",
        "decoupled_weight_decay",
        "maximize",
        "foreach",
        "capturable",
        "differentiable",
        "fused",
    },
    "AdamW": {"betas", "amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused"},
    "RMSprop": {"alpha", "momentum", "centered", "maximize", "foreach", "capturable", "differentiable"},
    "Adagrad": {"lr_decay", "maximize", "foreach", "differentiable", "fused"},
}


def keep_prob_from_torch_p(p: float) -> float:
    """The keep probability of ``torch.nn.Dropout(p)``: ``1 - p``.

    PyTorch's ``p`` is the probability of dropping a unit (Keras's ``rate``).

    >>> keep_prob_from_torch_p(0.2)
    0.8
    """
    try:
        return 1.0 - check_rate(p)  # numpy reals too; a type error says so
    except ValueError:
        raise ValueError(
            f"torch.nn.Dropout's p (its DROP probability) must be in [0, 1); got {p!r}."
        ) from None


def scale(keep_prob: float, direction: str) -> float:
    """``s`` with ``W_target = s * W_source``: ``1/keep_prob`` to standard, ``keep_prob`` to inverted."""
    p = check_keep_prob(keep_prob)
    if direction == "to_standard":
        return 1.0 / p
    if direction == "to_inverted":
        return p
    raise ValueError(
        f"direction must be 'to_standard' (from torch.nn.Dropout to the paper's dropout) "
        f"or 'to_inverted' (from the paper's to torch.nn.Dropout); got {direction!r}."
    )


def _lr_power(optimizer: str) -> int:
    # SGD's update is linear in g: lr' = s^2 lr. The adaptive ones divide by a
    # root of the squared gradients, which cancels the gradient's 1/s: lr' = s lr.
    return 2 if optimizer == "SGD" else 1


def map_param_group(
    optimizer: str,
    hyperparameters: Mapping[str, Any],
    keep_prob: float,
    direction: str,
) -> dict[str, Any]:
    """The parameter-group hyperparameters for the consuming kernels of the other variant.

    Parameters
    ----------
    optimizer
        ``'SGD'``, ``'Adam'``, ``'AdamW'``, ``'RMSprop'`` or ``'Adagrad'`` (the
        ``torch.optim`` class name).
    hyperparameters
        The keyword arguments of the source net's optimizer (``lr``, ``eps``,
        ``weight_decay``, ``momentum``, ...). Omitted ones that a map changes
        take PyTorch's defaults (AdamW's ``weight_decay=0.01`` is mapped too).
    keep_prob
        ``p``, the keep probability of the dropout feeding the kernels; for
        ``torch.nn.Dropout(p=q)`` it is ``1 - q``.
    direction
        ``'to_standard'``: the source uses ``torch.nn.Dropout`` (inverted) and
        the target the paper's dropout (``W_tgt = W_src / keep_prob``);
        ``'to_inverted'``: the reverse (port a paper recipe to PyTorch).

    Returns
    -------
    dict
        Keyword arguments for ``{"params": consuming_kernels, **result}``; the
        other parameters keep the source's.

    Raises
    ------
    NoExactMapError
        For an optimizer or hyperparameter without a derived map, and for a
        ``torch.Tensor`` learning rate.

    Examples
    --------
    From ``nn.Dropout(0.5)`` (keep probability 0.5) to the paper's dropout:
    PyTorch's RMSprop has epsilon outside the root, so it maps by ``p``:

    >>> map_param_group("RMSprop", {"lr": 1e-3, "eps": 1e-8}, 0.5, "to_standard")
    {'lr': 0.002, 'eps': 5e-09, 'weight_decay': 0.0}
    """
    if optimizer not in DEFAULTS:
        raise NoExactMapError(f"no map derived for torch.optim.{optimizer}; supported: {sorted(DEFAULTS)}.")
    s = scale(keep_prob, direction)
    known = set(DEFAULTS[optimizer]) | {"lr"} | _UNCHANGED[optimizer]
    unknown = set(hyperparameters) - known
    if unknown:
        raise NoExactMapError(
            f"no map derived for torch.optim.{optimizer}'s {sorted(unknown)}; known: {sorted(known)}."
        )
    hp = {**DEFAULTS[optimizer], **dict(hyperparameters)}
    if "lr" not in hp:
        if optimizer == "SGD":
            raise ValueError("torch.optim.SGD needs lr (it has no default in older PyTorch).")
        hp["lr"] = _LR_DEFAULT.get(optimizer, DEFAULTS[optimizer].get("lr"))
    lr = hp["lr"]
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise NoExactMapError(f"lr must be a non-negative float to be mapped; got {lr!r}.")
    k = s ** _lr_power(optimizer)
    out = dict(hp)
    out["lr"] = float(lr) * k
    if "eps" in hp:
        out["eps"] = float(hp["eps"]) / s  # outside the root: g/s over (sqrt(v)/s + eps/s)
    decoupled = optimizer == "AdamW" or (optimizer == "Adam" and hp.get("decoupled_weight_decay"))
    # coupled: g + wd w must become (g + wd w)/s with w' = s w: wd' = wd / s^2;
    # decoupled: w *= 1 - lr wd must keep lr wd: wd' = wd / k.
    out["weight_decay"] = float(hp["weight_decay"]) / (k if decoupled else s**2)
    if "initial_accumulator_value" in hp:
        out["initial_accumulator_value"] = float(hp["initial_accumulator_value"]) / s**2
    return out
