"""A global map for global-norm clipping: bias-free, positively homogeneous networks.

Notation: ``keep_prob`` is the paper's ``p``; Keras's ``rate`` is ``1 - p``.
Every layer computes ``z_k = d_k(h_{k-1}) @ W_k (+ b_k)`` with row vectors, as
:mod:`dropout_lib.exact.mlp`, and ``h_k = relu(z_k)`` for ``k < L``.

The book's consumer-side map (``W_k -> W_k / p_k`` on the kernels that read a
dropped layer, everything else unchanged) scales the gradients of different
tensors by different factors (``p_k`` on consuming kernels, 1 elsewhere), so
Keras's ``global_clipnorm`` has no threshold map under it. A net with **no
biases** and a **positively homogeneous** activation (ReLU: ``a(c z) = c a(z)``
for ``c > 0``) has another map: every one of its ``L`` kernels divided by the
same ``lambda``, with ``lambda^L = P = prod_k p_k`` (:func:`global_scale`).
Under it every gradient is multiplied by the same ``lambda``, so

* SGD (with or without momentum) with learning rate ``eta / lambda^2`` and
* ``global_clipnorm = lambda * c``

reproduce the inverted run with ``eta`` and ``c`` (:func:`global_clip_map`);
Adam does with learning rate ``eta / lambda``, ``epsilon -> lambda * epsilon``
and ``global_clipnorm = lambda * c`` (its moments scale by ``lambda`` and
``lambda^2``). With one keep probability ``p`` on every layer's input, the
consumer-side map (every kernel over ``p``) is this map with ``lambda = p``,
and it needs no homogeneity: any activation (``activation=``), still no biases.
With biases the function-preserving rescalings scale the bias gradients by
other factors (:func:`bias_scales`), and the map fails.

A bias-free net is a parameter dict ``{'W1', ..., 'WL'}``; with biases it is
``mlp``'s ``{'W1', 'b1', ..., 'WL', 'bL'}``. Both go through
:func:`loss_and_grads` and :func:`train`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from dropout_lib.exact import mlp
from dropout_lib.exact.compare import trajectory_gaps
from dropout_lib.exact.optimizers import Optimizer
from dropout_lib.exact.training import run
from dropout_lib.reference import Variant, check_keep_prob

Params = dict[str, NDArray[np.float64]]

__all__ = [
    "HomogeneousRun",
    "bias_scales",
    "compare_runs",
    "global_clip_map",
    "global_scale",
    "global_norms",
    "loss_and_grads",
    "rescale",
    "train",
]


def _keep_probs(keep_probs: Sequence[float]) -> list[float]:
    ps = [check_keep_prob(p) for p in keep_probs]
    if not ps:
        raise ValueError("keep_probs is empty; give one keep probability per layer input.")
    return ps


def global_scale(keep_probs: Sequence[float]) -> float:
    """Return ``lambda = (prod_k p_k)^(1/L)``, the one factor of the global map.

    ``keep_probs[k-1]`` is the keep probability of layer ``k``'s input (1.0
    for no dropout), as in :mod:`dropout_lib.exact.mlp`; ``L = len(keep_probs)``.
    The standard net's kernels are the inverted net's divided by ``lambda``.
    """
    ps = _keep_probs(keep_probs)
    return math.prod(ps) ** (1.0 / len(ps))


def global_clip_map(lr: float, clipnorm: float, keep_probs: Sequence[float]) -> tuple[float, float]:
    """The standard net's SGD hyperparameters: ``(lr / lambda^2, lambda * clipnorm)``.

    For an inverted run with learning rate ``lr`` and Keras's
    ``global_clipnorm=clipnorm`` on a bias-free ReLU net (momentum, if any,
    unchanged), under the kernel map ``W_k -> W_k / lambda``.
    """
    lam = global_scale(keep_probs)
    return float(lr) / lam**2, lam * float(clipnorm)


def bias_scales(keep_probs: Sequence[float], kernel_scale: float) -> dict[str, float]:
    """Factors ``s`` of the function-preserving map with every kernel times ``kernel_scale``.

    Standard parameters ``theta' = s_theta theta`` reproduce the inverted net of
    a ReLU MLP with biases when ``s = kernel_scale = c`` on every ``W_k`` and
    ``s = r_k = prod_{j <= k} p_j c`` on ``b_k`` (the factor by which the
    standard pre-activation of layer ``k`` exceeds the inverted one), provided
    ``r_L = 1``, i.e. ``c = 1 / lambda``. Returns ``{name: s}`` for
    ``W1, b1, ..., WL, bL``.
    """
    ps = _keep_probs(keep_probs)
    c = float(kernel_scale)
    out, r = {}, 1.0
    for k, p in enumerate(ps, start=1):
        r *= p * c
        out[f"W{k}"], out[f"b{k}"] = c, r
    return out


def rescale(params: Mapping[str, NDArray], scales: Mapping[str, float] | float) -> Params:
    """Return ``{name: s_name * params[name]}`` (``scales`` a dict or one float)."""
    get = (lambda n: scales[n]) if isinstance(scales, Mapping) else (lambda n: scales)
    return {n: float(get(n)) * np.asarray(v, dtype=np.float64) for n, v in params.items()}


def _with_zero_biases(params: Mapping[str, NDArray]) -> Params:
    full = dict(params)
    for k in range(1, mlp.n_layers(params) + 1):
        full.setdefault(f"b{k}", np.zeros(np.shape(params[f"W{k}"])[1]))
    return full


def loss_and_grads(
    params: Mapping[str, NDArray],
    x: NDArray,
    y: NDArray,
    *,
    variant: Variant,
    keep_probs: Sequence[float],
    masks: mlp.Masks,
    activation: mlp.Activation = "relu",
) -> tuple[float, Params]:
    """MSE loss and exact gradients of an MLP (ReLU by default), with or without biases.

    A dict without ``b_k`` is a bias-free net: it is evaluated by
    :func:`dropout_lib.exact.mlp.loss_and_grads` with zero biases, and only the
    kernels' gradients are returned (a bias-free net has no bias to train or to
    count in a global norm). ``activation`` is any of ``mlp``'s hidden
    activations; the global map needs a positively homogeneous one (ReLU), the
    consumer-side map with one keep probability on every layer input does not.
    """
    value, grads = mlp.loss_and_grads(
        _with_zero_biases(params),
        x,
        y,
        variant=variant,
        keep_probs=keep_probs,
        masks=masks,
        activation=activation,
    )
    return value, {n: grads[n] for n in params}


def global_norms(grads: Mapping[str, NDArray]) -> float:
    """``sqrt(sum_name ||g_name||^2)``: the norm Keras's ``global_clipnorm`` clips by."""
    return math.sqrt(sum(float(np.sum(np.asarray(g) ** 2)) for g in grads.values()))


@dataclass
class HomogeneousRun:
    """What :func:`train` returns.

    Attributes
    ----------
    history
        Parameter snapshots, ``history[0]`` the start, ``history[t + 1]`` after step ``t``.
    tensor_norms
        ``{name: ||g_name||}`` per step, the gradients before clipping.
    """

    history: list[Params]
    tensor_norms: dict[str, NDArray[np.float64]]

    @property
    def norms(self) -> NDArray[np.float64]:
        """The global gradient norm at each step, before clipping."""
        return np.sqrt(sum(v**2 for v in self.tensor_norms.values()))

    def norm_ratios(self, scales: Mapping[str, float]) -> NDArray[np.float64]:
        """``N'_t / N_t`` for the mapped net ``theta' = s theta`` (gradients ``g / s``).

        Along this (inverted) run, the global norm of a function-preserving
        rescaling's gradients divided by this run's global norm: a constant
        threshold map exists for global clipping only if it is the same at every
        clipped step.
        """
        mapped = np.sqrt(sum((v / scales[n]) ** 2 for n, v in self.tensor_norms.items()))
        return mapped / self.norms


def train(
    params: Mapping[str, NDArray],
    batches: Sequence[tuple[NDArray, NDArray]],
    masks: Sequence[mlp.Masks],
    *,
    variant: Variant,
    keep_probs: Sequence[float],
    optimizer: Optimizer,
    steps: int,
    activation: mlp.Activation = "relu",
) -> HomogeneousRun:
    """Train by ``optimizer`` for ``steps`` steps on given batches and masks (MSE loss).

    Step ``t`` uses ``batches[t % len(batches)]`` and ``masks[t]`` (one entry
    per layer input, ``None`` where the keep probability is 1; see
    :func:`dropout_lib.exact.mlp.sample_masks`). ``params`` is not modified.
    The loop is :func:`dropout_lib.exact.training.run` (gradient at
    ``optimizer.eval_point``, then ``optimizer.step``); this adds the norm
    ``||g_name||`` of every gradient it takes, before any clipping.
    ``activation``: the hidden layers' (:func:`loss_and_grads`).
    """
    if steps < 0 or len(masks) < steps or not batches:
        raise ValueError(
            f"need steps >= 0, at least one batch and one mask entry per step; got "
            f"steps={steps}, {len(batches)} batches, {len(masks)} masks."
        )
    norms: dict[str, list[float]] = {n: [] for n in params}

    def gradients(t: int, at: Mapping[str, NDArray]) -> tuple[float, Params]:
        x, y = batches[t % len(batches)]
        value, grads = loss_and_grads(
            at, x, y, variant=variant, keep_probs=keep_probs, masks=masks[t], activation=activation
        )
        for n, g in grads.items():
            norms[n].append(float(np.linalg.norm(g)))
        return value, grads

    result = run(params, optimizer, steps, gradients)
    return HomogeneousRun(history=result.history, tensor_norms={n: np.array(v) for n, v in norms.items()})


def compare_runs(
    params: Mapping[str, NDArray],
    scales: Mapping[str, float],
    batches: Sequence[tuple[NDArray, NDArray]],
    masks: Sequence[mlp.Masks],
    keep_probs: Sequence[float],
    opt_inv: Optimizer,
    opt_std: Optimizer,
    activation: mlp.Activation = "relu",
) -> tuple[float, HomogeneousRun]:
    """Train the inverted net from ``params`` and the standard net from ``s * params``.

    Both run ``len(masks)`` steps of :func:`train` on the same batches and
    masks, with fresh optimizers ``opt_inv`` and ``opt_std``. Each standard
    snapshot is mapped back (``theta / s``) and compared with the inverted one
    (:func:`dropout_lib.exact.compare.trajectory_gaps`). Returns the largest
    relative gap over the run, and the inverted run. ``activation``: the hidden
    layers' (:func:`loss_and_grads`).
    """
    kw = dict(keep_probs=keep_probs, steps=len(masks), activation=activation)
    inv = train(params, batches, masks, variant="inverted", optimizer=opt_inv, **kw)
    std = train(rescale(params, scales), batches, masks, variant="standard", optimizer=opt_std, **kw)
    back = {n: 1.0 / float(s) for n, s in scales.items()}
    gaps, _ = trajectory_gaps(inv.history, std.history, lambda q: rescale(q, back))
    return float(gaps.max()), inv
