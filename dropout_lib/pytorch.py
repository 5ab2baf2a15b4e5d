"""The dropout maps for PyTorch's own optimizers (importing this module does not import torch).

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

PyTorch's optimizers are not Keras's, so the maps differ (``to_standard``
shown; the exponents follow from where each rule puts the gradient, see
:func:`map_param_group`):

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

Adagrad's accumulator needs more than a parameter group: torch 2.14.1 fills
every parameter's ``state["sum"]`` from the CONSTRUCTOR's
``initial_accumulator_value`` (and a parameter whose state is created later
reads ``self.defaults``), so a mapped value in the kernels' group is ignored.
Build the optimizer with :func:`build_adagrad` (or call
:func:`set_adagrad_accumulators` right after ``torch.optim.Adagrad(...)``).

Every row is checked on torch itself (``make test-pytorch``, ``tests_pytorch/``):
``torch.nn.Dropout`` and ``torch.optim`` train the inverted net against a
paper-dropout net on the same masks, in float64, in both directions.

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

__all__ = [
    "DEFAULTS",
    "NoExactMapError",
    "build_adagrad",
    "keep_prob_from_torch_p",
    "map_param_group",
    "scale",
    "set_adagrad_accumulators",
]


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
_ADAM_UNCHANGED = {
    "betas",
    "amsgrad",
    "decoupled_weight_decay",
    "maximize",
    "foreach",
    "capturable",
    "differentiable",
    "fused",
}
_UNCHANGED = {
    "SGD": {"momentum", "dampening", "nesterov", "maximize", "foreach", "differentiable", "fused"},
    "Adam": _ADAM_UNCHANGED,
    "AdamW": _ADAM_UNCHANGED,
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
        ``weight_decay``, ``momentum``, ...), or a torch optimizer's
        ``defaults`` or one of its ``param_groups`` (its ``'params'`` entry is
        left out of the result). Omitted ones that a map changes take
        PyTorch's defaults (AdamW's ``weight_decay=0.01`` is mapped too).
        Every key must be one this map knows: a hyperparameter it does not
        know (a newer torch's, or a scheduler's such as ``initial_lr``) is
        refused, never passed on unmapped.
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
        other parameters keep the source's. For ``'Adagrad'``, build the
        optimizer with :func:`build_adagrad`: ``torch.optim.Adagrad`` ignores a
        group's ``initial_accumulator_value``.

    Notes
    -----
    With ``W_tgt = s W_src`` the target's gradient is ``g / s``. SGD's step is
    linear in the gradient, so ``lr`` maps by ``s**2``; Adam, RMSprop and
    Adagrad divide by a root of squared gradients (scaled by ``1/s`` too), so
    ``lr`` maps by ``s`` and an ``eps`` added outside the root by ``1/s``, and
    Adagrad's starting sum of squares by ``1/s**2``. A coupled
    ``weight_decay`` adds ``wd * W`` to the gradient: ``wd / s**2``. A
    decoupled one (``AdamW``, or ``decoupled_weight_decay=True``) multiplies
    ``W`` by ``1 - lr * wd``: ``wd`` over ``lr``'s factor. ``lr_decay``,
    ``momentum``, ``dampening``, ``nesterov``, ``betas``, ``alpha``,
    ``centered``, ``amsgrad`` and ``maximize`` are unchanged.

    Raises
    ------
    NoExactMapError
        For an optimizer or hyperparameter without a derived map, and for a
        ``torch.Tensor`` learning rate.
    ValueError
        For a keep probability outside (0, 1], an unknown direction, or
        ``decoupled_weight_decay`` that is not a bool.

    Examples
    --------
    From ``nn.Dropout(0.5)`` (keep probability 0.5) to the paper's dropout:
    PyTorch's RMSprop has epsilon outside the root, so it maps by ``p``:

    >>> map_param_group("RMSprop", {"lr": 1e-3, "eps": 1e-8}, 0.5, "to_standard")
    {'lr': 0.002, 'eps': 5e-09, 'weight_decay': 0.0}

    AdamW's own defaults (``torch.optim.AdamW(params).defaults`` in torch
    2.14.1) are accepted as they are; the default decay 0.01 is mapped:

    >>> adamw = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2,
    ...          "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
    ...          "differentiable": False, "fused": None, "decoupled_weight_decay": True}
    >>> group = map_param_group("AdamW", adamw, 0.5, "to_standard")
    >>> group["lr"], group["eps"], group["weight_decay"], group["decoupled_weight_decay"]
    (0.002, 5e-09, 0.005, True)
    """
    if optimizer not in DEFAULTS:
        raise NoExactMapError(f"no map derived for torch.optim.{optimizer}; supported: {sorted(DEFAULTS)}.")
    s = scale(keep_prob, direction)
    given = {k: v for k, v in hyperparameters.items() if k != "params"}  # a param group's tensors
    known = set(DEFAULTS[optimizer]) | {"lr"} | _UNCHANGED[optimizer]
    unknown = set(given) - known
    if unknown:
        raise NoExactMapError(
            f"no map derived for torch.optim.{optimizer}'s {sorted(unknown)} (a key this map does not "
            f"know may change the update, so it is not passed on unmapped); known: {sorted(known)}. "
            "Leave it out if it does not change the update, or do not use this map."
        )
    hp = {**DEFAULTS[optimizer], **given}
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
    # torch reads decoupled_weight_decay per group (AdamW's groups carry True).
    decoupled = hp.get("decoupled_weight_decay", optimizer == "AdamW")
    if not isinstance(decoupled, bool):
        raise ValueError(f"decoupled_weight_decay must be True or False; got {decoupled!r}.")
    # coupled: g + wd w must become (g + wd w)/s with w' = s w: wd' = wd / s^2;
    # decoupled: w *= 1 - lr wd must keep lr wd: wd' = wd / k.
    out["weight_decay"] = float(hp["weight_decay"]) / (k if decoupled else s**2)
    if "initial_accumulator_value" in hp:
        out["initial_accumulator_value"] = float(hp["initial_accumulator_value"]) / s**2
    return out


def set_adagrad_accumulators(optimizer: Any) -> None:
    """Fill each parameter's Adagrad accumulator from its OWN group's ``initial_accumulator_value``.

    torch 2.14.1's ``torch.optim.Adagrad`` sets ``state["sum"] = G_0`` for
    every parameter in its constructor, with ``G_0`` the constructor's
    ``initial_accumulator_value``, whatever a parameter group says (and a
    parameter whose state is created later, at its first step, reads
    ``self.defaults``). The mapped value that :func:`map_param_group` gives
    the consuming kernels (``G_0 * keep_prob**2`` to standard) is therefore
    ignored unless it is written into the state: this function does that,
    ``state["sum"].fill_(G_0)`` with each group's ``G_0`` (``complex(G_0, G_0)``
    for a complex parameter, as torch does).

    Call it once, right after ``torch.optim.Adagrad(...)`` and before the
    first ``step()``; :func:`build_adagrad` does both.

    Raises
    ------
    TypeError
        If ``optimizer`` is not a ``torch.optim.Adagrad``.
    ValueError
        If a group's ``initial_accumulator_value`` is not a finite real
        ``>= 0``; if a parameter has no state yet (added with
        ``add_param_group`` after construction: build the optimizer with every
        group at once), or has already taken a step (its accumulator holds
        gradients; overwriting it would not be the map).
    """
    import torch

    if not isinstance(optimizer, torch.optim.Adagrad):
        raise TypeError(f"expected a torch.optim.Adagrad; got {type(optimizer).__name__}.")
    for i, group in enumerate(optimizer.param_groups):
        g0 = group["initial_accumulator_value"]
        if isinstance(g0, bool) or not isinstance(g0, (int, float)) or not (math.isfinite(g0) and g0 >= 0):
            raise ValueError(
                f"param group {i}: initial_accumulator_value must be a finite real >= 0; got {g0!r}."
            )
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                raise ValueError(
                    f"param group {i} has a parameter without Adagrad state (added with add_param_group "
                    "after construction?); torch would fill its accumulator from the constructor's "
                    "initial_accumulator_value at its first step. Build the optimizer with every group "
                    "at once: dropout_lib.pytorch.build_adagrad(groups, ...)."
                )
            if float(state["step"]) != 0.0:
                raise ValueError(
                    f"param group {i}: a parameter has already taken {float(state['step']):g} step(s); its "
                    "accumulator holds squared gradients, and overwriting it would not be the map. Set "
                    "the accumulators before the first step."
                )
            state["sum"].fill_(complex(g0, g0) if torch.is_complex(p) else g0)


def build_adagrad(params: Any, **kwargs: Any) -> Any:
    """``torch.optim.Adagrad(params, **kwargs)`` whose accumulators follow each group's value.

    Use it where parameter groups carry their own ``initial_accumulator_value``,
    as the consuming kernels' group from :func:`map_param_group` does
    (``torch.optim.Adagrad`` itself fills every accumulator from the
    constructor's value; see :func:`set_adagrad_accumulators`). A group without
    the key takes ``kwargs``'s (PyTorch's default 0), as in torch.

    Example (not run here; ``make test-pytorch`` runs the recipe's)::

        paper = dict(lr=1e-2, eps=1e-10, initial_accumulator_value=0.1)
        mapped = map_param_group("Adagrad", paper, 0.8, "to_inverted")
        opt = build_adagrad([{"params": rest, **paper}, {"params": kernels, **mapped}])
    """
    import torch

    optimizer = torch.optim.Adagrad(params, **kwargs)
    set_adagrad_accumulators(optimizer)
    return optimizer
