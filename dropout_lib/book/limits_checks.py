"""The experiments of the chapter "Where the equivalence ends", as functions.

Notation: ``keep_prob`` is the paper's ``p``; Keras's ``rate`` is ``1 - p``.
Every net is a :mod:`dropout_lib.exact.mlp` ReLU MLP, ``z = d(h) @ W + b``.
Each function runs an inverted net and a standard net on identical batches and
masks and returns the gaps the chapter asserts on; the statements they check
are proved in the chapter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from dropout_lib.exact import mlp
from dropout_lib.exact.compare import trajectory_gaps
from dropout_lib.exact.optimizers import SGD, Adam, Optimizer
from dropout_lib.exact.training import train
from dropout_lib.reference import Variant, apply_dropout, check_keep_prob
from dropout_lib.theory import limits

Params = dict[str, NDArray[np.float64]]
Switch = Callable[[Params, Optimizer], Params] | None

__all__ = [
    "ClipExperiment",
    "ScheduleExperiment",
    "clip_experiment",
    "practice_checks",
    "schedule_experiment",
    "schedule_gaps",
    "tied_lm_outputs",
    "tied_lm_to_standard",
    "tied_training_gap",
]


def _scheduled_run(params, batches, masks, kp_a, kp_b, T1, variant, opt, switch):
    """``T1`` steps at ``kp_a``, then the rest at ``kp_b``; ``switch`` re-maps in between."""
    kw = dict(variant=variant, optimizer=opt)
    first = train(params, batches, masks[:T1], keep_probs=kp_a, steps=T1, **kw)
    middle = first.params if switch is None else switch(first.params, opt)
    second = train(middle, batches, masks[T1:], keep_probs=kp_b, steps=len(masks) - T1, **kw)
    return first.history + second.history[1:]


def schedule_gaps(
    net: Mapping[str, NDArray],
    batches: Sequence[tuple[NDArray, NDArray]],
    masks: Sequence[mlp.Masks],
    kp_a: Sequence[float],
    kp_b: Sequence[float],
    T1: int,
    make_inv: Callable[[], Optimizer],
    make_std: Callable[[], Optimizer],
    switch: Switch,
) -> tuple[NDArray[np.float64], list[Params], list[Params]]:
    """Gaps between an inverted run and a standard run when the keep probabilities change.

    Both nets train ``T1`` steps at ``kp_a`` and ``len(masks) - T1`` steps at
    ``kp_b``. The standard net starts at the consumer map for ``kp_a``
    (:func:`dropout_lib.exact.mlp.to_standard_params`); ``switch(params,
    optimizer)`` (e.g. :func:`dropout_lib.theory.limits.switch_keep_probs`)
    re-maps it at the change, or ``None`` keeps the map fixed. Each standard
    snapshot is mapped back with the map it is meant to satisfy (``kp_a`` up
    to ``T1``, then ``kp_b`` if re-mapped). Returns ``(gaps, inverted
    history, standard history)`` with ``gaps[t]`` as
    :func:`dropout_lib.exact.compare.trajectory_gaps`.
    """
    inv = _scheduled_run(net, batches, masks, kp_a, kp_b, T1, "inverted", make_inv(), None)
    std = _scheduled_run(
        mlp.to_standard_params(net, kp_a), batches, masks, kp_a, kp_b, T1, "standard", make_std(), switch
    )
    back = [kp_a] * (T1 + 1) + [kp_a if switch is None else kp_b] * (len(masks) - T1)
    std_back = [mlp.to_inverted_params(q, kp) for q, kp in zip(std, back)]
    return trajectory_gaps(inv, std_back)[0], inv, std


@dataclass
class ScheduleExperiment:
    """What :func:`schedule_experiment` returns.

    Attributes
    ----------
    gaps
        ``{(optimizer, switch): gaps[t]}`` for optimizers ``'sgd'``,
        ``'momentum'``, ``'adam'`` and switches ``'fixed'`` (map kept),
        ``'weights'`` (weights re-mapped at the change), ``'state'`` (weights
        and optimizer state re-mapped).
    fixed_fn, remap_fn
        At the change (momentum run), the relative mismatch of the standard
        net's training output at the new keep probabilities against the
        inverted net's: with the old map kept, and with the weights re-mapped.
    final_inverted
        The inverted net at the end of the momentum run.
    """

    gaps: dict[tuple[str, str], NDArray[np.float64]]
    fixed_fn: float
    remap_fn: float
    final_inverted: Params


def schedule_experiment(
    net: Mapping[str, NDArray],
    batches: Sequence[tuple[NDArray, NDArray]],
    masks: Sequence[mlp.Masks],
    kp_a: Sequence[float],
    kp_b: Sequence[float],
    T1: int,
    *,
    lr: float = 0.05,
    momentum: float = 0.9,
    lr_adam: float = 0.01,
    eps: float = 1e-3,
) -> ScheduleExperiment:
    """:func:`schedule_gaps` for SGD, momentum SGD and Adam, with each of three switches.

    The standard optimizers carry the map for ``kp_a`` (SGD: ``lr / p^2`` on
    consuming kernels; Adam: ``lr_adam / p`` and ``eps * p``); the switches
    use :func:`dropout_lib.theory.limits.switch_keep_probs` (which moves the
    hyperparameters to the map for ``kp_b``) with or without rescaling the
    optimizer state.
    """
    P = lambda value, power: mlp.per_parameter(value, net, kp_a, power)  # noqa: E731
    optimizers = {
        "sgd": (lambda: SGD(lr), lambda: SGD(P(lr, -2))),
        "momentum": (lambda: SGD(lr, momentum=momentum), lambda: SGD(P(lr, -2), momentum=momentum)),
        "adam": (lambda: Adam(lr_adam, eps=eps), lambda: Adam(P(lr_adam, -1), eps=P(eps, 1))),
    }
    switches: dict[str, Switch] = {
        "fixed": None,
        "weights": lambda q, o: limits.switch_keep_probs(q, o, kp_a, kp_b, rescale_state=False),
        "state": lambda q, o: limits.switch_keep_probs(q, o, kp_a, kp_b),
    }
    gaps, hist = {}, {}
    for o, (make_inv, make_std) in optimizers.items():
        for w, switch in switches.items():
            gaps[o, w], *hist[o, w] = schedule_gaps(
                net, batches, masks, kp_a, kp_b, T1, make_inv, make_std, switch
            )
    inv_hist, std_hist = hist["momentum", "fixed"]
    kw = dict(keep_probs=kp_b, masks=masks[T1], training=True)
    x = batches[T1 % len(batches)][0]
    z_inv = mlp.forward(inv_hist[T1], x, variant="inverted", **kw)[0]
    z_fixed = mlp.forward(std_hist[T1], x, variant="standard", **kw)[0]
    z_remap = mlp.forward(mlp.to_standard_params(inv_hist[T1], kp_b), x, variant="standard", **kw)[0]
    return ScheduleExperiment(
        gaps=gaps,
        fixed_fn=limits.relative_mismatch(z_fixed, z_inv),
        remap_fn=limits.relative_mismatch(z_remap, z_inv),
        final_inverted=inv_hist[-1],
    )


def tied_training_gap(
    ae: Mapping[str, NDArray],
    xs: Sequence[NDArray],
    masks: Sequence[NDArray],
    keep_prob: float,
    steps: int,
    opt_inv: Optimizer,
    opt_std: Optimizer,
) -> tuple[float, float]:
    """Train a tied autoencoder both ways; return (largest gap, how far the inverted ``W`` moved).

    The inverted net starts at ``ae``, the standard one at the square-root map
    (:func:`dropout_lib.theory.limits.tied_to_standard`); the standard
    trajectory is mapped back with :func:`dropout_lib.theory.limits.tied_to_inverted`.
    The second number is ``||W_final - W_0|| / ||W_0||`` of the inverted run.
    """
    kw = dict(keep_prob=keep_prob, steps=steps)
    inv = limits.train_autoencoder(ae, xs, masks, variant="inverted", optimizer=opt_inv, **kw)
    std = limits.train_autoencoder(
        limits.tied_to_standard(ae, keep_prob), xs, masks, variant="standard", optimizer=opt_std, **kw
    )
    gaps, _ = trajectory_gaps(inv.history, std.history, lambda q: limits.tied_to_inverted(q, keep_prob))
    moved = np.linalg.norm(inv.params["W"] - ae["W"]) / np.linalg.norm(ae["W"])
    return float(gaps.max()), float(moved)


@dataclass
class ClipExperiment:
    """Global-norm clipping under the consumer map (see :func:`clip_experiment`).

    Attributes
    ----------
    ratios
        ``N_std / N_inv`` at each step of the inverted run (the factor a global
        threshold would need).
    inverted_norms
        ``N_inv`` at each step.
    fraction_factor
        The smallest, over tensors, of ``max_t / min_t`` of that tensor's share
        ``||g'_theta|| / N_inv`` (what a per-tensor threshold would need).
    grid, grid_gaps, best_factor, best_gap
        The scan of the standard net's threshold ``c' = f c``: the largest
        trajectory gap at each ``f`` of ``grid``, and the best ``f`` after
        Brent's refinement.
    weighted, per_tensor
        Largest gaps of the two exact rules: the weighted global norm, and
        per-tensor clipping with ``c p_k`` on consuming kernels.
    """

    ratios: NDArray[np.float64]
    inverted_norms: NDArray[np.float64]
    fraction_factor: float
    grid: NDArray[np.float64]
    grid_gaps: NDArray[np.float64]
    best_factor: float
    best_gap: float
    weighted: float
    per_tensor: float


def clip_experiment(
    net: Mapping[str, NDArray],
    batches: Sequence[tuple[NDArray, NDArray]],
    masks: Sequence[mlp.Masks],
    keep_probs: Sequence[float],
    *,
    lr: float,
    clipnorm: float,
    grid: NDArray[np.float64],
) -> ClipExperiment:
    """Inverted SGD with ``global_clipnorm=clipnorm`` against the consumer-mapped standard net.

    The standard net has the consumer map's weights and learning rates
    (``W_k / p_k``, ``lr / p_k^2`` on consuming kernels); its clipping rule is
    varied: global at ``f * clipnorm`` for ``f`` in ``grid`` (then Brent,
    :func:`dropout_lib.theory.limits.scan_and_refine`), the weighted global
    norm (:class:`dropout_lib.theory.limits.WeightedGlobalClip`), and, against
    an inverted run with per-tensor ``clipnorm``, per-tensor ``clipnorm * p_k``.
    """
    steps = len(masks)
    lr_std = mlp.per_parameter(lr, net, keep_probs, -2)

    def run(params, variant, opt):
        return train(
            params, batches, masks, variant=variant, keep_probs=keep_probs, optimizer=opt, steps=steps
        )

    def gap(inv, opt_std):
        std = run(mlp.to_standard_params(net, keep_probs), "standard", opt_std)
        back = lambda q: mlp.to_inverted_params(q, keep_probs)  # noqa: E731
        return float(trajectory_gaps(inv.history, std.history, back)[0].max())

    inv_global = run(net, "inverted", SGD(lr, global_clipnorm=clipnorm))
    split = limits.gradient_norm_split(inv_global.history, batches, masks, keep_probs=keep_probs)
    fraction_factor = min(f.max() / f.min() for f in split.fractions.values())
    best_factor, best_gap, grid_gaps = limits.scan_and_refine(
        lambda f: gap(inv_global, SGD(lr_std, global_clipnorm=clipnorm * f)), grid
    )
    weights = mlp.consuming_weights(keep_probs)
    weighted = gap(inv_global, limits.WeightedGlobalClip(SGD(lr_std), clipnorm, weights))
    inv_per_tensor = run(net, "inverted", SGD(lr, clipnorm=clipnorm))
    per_tensor = gap(inv_per_tensor, SGD(lr_std, clipnorm=mlp.per_parameter(clipnorm, net, keep_probs, 1)))
    return ClipExperiment(
        ratios=split.ratios,
        inverted_norms=split.inverted,
        fraction_factor=float(fraction_factor),
        grid=np.asarray(grid),
        grid_gaps=grid_gaps,
        best_factor=best_factor,
        best_gap=best_gap,
        weighted=weighted,
        per_tensor=per_tensor,
    )


def practice_checks(
    final_inverted: Mapping[str, NDArray],
    x: NDArray,
    keep_probs: Sequence[float],
    new_keep_prob: float,
) -> dict[str, float | bool]:
    """The numbers behind the chapter's advice on exporting, fine-tuning and changing ``p``.

    For an inverted net ``final_inverted`` (all layers' keep probability
    ``p = keep_probs[0]``, equal for every layer) and its consumer-mapped
    standard net, on inputs ``x``:

    * ``export``: relative mismatch of the two nets' test-time outputs;
    * ``inv_bitwise``: the inverted net with dropout removed (``p = 1``) gives
      its test-time output bit for bit;
    * ``std_raw`` / ``std_scaled``: the standard net with dropout removed,
      against its test-time output, before / after multiplying its consuming
      kernels by ``p``;
    * with the first layer's input keep probability changed to ``p' =
      new_keep_prob``, the exact mean over all ``2^n`` input masks of the first
      pre-activation against the test-time one: ``inv_mean`` (inverted, old
      test time), ``std_old`` (standard, old test time ``p h W + b``),
      ``std_new`` (standard, test time at ``p'``), ``std_rescaled`` (standard
      with ``W_1`` times ``p / p'``: the larger of its mean against the old
      net's old test-time output and its own test-time output at ``p'``
      against that same output), ``std_rescaled_old`` (the rescaled net's mean
      against its test-time output at the old ``p``: the scale must become
      ``p'`` in this case too).
    """
    kp = tuple(keep_probs)
    p, q = kp[0], float(new_keep_prob)
    final_std = mlp.to_standard_params(final_inverted, kp)
    test_inv = mlp.predict(final_inverted, x, variant="inverted", keep_probs=kp)
    test_std = mlp.predict(final_std, x, variant="standard", keep_probs=kp)

    def no_dropout(params):
        ones = (1.0,) * len(kp)
        return mlp.forward(params, x, variant="inverted", keep_probs=ones, training=True)[0]

    def z1(params, variant, keep, mask=None):
        first = {"W1": params["W1"], "b1": params["b1"]}
        return mlp.forward(
            first,
            x,
            variant=variant,
            keep_probs=(keep,),
            masks=None if mask is None else [mask],
            training=mask is not None,
        )[0]

    def mean_z1(params, variant):
        return limits.mask_expectation(lambda m: z1(params, variant, q, m), x.shape[1], q)

    mismatch = limits.relative_mismatch
    rescaled = {**final_std, "W1": final_std["W1"] * p / q}
    return {
        "export": mismatch(test_std, test_inv),
        "inv_bitwise": bool(np.array_equal(no_dropout(final_inverted), test_inv)),
        "std_raw": mismatch(no_dropout(final_std), test_std),
        "std_scaled": mismatch(no_dropout(mlp.to_inverted_params(final_std, kp)), test_std),
        "inv_mean": mismatch(mean_z1(final_inverted, "inverted"), z1(final_inverted, "inverted", p)),
        "std_old": mismatch(mean_z1(final_std, "standard"), z1(final_std, "standard", p)),
        "std_new": mismatch(mean_z1(final_std, "standard"), z1(final_std, "standard", q)),
        "std_rescaled": max(
            mismatch(mean_z1(rescaled, "standard"), z1(final_std, "standard", p)),
            mismatch(z1(rescaled, "standard", q), z1(final_std, "standard", p)),
        ),
        "std_rescaled_old": mismatch(mean_z1(rescaled, "standard"), z1(rescaled, "standard", p)),
    }


def tied_lm_outputs(
    params: Mapping[str, NDArray],
    tokens: NDArray,
    masks: Sequence[tuple[NDArray, NDArray]],
    *,
    variant: Variant,
    keep_emb: float,
    keep_out: float,
) -> NDArray[np.float64]:
    """Logits of a one-layer language model whose output layer is tied to its embedding.

    With one-hot ``tokens`` ``(batch, V)``, embedding ``E`` ``(V, d)``, input
    kernel ``W_in`` ``(d, d)`` and biases ``b_in``, ``c``::

        e = tokens @ E,   h = tanh(d_e(e) @ W_in + b_in),   logits = d(h) @ E.T + c

    with dropout ``d_e`` of keep probability ``keep_emb`` on the embedding
    (1.0: none) and ``d`` of ``keep_out`` on the hidden state. Returns the
    logits for every mask pair ``(m_e, m_h)`` in ``masks`` (training), then at
    test time, stacked by rows.
    """
    pe, ph = check_keep_prob(keep_emb), check_keep_prob(keep_out)
    E, W_in = np.asarray(params["E"], dtype=np.float64), np.asarray(params["W_in"], dtype=np.float64)
    e = np.asarray(tokens, dtype=np.float64) @ E

    def logits(m_e, m_h, training):
        h = np.tanh(apply_dropout(variant, e, pe, m_e, training=training) @ W_in + params["b_in"])
        return apply_dropout(variant, h, ph, m_h, training=training) @ E.T + params["c"]

    return np.vstack([logits(m_e, m_h, True) for m_e, m_h in masks] + [logits(None, None, False)])


def tied_lm_to_standard(params: Mapping[str, NDArray], keep_emb: float, keep_out: float) -> Params:
    """The standard net of :func:`tied_lm_outputs`: ``E / p``, ``W_in * p / p_e``, biases kept.

    ``p = keep_out``, ``p_e = keep_emb``. The output layer ``E.T`` consumes the
    dropped hidden state and takes the factor ``1 / p``; the embedding's other
    use is read by the untied ``W_in``, which absorbs what is left.
    """
    pe, ph = check_keep_prob(keep_emb), check_keep_prob(keep_out)
    out = {n: np.array(v, dtype=np.float64) for n, v in params.items()}
    out["E"], out["W_in"] = out["E"] / ph, out["W_in"] * ph / pe
    return out
