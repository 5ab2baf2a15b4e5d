"""Compare an inverted-dropout run with a standard-dropout run, step by step, under a map.

Notation: ``keep_prob`` is the paper's ``p``; Keras's ``rate`` is ``1 - p``.

The book's equivalence claims all have one shape: train an inverted-dropout net
from ``theta_0`` with optimizer ``A``, and a standard-dropout net from
``phi(theta_0)`` with optimizer ``A'``, on the *same* batches and the *same*
masks; then the standard trajectory, mapped back, equals the inverted one:

    gap_t = max_name || psi(phi_t)[name] - theta_t[name] || / || theta_t[name] ||  ~ 0

for every step ``t``, where ``phi`` is the parameter map from inverted to
standard coordinates and ``psi`` its inverse. By default
``phi = mlp.to_standard_params`` (``W_k -> W_k / p_k``, biases unchanged) and
``psi = mlp.to_inverted_params``; any other pair can be given. ``A'`` carries
the mapped hyperparameters (e.g. ``lr -> lr / p^2`` for SGD on the consuming
weights); the per-run extras of :func:`dropout_lib.exact.training.train` (``l2``,
``constraints``) can differ between the runs too. A negative control is the same
call with unmapped hyperparameters: its gap must be large.

:func:`fitted_factors` measures by what factor one set of arrays differs from
another (a gradient ratio, a step-size ratio), parameter by parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from dropout_lib.exact import mlp
from dropout_lib.exact.mlp import Masks, Params
from dropout_lib.exact.optimizers import Optimizer
from dropout_lib.exact.training import TrainResult, train

ParamMap = Callable[[Mapping[str, NDArray]], Params]
OptimizerLike = Optimizer | Callable[[], Optimizer]

__all__ = ["Comparison", "Factor", "compare_training", "fitted_factors", "paired_runs", "trajectory_gaps"]


# --------------------------------------------------------------- factors


class Factor(NamedTuple):
    """``a ~ factor * b`` for one parameter: the least-squares factor and what is left.

    ``factor = <a, b> / <b, b>`` and ``residual = ||a - factor * b|| / ||a||``
    (Frobenius inner product and norms). ``residual = 0`` means ``a`` is exactly
    ``factor`` times ``b``; a residual near 1 means ``a`` is not proportional to
    ``b`` at all.
    """

    factor: float
    residual: float


def fitted_factors(a: Mapping[str, NDArray], b: Mapping[str, NDArray]) -> dict[str, Factor]:
    """Return, for every name, the :class:`Factor` with which ``a[name] ~ factor * b[name]``.

    For example ``fitted_factors(grads_inverted, grads_standard)`` gives ``1 / p_k``
    on the weights consuming a dropped layer and ``1`` elsewhere (PLAN #2), each
    with a residual at rounding level.

    Raises
    ------
    ValueError
        If the names or shapes differ, or if ``b[name]`` is all zeros (no factor
        is defined; drop that name or compare other arrays).
    """
    if set(a) != set(b):
        raise ValueError(f"parameter names differ: {sorted(a)} vs {sorted(b)}.")
    out: dict[str, Factor] = {}
    for name in b:
        x = np.asarray(a[name], dtype=np.float64)
        y = np.asarray(b[name], dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"{name!r} has shape {x.shape} in a but {y.shape} in b.")
        yy = float(np.sum(y * y))
        if yy == 0.0:
            raise ValueError(
                f"b[{name!r}] is all zeros, so no factor a = factor * b is defined; "
                "leave this parameter out of the comparison."
            )
        factor = float(np.sum(x * y)) / yy
        norm_a = float(np.linalg.norm(x))
        rest = float(np.linalg.norm(x - factor * y))
        out[name] = Factor(factor, rest / norm_a if norm_a > 0.0 else rest)
    return out


# --------------------------------------------------------------- trajectories


def trajectory_gaps(
    reference: Sequence[Mapping[str, NDArray]],
    other: Sequence[Mapping[str, NDArray]],
    to_reference: ParamMap | None = None,
) -> tuple[NDArray[np.float64], dict[str, NDArray[np.float64]]]:
    """Per-step relative gaps between two parameter trajectories.

    With ``r_t = reference[t]`` and ``o_t = to_reference(other[t])`` (``other[t]``
    itself if no map is given), returns ``(gaps, per_name)`` with

        per_name[name][t] = || o_t[name] - r_t[name] || / || r_t[name] ||

    (the absolute difference where ``||r_t[name]|| = 0``) and
    ``gaps[t] = max_name per_name[name][t]``: the quantity of
    :func:`dropout_lib.exact.mlp.relative_difference` at every step.

    Raises
    ------
    ValueError
        If the trajectories differ in length (record both runs with the same
        number of steps) or in parameter names.
    """
    if len(reference) != len(other):
        raise ValueError(
            f"the trajectories have {len(reference)} and {len(other)} snapshots; "
            "compare runs of the same number of steps (both recorded)."
        )
    if len(reference) == 0:
        raise ValueError("the trajectories are empty; train with record=True.")
    mapped = [to_reference(o) if to_reference is not None else o for o in other]
    names = list(reference[0])
    if set(mapped[0]) != set(names):
        raise ValueError(f"parameter names differ: {sorted(names)} vs {sorted(mapped[0])}.")
    per_name: dict[str, NDArray[np.float64]] = {}
    for name in names:
        r = np.stack([np.asarray(s[name], dtype=np.float64) for s in reference])
        o = np.stack([np.asarray(s[name], dtype=np.float64) for s in mapped])
        axes = tuple(range(1, r.ndim))
        diff = np.sqrt(np.sum((o - r) ** 2, axis=axes))
        ref = np.sqrt(np.sum(r * r, axis=axes))
        per_name[name] = np.where(ref > 0.0, diff / np.where(ref > 0.0, ref, 1.0), diff)
    gaps = np.max(np.stack(list(per_name.values())), axis=0)
    return gaps, per_name


@dataclass
class Comparison:
    """What :func:`compare_training` returns.

    Attributes
    ----------
    inverted, standard
        The two runs (:class:`dropout_lib.exact.training.TrainResult`, with histories);
        ``standard`` is in standard coordinates.
    gaps
        ``gaps[t]``, ``t = 0 .. steps``: the relative gap after ``t`` steps between
        the inverted run and the standard run mapped back (``gaps[0]`` is the
        rounding of the initial map); see :func:`trajectory_gaps`.
    parameter_gaps
        The same, per parameter name.
    to_inverted
        The map from standard to inverted coordinates used for the gaps.
    optimizer_inverted, optimizer_standard
        The two optimizers after the runs, holding their final state (e.g. the
        velocity ``state[name]['v']`` of momentum SGD); see :meth:`state_gap`.
    """

    inverted: TrainResult
    standard: TrainResult
    gaps: NDArray[np.float64]
    parameter_gaps: dict[str, NDArray[np.float64]]
    to_inverted: ParamMap
    optimizer_inverted: Optimizer
    optimizer_standard: Optimizer

    @classmethod
    def from_runs(
        cls,
        inverted: TrainResult,
        standard: TrainResult,
        to_inverted: ParamMap,
        optimizer_inverted: Optimizer,
        optimizer_standard: Optimizer,
    ) -> Comparison:
        """The comparison of two recorded runs: the one way every ``Comparison`` is built.

        ``gaps, parameter_gaps = trajectory_gaps(inverted.history,
        standard.history, to_inverted)``, i.e. ``gaps[t] = max_name
        ||psi(phi_t)[name] - theta_t[name]|| / ||theta_t[name]||`` with
        ``psi = to_inverted`` (see :func:`trajectory_gaps`); the other
        attributes are the arguments, kept as given.
        """
        gaps, per_name = trajectory_gaps(inverted.history, standard.history, to_inverted)
        return cls(
            inverted=inverted,
            standard=standard,
            gaps=gaps,
            parameter_gaps=per_name,
            to_inverted=to_inverted,
            optimizer_inverted=optimizer_inverted,
            optimizer_standard=optimizer_standard,
        )

    @property
    def worst(self) -> float:
        """``max_t gaps[t]``: the largest gap over the whole run."""
        return float(self.gaps.max())

    @property
    def final(self) -> float:
        """``gaps[-1]``: the gap after the last step."""
        return float(self.gaps[-1])

    @property
    def moved(self) -> float:
        """How far the inverted run went: ``relative_difference(theta_T, theta_0)``.

        A small gap means something only if this is not small too.
        """
        return mlp.relative_difference(self.inverted.params, self.inverted.history[0])

    def state_gap(self, key: str, to_inverted: ParamMap | None = None) -> float:
        """Relative gap between the two optimizers' final state ``key``, mapped back.

        Returns ``relative_difference(psi(S), s)`` with ``s[name]`` =
        ``optimizer_inverted.state[name][key]`` and ``S`` the standard optimizer's,
        ``psi`` = ``to_inverted`` (by default the parameter map: right for a
        momentum velocity, which is a sum of parameter steps; an Adam moment
        maps like a gradient instead, so pass its map).

        Raises
        ------
        ValueError
            If an optimizer has no state ``key`` for some parameter.
        """
        psi = self.to_inverted if to_inverted is None else to_inverted

        def slot(opt: Optimizer, which: str) -> Params:
            try:
                return {n: s[key] for n, s in opt.state.items()}
            except KeyError:
                have = sorted({k for s in opt.state.values() for k in s})
                raise ValueError(
                    f"the {which} optimizer has no state {key!r} for every parameter; it has {have}."
                ) from None

        return mlp.relative_difference(
            psi(slot(self.optimizer_standard, "standard")), slot(self.optimizer_inverted, "inverted")
        )

    def step_factors(self, t: int = 0) -> dict[str, Factor]:
        """The standard run's step ``t``, mapped back, as a multiple of the inverted run's.

        With ``Delta = theta_{t+1} - theta_t`` (inverted) and
        ``Delta' = psi(phi_{t+1}) - psi(phi_t)`` (standard, mapped back), returns
        :func:`fitted_factors` ``(Delta', Delta)``: 1 everywhere when the
        hyperparameters are mapped; e.g. ``p^2`` on a consuming weight for plain
        SGD run with the *same* learning rate in both nets.
        """
        steps = len(self.gaps) - 1
        if not 0 <= t < steps:
            raise ValueError(f"t must be a step in [0, {steps}); got {t}.")
        inv, std = self.inverted.history, self.standard.history
        a, b = self.to_inverted(std[t + 1]), self.to_inverted(std[t])
        delta_std = {n: a[n] - b[n] for n in a}
        delta_inv = {n: inv[t + 1][n] - inv[t][n] for n in inv[t]}
        return fitted_factors(delta_std, delta_inv)


def _fresh(optimizer: OptimizerLike, which: str) -> Optimizer:
    opt = optimizer() if not isinstance(optimizer, Optimizer) and callable(optimizer) else optimizer
    if not isinstance(opt, Optimizer):
        raise ValueError(
            f"optimizer_{which} must be a dropout_lib.exact.optimizers.Optimizer or a "
            f"callable returning one; got {type(opt).__name__}."
        )
    if opt.iterations != 0 or opt.state:
        raise ValueError(
            f"optimizer_{which} has already taken {opt.iterations} steps; its state would "
            "leak into this run. Pass a new optimizer (or a factory such as "
            "lambda: SGD(0.1))."
        )
    return opt


def compare_training(
    params_inverted: Mapping[str, NDArray],
    data_batches: Sequence[tuple[NDArray, NDArray]],
    masks_sequence: Sequence[Masks] | Callable[[int], Masks],
    *,
    keep_probs: Sequence[float],
    optimizer_inverted: OptimizerLike,
    optimizer_standard: OptimizerLike,
    steps: int,
    params_standard: Mapping[str, NDArray] | None = None,
    to_standard: ParamMap | None = None,
    to_inverted: ParamMap | None = None,
    inverted_kw: Mapping[str, Any] | None = None,
    standard_kw: Mapping[str, Any] | None = None,
    **train_kw: Any,
) -> Comparison:
    """Train both variants on identical batches and masks; return the per-step gaps.

    The inverted net starts from ``params_inverted``, the standard net from
    ``params_standard`` (by default ``to_standard(params_inverted)``). Both runs
    call :func:`dropout_lib.exact.training.train` with ``steps``, the same
    ``data_batches`` and ``masks_sequence``, and ``train_kw`` (e.g.
    ``activation``, ``loss``); ``inverted_kw`` and ``standard_kw`` add or override
    keyword arguments for one run only (a mapped ``l2`` or ``constraints``).
    The standard history is mapped back with ``to_inverted`` and compared with
    the inverted one by :func:`trajectory_gaps`.

    Parameters
    ----------
    keep_probs
        The paper's ``p`` per layer input (Keras's ``rate`` is ``1 - p``), as in
        :func:`dropout_lib.exact.mlp.forward`.
    optimizer_inverted, optimizer_standard
        Fresh :class:`dropout_lib.exact.optimizers.Optimizer` objects, or zero-argument
        factories returning them (e.g. ``lambda: SGD(eta, momentum=0.9)``).
        After the call they hold the final optimizer state (e.g. the velocity).
    to_standard, to_inverted
        The parameter map and its inverse; by default
        :func:`dropout_lib.exact.mlp.to_standard_params` and
        :func:`dropout_lib.exact.mlp.to_inverted_params` with ``keep_probs``.

    Returns
    -------
    Comparison
        Both runs and ``gaps`` of length ``steps + 1``.
    """
    for name, kw in (
        ("train_kw", train_kw),
        ("inverted_kw", inverted_kw or {}),
        ("standard_kw", standard_kw or {}),
    ):
        clash = {"variant", "keep_probs", "optimizer", "steps", "record"} & set(kw)
        if clash:
            raise ValueError(
                f"{name} sets {sorted(clash)}, which compare_training fixes itself "
                "(variant per run; keep_probs, optimizers and steps are its own arguments)."
            )
    opt_inv = _fresh(optimizer_inverted, "inverted")
    opt_std = _fresh(optimizer_standard, "standard")
    if opt_inv is opt_std:
        raise ValueError(
            "optimizer_inverted and optimizer_standard are the same object; the runs "
            "would share state. Give each run its own optimizer."
        )
    if to_standard is None:
        to_standard = partial(mlp.to_standard_params, keep_probs=keep_probs)
    if to_inverted is None:
        to_inverted = partial(mlp.to_inverted_params, keep_probs=keep_probs)
    start_std = to_standard(params_inverted) if params_standard is None else params_standard
    return paired_runs(
        params_inverted,
        data_batches,
        masks_sequence,
        keep_probs=keep_probs,
        steps=steps,
        optimizer_inverted=opt_inv,
        optimizers_standard={None: opt_std},
        params_standard=start_std,
        to_inverted=to_inverted,
        inverted_kw=inverted_kw,
        standard_kw=standard_kw,
        **train_kw,
    )[None]


def paired_runs(
    params_inverted: Mapping[str, NDArray],
    data_batches: Sequence[tuple[NDArray, NDArray]],
    masks_sequence: Sequence[Masks] | Callable[[int], Masks],
    *,
    keep_probs: Sequence[float],
    steps: int,
    optimizer_inverted: Optimizer,
    optimizers_standard: Mapping[Any, Optimizer],
    params_standard: Mapping[str, NDArray],
    to_inverted: ParamMap,
    inverted_kw: Mapping[str, Any] | None = None,
    standard_kw: Mapping[str, Any] | None = None,
    **train_kw: Any,
) -> dict[Any, Comparison]:
    """One inverted run against one standard run per optimizer: ``{key: Comparison}``.

    The loop behind :func:`compare_training` and
    :func:`dropout_lib.exact.adaptive.compare_runs`, which check their
    arguments first. The inverted net is trained once from ``params_inverted``
    with ``optimizer_inverted``; for each ``key`` the standard net is trained
    from ``params_standard`` with ``optimizers_standard[key]``. Every run is
    :func:`dropout_lib.exact.training.train` with ``keep_probs``, ``steps``,
    ``record=True``, the same batches and masks and ``train_kw``, updated by
    ``inverted_kw`` or ``standard_kw`` for its side; each pair is compared by
    :meth:`Comparison.from_runs` with ``to_inverted``.
    """
    common = dict(keep_probs=keep_probs, steps=steps, record=True, **train_kw)
    inverted = train(
        params_inverted,
        data_batches,
        masks_sequence,
        variant="inverted",
        optimizer=optimizer_inverted,
        **{**common, **(inverted_kw or {})},
    )
    out: dict[Any, Comparison] = {}
    for key, opt in optimizers_standard.items():
        standard = train(
            params_standard,
            data_batches,
            masks_sequence,
            variant="standard",
            optimizer=opt,
            **{**common, **(standard_kw or {})},
        )
        out[key] = Comparison.from_runs(inverted, standard, to_inverted, optimizer_inverted, opt)
    return out
