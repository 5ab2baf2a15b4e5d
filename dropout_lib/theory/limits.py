"""Where the equivalence between the two dropout variants ends.

Notation: ``keep_prob`` is the paper's ``p``, the probability that a unit is
kept; Keras's ``rate`` is ``1 - p``. Every function here takes ``keep_prob``.

The book's maps (``W -> W / p`` on the weights that consume a dropped layer,
biases unchanged, and the hyperparameter maps that follow from it) hold when
each weight matrix sees its dropped input through one fixed factor ``1 / p``.
This module builds the structures where that fails, and the tools that show
it numerically:

* a layer whose one matrix reads a dropped and an undropped input,
  ``z = d(h_1) @ W + h_2 @ W + b`` (:func:`two_input_layer`), with the best
  standard layer found by linear least squares
  (:func:`fit_standard_two_input_layer`); and a layer *called* on a dropped
  and an undropped tensor, which gives two outputs ``d(h_1) @ W + b`` and
  ``h_2 @ W + b`` (:func:`shared_layer_outputs`,
  :func:`fit_standard_shared_layer`), and the same layer with an unshared
  head on its dropped call (:func:`shared_downstream_outputs`), where a
  bias-free shared layer lets the head's kernel take the factor;
* a tied autoencoder, decoder = encoder transposed, with dropout on its input
  (:func:`autoencoder`, :func:`autoencoder_loss_and_grads`,
  :func:`train_autoencoder`); for ReLU the map ``W -> W / sqrt(p)``,
  ``b_1 -> sqrt(p) b_1``, ``b_2 -> b_2`` keeps the function
  (:func:`tied_to_standard`), for sigmoid and tanh no parameters do, and
  :func:`fit_standard_autoencoder` searches for the best ones;
* a keep probability that changes during training: :func:`switch_keep_probs`
  re-maps a standard net and its optimizer state at the change;
* global-norm gradient clipping: :class:`WeightedGlobalClip` is the clipping
  rule a standard net would need (the threshold alone cannot be mapped), and
  :func:`gradient_norm_split` measures why;
* :func:`scan_and_refine`, a one-dimensional search (grid, then Brent), and
  :func:`mask_expectation`, an exact expectation over all masks.

A parameter dict maps names to float64 arrays as in :mod:`dropout_lib.exact.mlp`;
every layer computes ``z = d(h) @ W + b`` with row vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import least_squares, minimize_scalar

from dropout_lib.exact import mlp
from dropout_lib.exact.clipping import Clipped, _check_threshold
from dropout_lib.exact.optimizers import SGD, STATE_POWERS, Adam, Optimizer
from dropout_lib.exact.training import TrainResult, run
from dropout_lib.reference import (
    Variant,
    apply_dropout,
    check_keep_prob,
    check_mask,
    check_variant,
    relative_difference,
)
from dropout_lib.theory.ensemble import mask_blocks, mask_probabilities

Params = dict[str, NDArray[np.float64]]
Activation = str
AUTOENCODER_ACTIVATIONS = ("relu", "sigmoid", "tanh")

__all__ = [
    "AUTOENCODER_ACTIVATIONS",
    "Fit",
    "relative_mismatch",
    "two_input_layer",
    "two_input_layer_outputs",
    "fit_standard_two_input_layer",
    "shared_layer_outputs",
    "fit_standard_shared_layer",
    "shared_downstream_outputs",
    "autoencoder",
    "autoencoder_outputs",
    "autoencoder_loss_and_grads",
    "tied_scales",
    "tied_per_parameter",
    "tied_to_standard",
    "tied_to_inverted",
    "train_autoencoder",
    "fit_standard_autoencoder",
    "switch_keep_probs",
    "WeightedGlobalClip",
    "NormSplit",
    "gradient_norm_split",
    "scan_and_refine",
    "mask_expectation",
]


# ------------------------------------------------------------------ helpers


def _drop(variant: Variant, h: NDArray, p: float, mask: NDArray | None, training: bool) -> NDArray:
    """``m h`` / ``m h / p`` in training, ``p h`` / ``h`` at inference (no mask)."""
    if not training:
        if mask is not None:
            raise ValueError(
                "a mask was given with training=False; inference uses no mask. "
                "Pass training=True to apply it."
            )
        return p * h if variant == "standard" else h
    if mask is None:
        raise ValueError(
            "training=True needs the binary mask m (masks are inputs here, never drawn "
            "inside); draw one with dropout_lib.reference.sample_mask."
        )
    return apply_dropout(variant, h, p, check_mask(mask, h.shape), training=True)


def _as_2d(name: str, x: ArrayLike, width: int | None = None) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or (width is not None and arr.shape[1] != width):
        want = f"(batch, {width})" if width is not None else "(batch, features)"
        raise ValueError(
            f"{name} must have shape {want}; got {arr.shape}. Reshape one example with x[None, :]."
        )
    return arr


def _standard_dropped(h: NDArray, masks: Sequence[ArrayLike], p: float) -> list[NDArray]:
    """The standard net's dropped input, the rows a least-squares search is linear in.

    ``[m h for m in masks] + [p h]``: the training input for every mask, then
    the inference input (standard dropout, keep probability ``p``).
    """
    return [check_mask(m, h.shape) * h for m in masks] + [p * h]


def relative_mismatch(outputs: NDArray, reference: NDArray) -> float:
    """Return ``||outputs - reference|| / ||reference||`` (Frobenius norms).

    The measure of every search in this module: 0 when a standard net computes
    the inverted net's outputs exactly, about ``1e-16`` when it does up to
    rounding, 1 when it outputs zeros.
    """
    a = np.asarray(outputs, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"outputs have shape {a.shape} but reference has {b.shape}.")
    if not np.any(b):
        raise ValueError("reference outputs are all zero; a relative mismatch is undefined.")
    return relative_difference(a, b)


@dataclass
class Fit:
    """The best standard-dropout parameters a search found, and how close they came.

    Attributes
    ----------
    residual
        :func:`relative_mismatch` of the standard net's outputs (training
        outputs for every given mask, then inference outputs) against the
        inverted net's.
    params
        The standard net's parameters at that residual.
    residuals
        One residual per start of the search (a single entry for least squares).
    """

    residual: float
    params: Params
    residuals: list[float]


# ------------------------------------------------- 1. a shared matrix, two inputs

_LAYER_KEYS_TIED = ("W", "b")
_LAYER_KEYS_UNTIED = ("W_dropped", "W_clean", "b")


def _layer_mats(params: Mapping[str, NDArray]) -> tuple[NDArray, NDArray, NDArray]:
    if set(params) == set(_LAYER_KEYS_TIED):
        w = np.asarray(params["W"], dtype=np.float64)
        return w, w, np.asarray(params["b"], dtype=np.float64)
    if set(params) == set(_LAYER_KEYS_UNTIED):
        return tuple(np.asarray(params[k], dtype=np.float64) for k in _LAYER_KEYS_UNTIED)  # type: ignore[return-value]
    raise ValueError(
        f"params must have keys {_LAYER_KEYS_TIED} (one matrix shared by both inputs) or "
        f"{_LAYER_KEYS_UNTIED} (a matrix per input); got {sorted(params)}."
    )


def two_input_layer(
    params: Mapping[str, NDArray],
    h_dropped: ArrayLike,
    h_clean: ArrayLike,
    *,
    variant: Variant,
    keep_prob: float,
    mask: ArrayLike | None = None,
    training: bool,
) -> NDArray[np.float64]:
    """A dense layer reading two inputs, only the first of them dropped.

    ``z = d(h_1) @ W_1 + h_2 @ W_2 + b`` with ``d`` the variant's dropout of
    keep probability ``p`` (training: ``m h_1`` standard, ``m h_1 / p``
    inverted; inference: ``p h_1`` standard, ``h_1`` inverted). With params
    ``{'W', 'b'}`` one matrix is *shared*, ``W_1 = W_2 = W`` (a layer applied to
    a dropped and to an undropped tensor); with ``{'W_dropped', 'W_clean', 'b'}``
    each input has its own.

    Shapes: ``h_dropped`` and ``h_clean`` ``(batch, n)``, ``W`` ``(n, k)``,
    ``b`` ``(k,)``, mask broadcastable to ``(batch, n)``; returns ``(batch, k)``.
    """
    variant = check_variant(variant)
    p = check_keep_prob(keep_prob)
    w1, w2, b = _layer_mats(params)
    h1 = _as_2d("h_dropped", h_dropped, w1.shape[0])
    h2 = _as_2d("h_clean", h_clean, w2.shape[0])
    if h1.shape[0] != h2.shape[0]:
        raise ValueError(f"h_dropped has {h1.shape[0]} rows but h_clean has {h2.shape[0]}.")
    m = None if mask is None else np.asarray(mask, dtype=np.float64)
    return _drop(variant, h1, p, m, training) @ w1 + h2 @ w2 + b


def two_input_layer_outputs(
    params: Mapping[str, NDArray],
    h_dropped: ArrayLike,
    h_clean: ArrayLike,
    masks: Sequence[ArrayLike],
    *,
    variant: Variant,
    keep_prob: float,
) -> NDArray[np.float64]:
    """Stack the training outputs for every mask in ``masks``, then the inference output.

    Returns shape ``((len(masks) + 1) * batch, k)``: the function a search must match.
    """
    kw = dict(variant=variant, keep_prob=keep_prob)
    outs = [two_input_layer(params, h_dropped, h_clean, mask=m, training=True, **kw) for m in masks]
    outs.append(two_input_layer(params, h_dropped, h_clean, training=False, **kw))
    return np.vstack(outs)


def fit_standard_two_input_layer(
    params_inverted: Mapping[str, NDArray],
    h_dropped: ArrayLike,
    h_clean: ArrayLike,
    masks: Sequence[ArrayLike],
    keep_prob: float,
    *,
    share: bool,
) -> Fit:
    """The standard layer closest to an inverted one, by linear least squares: a global optimum.

    The target is the inverted layer ``params_inverted`` evaluated by
    :func:`two_input_layer_outputs`. The standard layer's outputs are linear in
    its parameters: with ``share=True`` (one matrix ``V`` for both inputs)
    training row ``n`` for mask ``m`` is ``[m_n h_1n + h_2n, 1] @ [V; c]`` and the
    inference row ``[p h_1n + h_2n, 1] @ [V; c]``; with ``share=False``
    (``V_1``, ``V_2``) the rows are ``[m_n h_1n, h_2n, 1]`` and
    ``[p h_1n, h_2n, 1]``. ``numpy.linalg.lstsq`` returns the minimiser of the
    squared mismatch over *all* such parameters, so :attr:`Fit.residual` is the
    smallest mismatch any standard layer of that form achieves on this data
    (no per-entry scale, no other reparameterisation can do better).
    """
    p = check_keep_prob(keep_prob)
    target = two_input_layer_outputs(
        params_inverted, h_dropped, h_clean, masks, variant="inverted", keep_prob=p
    )
    h1 = _as_2d("h_dropped", h_dropped)
    h2 = _as_2d("h_clean", h_clean)
    ones = np.ones((h1.shape[0], 1))
    blocks = []
    for d1 in _standard_dropped(h1, masks, p):
        blocks.append(np.hstack([d1 + h2, ones]) if share else np.hstack([d1, h2, ones]))
    design = np.vstack(blocks)
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    n = h1.shape[1]
    if share:
        fitted = {"W": solution[:n], "b": solution[n]}
    else:
        fitted = {"W_dropped": solution[:n], "W_clean": solution[n : 2 * n], "b": solution[2 * n]}
    residual = relative_mismatch(design @ solution, target)
    return Fit(residual=residual, params=fitted, residuals=[residual])


def shared_layer_outputs(
    params: Mapping[str, NDArray],
    h_dropped: ArrayLike,
    h_clean: ArrayLike,
    masks: Sequence[ArrayLike],
    *,
    variant: Variant,
    keep_prob: float,
) -> NDArray[np.float64]:
    """A dense layer called twice, on a dropped and on an undropped tensor: both outputs.

    A Keras layer called on two tensors computes two outputs, each with its own
    bias add: ``z_1 = d(h_1) @ W + b`` and ``z_2 = h_2 @ W + b``. With params
    ``{'W', 'b'}`` the kernel and bias are shared by both calls; with
    ``{'W_dropped', 'b_dropped', 'W_clean', 'b_clean'}`` each call has its own.
    ``d`` is the variant's dropout with keep probability ``p`` (Keras's rate is
    ``1 - p``). Returns, stacked by rows, ``z_1`` for every mask in ``masks``
    (training), ``z_1`` at inference, then ``z_2``: shape
    ``((len(masks) + 2) * batch, k)``, the outputs a search must match.
    """
    variant = check_variant(variant)
    p = check_keep_prob(keep_prob)
    if set(params) == {"W", "b"}:
        w1 = w2 = np.asarray(params["W"], dtype=np.float64)
        b1 = b2 = np.asarray(params["b"], dtype=np.float64)
    elif set(params) == {"W_dropped", "b_dropped", "W_clean", "b_clean"}:
        w1, b1, w2, b2 = (
            np.asarray(params[k], dtype=np.float64) for k in ("W_dropped", "b_dropped", "W_clean", "b_clean")
        )
    else:
        raise ValueError(
            "params must be {'W', 'b'} (one layer called twice) or {'W_dropped', 'b_dropped', "
            f"'W_clean', 'b_clean'}} (a layer per call); got {sorted(params)}."
        )
    h1 = _as_2d("h_dropped", h_dropped, w1.shape[0])
    h2 = _as_2d("h_clean", h_clean, w2.shape[0])
    outs = [_drop(variant, h1, p, np.asarray(m, dtype=np.float64), True) @ w1 + b1 for m in masks]
    outs.append(_drop(variant, h1, p, None, False) @ w1 + b1)
    outs.append(h2 @ w2 + b2)
    return np.vstack(outs)


def fit_standard_shared_layer(
    params_inverted: Mapping[str, NDArray],
    h_dropped: ArrayLike,
    h_clean: ArrayLike,
    masks: Sequence[ArrayLike],
    keep_prob: float,
    *,
    share: bool,
) -> Fit:
    """The standard layer (called twice) closest to an inverted one: a global least-squares optimum.

    The target is :func:`shared_layer_outputs` of the inverted layer
    ``params_inverted`` (``{'W', 'b'}``, shared by both calls). The standard
    layer's outputs are linear in its parameters: training row ``n`` of the
    first call for mask ``m`` is ``[m_n h_1n, 1] @ [V; c]``, its inference row
    ``[p h_1n, 1] @ [V; c]``, a row of the second call ``[h_2n, 1] @ [V; c]``
    (with ``share=False`` the first call has its own ``(V_1, c_1)``, the second
    ``(V_2, c_2)``). ``numpy.linalg.lstsq`` minimises the squared mismatch over
    *all* such parameters, so :attr:`Fit.residual` is the smallest relative
    mismatch (:func:`relative_mismatch`) any standard layer of that form
    achieves on this data.
    """
    p = check_keep_prob(keep_prob)
    target = shared_layer_outputs(params_inverted, h_dropped, h_clean, masks, variant="inverted", keep_prob=p)
    h1, h2 = _as_2d("h_dropped", h_dropped), _as_2d("h_clean", h_clean)
    ones = np.ones((h1.shape[0], 1))
    first = np.vstack([np.hstack([d1, ones]) for d1 in _standard_dropped(h1, masks, p)])
    second = np.hstack([h2, ones])
    n = h1.shape[1]
    if share:
        design = np.vstack([first, second])
        sol = np.linalg.lstsq(design, target, rcond=None)[0]
        fitted = {"W": sol[:n], "b": sol[n]}
        fit_out = design @ sol
    else:
        rows = first.shape[0]
        sol1 = np.linalg.lstsq(first, target[:rows], rcond=None)[0]
        sol2 = np.linalg.lstsq(second, target[rows:], rcond=None)[0]
        fitted = {"W_dropped": sol1[:n], "b_dropped": sol1[n], "W_clean": sol2[:n], "b_clean": sol2[n]}
        fit_out = np.vstack([first @ sol1, second @ sol2])
    residual = relative_mismatch(fit_out, target)
    return Fit(residual=residual, params=fitted, residuals=[residual])


def shared_downstream_outputs(
    layer: Mapping[str, NDArray],
    head: Mapping[str, NDArray],
    h_dropped: ArrayLike,
    h_clean: ArrayLike,
    masks: Sequence[ArrayLike],
    *,
    variant: Variant,
    keep_prob: float,
) -> NDArray[np.float64]:
    """A layer called twice, with an unshared head on its dropped call: the net's outputs.

    The shared layer ``{'W', 'b'}`` gives ``z_1 = d(h_1) @ W + b`` and
    ``z_2 = h_2 @ W + b`` (:func:`shared_layer_outputs`); the head ``{'K',
    'c'}``, used nowhere else, reads the dropped call through ReLU:
    ``y = relu(z_1) @ K + c``. Returns one flat vector: ``y`` for every mask
    (training), ``y`` at inference, then ``z_2``, each flattened.

    If ``b = 0``, the standard net's ``z_1`` is ``p`` times the inverted one's
    (``m h_1 W = p (m h_1 / p) W`` in training, ``(p h_1) W`` at inference),
    ReLU keeps the factor, and ``K / p`` removes it: the standard net with the
    same shared layer and ``(K / p, c)`` computes the inverted net's outputs.
    With ``b != 0``, ``relu(p z + b) != p relu(z + b)`` and ``K / p`` fails.
    """
    h1 = _as_2d("h_dropped", h_dropped)
    k = np.asarray(head["K"], dtype=np.float64)
    c = np.asarray(head["c"], dtype=np.float64)
    z = shared_layer_outputs(layer, h1, h_clean, masks, variant=variant, keep_prob=keep_prob)
    rows = (len(masks) + 1) * h1.shape[0]
    return np.concatenate([(np.maximum(z[:rows], 0.0) @ k + c).ravel(), z[rows:].ravel()])


# ----------------------------------------------------- 2. the tied autoencoder


def _activate(name: str, z: NDArray) -> NDArray:
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    return np.tanh(z)


def _activate_grad(name: str, z: NDArray, h: NDArray) -> NDArray:
    """``act'(z)``; ReLU's derivative is taken as 0 at ``z = 0`` (as TensorFlow)."""
    if name == "relu":
        return (z > 0.0).astype(np.float64)
    if name == "sigmoid":
        return h * (1.0 - h)
    return 1.0 - h * h


def _check_activation(activation: str) -> str:
    if activation not in AUTOENCODER_ACTIVATIONS:
        raise ValueError(f"activation must be one of {AUTOENCODER_ACTIVATIONS}; got {activation!r}.")
    return activation


def _is_tied(params: Mapping[str, NDArray]) -> bool:
    if set(params) == {"W", "b1", "b2"}:
        return True
    if set(params) == {"W1", "b1", "W2", "b2"}:
        return False
    raise ValueError(
        "autoencoder params must be {'W', 'b1', 'b2'} (tied: decoder = W.T) or "
        f"{{'W1', 'b1', 'W2', 'b2'}} (untied, as dropout_lib.exact.mlp); got {sorted(params)}."
    )


def autoencoder(
    params: Mapping[str, NDArray],
    x: ArrayLike,
    *,
    variant: Variant,
    keep_prob: float,
    mask: ArrayLike | None = None,
    training: bool,
    activation: Activation = "relu",
) -> NDArray[np.float64]:
    """A one-hidden-layer autoencoder with dropout on its input; returns the reconstruction.

    Tied (params ``{'W', 'b1', 'b2'}``, ``W`` of shape ``(n, k)``):

        z = d(x) @ W + b1,   h = act(z),   y = h @ W.T + b2;

    untied (``{'W1', 'b1', 'W2', 'b2'}``): decoder ``h @ W2 + b2``, i.e.
    :func:`dropout_lib.exact.mlp.forward` with sizes ``(n, k, n)`` and keep
    probabilities ``(p, 1)``. ``d`` is the variant's dropout with keep
    probability ``p`` (Keras's rate is ``1 - p``); ``mask`` (``(batch, n)``) is
    required in training and refused at inference.
    """
    return _autoencoder_forward(
        params, x, variant=variant, keep_prob=keep_prob, mask=mask, training=training, activation=activation
    )[0]


def _autoencoder_forward(params, x, *, variant, keep_prob, mask, training, activation):
    variant = check_variant(variant)
    activation = _check_activation(activation)
    p = check_keep_prob(keep_prob)
    if not _is_tied(params):
        kp = (p, 1.0)
        masks = [mask, None] if training else None
        y, cache = mlp.forward(
            params, x, variant=variant, keep_probs=kp, masks=masks, training=training, activation=activation
        )
        return y, cache
    W = np.asarray(params["W"], dtype=np.float64)
    xs = _as_2d("x", x, W.shape[0])
    m = None if mask is None else np.asarray(mask, dtype=np.float64)
    d = _drop(variant, xs, p, m, training)
    z = d @ W + params["b1"]
    h = _activate(activation, z)
    y = h @ W.T + params["b2"]
    return y, {"d": d, "z": z, "h": h, "mask": m, "keep_prob": p, "variant": variant}


def autoencoder_outputs(
    params: Mapping[str, NDArray],
    x: ArrayLike,
    masks: Sequence[ArrayLike],
    *,
    variant: Variant,
    keep_prob: float,
    activation: Activation = "relu",
    inference: bool = True,
) -> NDArray[np.float64]:
    """Stack the reconstructions for every mask in ``masks``, then (if ``inference``)
    the inference reconstruction: shape ``((len(masks) + inference) * batch, n)``."""
    if not masks and not inference:
        raise ValueError("no outputs requested: give masks, or inference=True.")
    kw = dict(variant=variant, keep_prob=keep_prob, activation=activation)
    xs = _as_2d("x", x)
    outs = []
    if masks:  # one forward pass over the batch repeated once per mask
        stacked = np.vstack([np.broadcast_to(np.asarray(m, dtype=np.float64), xs.shape) for m in masks])
        outs.append(autoencoder(params, np.tile(xs, (len(masks), 1)), mask=stacked, training=True, **kw))
    if inference:
        outs.append(autoencoder(params, xs, training=False, **kw))
    return np.vstack(outs)


def autoencoder_loss_and_grads(
    params: Mapping[str, NDArray],
    x: ArrayLike,
    *,
    variant: Variant,
    keep_prob: float,
    mask: ArrayLike,
    activation: Activation = "relu",
    return_terms: bool = False,
):
    """Reconstruction loss ``mean((y - x)^2)`` in training, and its exact gradient.

    For the tied net, with ``g_y = dL/dy = 2 (y - x) / size`` and
    ``g_z = (g_y @ W) * act'(z)``, the gradient of the tied matrix is the sum of
    an encoder term and a decoder term:

        dL/dW = d(x).T @ g_z  +  g_y.T @ h,   dL/db1 = sum g_z,   dL/db2 = sum g_y.

    Returns ``(loss, grads)``; with ``return_terms=True`` (tied only)
    ``(loss, grads, (encoder_term, decoder_term))``. An untied net is
    :func:`dropout_lib.exact.mlp.loss_and_grads` with target ``x``.
    """
    if not _is_tied(params):
        if return_terms:
            raise ValueError("return_terms=True applies to the tied autoencoder only.")
        return mlp.loss_and_grads(
            params,
            x,
            x,
            variant=variant,
            keep_probs=(keep_prob, 1.0),
            masks=[mask, None],
            activation=activation,
            loss="mse",
        )
    y, c = _autoencoder_forward(
        params, x, variant=variant, keep_prob=keep_prob, mask=mask, training=True, activation=activation
    )
    xs = np.asarray(x, dtype=np.float64)
    r = y - xs
    loss = float(np.mean(r * r))
    g_y = 2.0 * r / r.size
    g_z = (g_y @ params["W"]) * _activate_grad(activation, c["z"], c["h"])
    encoder_term = c["d"].T @ g_z
    decoder_term = g_y.T @ c["h"]
    grads = {"W": encoder_term + decoder_term, "b1": g_z.sum(axis=0), "b2": g_y.sum(axis=0)}
    if return_terms:
        return loss, grads, (encoder_term, decoder_term)
    return loss, grads


def tied_scales(keep_prob: float) -> dict[str, float]:
    """The factors ``s`` of the tied ReLU map, ``theta_std = s * theta_inv``.

    ``{'W': 1/sqrt(p), 'b1': sqrt(p), 'b2': 1}``. The encoder's pre-activation
    of the standard net is then ``sqrt(p)`` times the inverted one's, ReLU
    passes the factor through (``relu(a z) = a relu(z)`` for ``a > 0``) and the
    decoder ``W.T / sqrt(p)`` removes it.
    """
    p = check_keep_prob(keep_prob)
    return {"W": 1.0 / math.sqrt(p), "b1": math.sqrt(p), "b2": 1.0}


def tied_per_parameter(value: float, keep_prob: float, power: float) -> dict[str, float]:
    """Return ``{name: value * s_name**power}`` with ``s`` from :func:`tied_scales`.

    A parameter mapped by ``theta -> s theta`` has its gradient mapped by
    ``g -> g / s``, so the standard net needs SGD's learning rate times ``s^2``
    (``power=2``: ``lr / p`` on ``W``, ``lr p`` on ``b1``), Adam's learning rate
    times ``s`` (``power=1``) and Adam's epsilon times ``1 / s`` (``power=-1``).
    """
    return {n: float(value) * s**power for n, s in tied_scales(keep_prob).items()}


def _tied_map(params: Mapping[str, NDArray], keep_prob: float, power: int) -> Params:
    if not _is_tied(params):
        raise ValueError("the sqrt(p) map is for the tied autoencoder {'W', 'b1', 'b2'}.")
    return {n: np.asarray(params[n], dtype=np.float64) * s**power for n, s in tied_scales(keep_prob).items()}


def tied_to_standard(params_inverted: Mapping[str, NDArray], keep_prob: float) -> Params:
    """Map a tied ReLU autoencoder from inverted to standard dropout.

    ``W -> W / sqrt(p)``, ``b1 -> sqrt(p) b1``, ``b2 -> b2``. Exact for any
    positively homogeneous activation (ReLU); for sigmoid or tanh it is *not*
    the same function (no parameters are, see :func:`fit_standard_autoencoder`).
    """
    return _tied_map(params_inverted, keep_prob, 1)


def tied_to_inverted(params_standard: Mapping[str, NDArray], keep_prob: float) -> Params:
    """Inverse of :func:`tied_to_standard`: ``W -> sqrt(p) W``, ``b1 -> b1 / sqrt(p)``."""
    return _tied_map(params_standard, keep_prob, -1)


def train_autoencoder(
    params: Mapping[str, NDArray],
    batches: Sequence[ArrayLike],
    masks: Sequence[ArrayLike],
    *,
    variant: Variant,
    keep_prob: float,
    optimizer: Optimizer,
    steps: int,
    activation: Activation = "relu",
) -> TrainResult:
    """Train an autoencoder for ``steps`` steps on given inputs and masks.

    Step ``t`` reconstructs ``batches[t % len(batches)]`` with mask ``masks[t]``
    (:func:`autoencoder_loss_and_grads`), then ``optimizer.step``. ``params`` is
    not modified; the returned :class:`dropout_lib.exact.training.TrainResult` holds
    the final parameters, the losses and every snapshot.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0; got {steps}.")
    if len(batches) == 0:
        raise ValueError("batches is empty; give at least one input batch.")
    if len(masks) < steps:
        raise ValueError(f"masks holds {len(masks)} masks but steps={steps}; give one per step.")

    def gradients(t: int, at: Mapping[str, NDArray]) -> tuple[float, Params]:
        return autoencoder_loss_and_grads(
            at,
            batches[t % len(batches)],
            variant=variant,
            keep_prob=keep_prob,
            mask=masks[t],
            activation=activation,
        )

    return run(params, optimizer, steps, gradients)


def _flatten(params: Mapping[str, NDArray], names: Sequence[str]) -> NDArray[np.float64]:
    return np.concatenate([np.asarray(params[n], dtype=np.float64).ravel() for n in names])


def _unflatten(vector: NDArray, shapes: Mapping[str, tuple[int, ...]]) -> Params:
    out, i = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        out[name] = vector[i : i + size].reshape(shape)
        i += size
    return out


def fit_standard_autoencoder(
    params_inverted: Mapping[str, NDArray],
    x: ArrayLike,
    masks: Sequence[ArrayLike],
    keep_prob: float,
    *,
    activation: Activation,
    starts: Sequence[Mapping[str, NDArray]],
    inference: bool = True,
) -> Fit:
    """Search the standard autoencoder closest to an inverted tied one (Levenberg-Marquardt).

    Minimises over all parameters of a standard-dropout autoencoder the squared
    mismatch between its outputs and the inverted net's, both from
    :func:`autoencoder_outputs` (a training output per mask in ``masks``, then
    the inference output if ``inference``), divided by the norm of the latter:
    ``scipy.optimize.least_squares(method='lm')`` from each start, tolerances
    ``1e-15``. The form of the standard net is that of each start: tied
    (``{'W', 'b1', 'b2'}``) or untied (``{'W1', 'b1', 'W2', 'b2'}``). The search
    is local: a small residual proves a map exists (up to rounding), a residual
    that stalls from every start is evidence, not proof, that none does.

    Returns the :class:`Fit` of the best start; ``residuals`` lists every start's.
    """
    p = check_keep_prob(keep_prob)
    if not _is_tied(params_inverted):
        raise ValueError("params_inverted must be a tied autoencoder {'W', 'b1', 'b2'}.")
    if len(starts) == 0:
        raise ValueError("starts is empty; give at least one starting parameter dict.")
    target = autoencoder_outputs(
        params_inverted, x, masks, variant="inverted", keep_prob=p, activation=activation, inference=inference
    )
    norm = float(np.linalg.norm(target))
    best: Fit | None = None
    residuals = []
    for start in starts:
        _is_tied(start)
        names = sorted(start)
        shapes = {n: np.shape(start[n]) for n in names}

        def residual(v: NDArray, shapes=shapes) -> NDArray:
            y = autoencoder_outputs(
                _unflatten(v, shapes),
                x,
                masks,
                variant="standard",
                keep_prob=p,
                activation=activation,
                inference=inference,
            )
            return ((y - target) / norm).ravel()

        sol = least_squares(residual, _flatten(start, names), method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
        fitted = {n: v.copy() for n, v in _unflatten(sol.x, shapes).items()}
        r = float(np.linalg.norm(residual(sol.x)))
        residuals.append(r)
        if best is None or r < best.residual:
            best = Fit(residual=r, params=fitted, residuals=[])
    assert best is not None
    best.residuals = residuals
    return best


# --------------------------------------------- 3. a keep probability that changes

# How each optimizer state scales under W_std = W_inv / p: a momentum velocity is
# a sum of weight steps ("weight": 1/p), Adam's first moment a sum of gradients
# ("grad": g_std = p g_inv), its second moment of squared gradients ("grad2": p^2).
_STATE_POWER = {SGD: STATE_POWERS["SGD"], Adam: STATE_POWERS["Adam"]}
_LR_POWER = {SGD: -2, Adam: -1}
_EPS_POWER = {Adam: 1}


def switch_keep_probs(
    params_standard: Mapping[str, NDArray],
    optimizer: Optimizer,
    old_keep_probs: Sequence[float],
    new_keep_probs: Sequence[float],
    *,
    rescale_weights: bool = True,
    rescale_state: bool = True,
) -> Params:
    """Re-map a standard-dropout MLP and its optimizer when the keep probabilities change.

    The map from an inverted net is ``W_k -> W_k / p_k`` on consuming weights,
    so at a change ``p_k -> p'_k`` the standard net must move to the new map:
    ``W_k -> (p_k / p'_k) W_k`` (if ``rescale_weights``). Its optimizer's
    per-parameter hyperparameters move with it (always): SGD's learning rate
    ``eta / p^2`` is multiplied by ``(p / p')^2``; Adam's ``eta / p`` by
    ``p / p'`` and its ``eps * p`` by ``p' / p``. Its state on ``W_k`` (if
    ``rescale_state``): SGD's velocity by ``p / p'``; Adam's first moment by
    ``p' / p``, second moment (and AMSGrad's max) by ``(p' / p)^2``.

    Returns the new parameters (a copy); ``optimizer`` is changed in place. Its
    learning rate (and Adam's ``eps``) must be per-parameter dicts, as the
    mapped standard optimizer's are (:func:`dropout_lib.exact.mlp.per_parameter`).
    Supports :class:`~dropout_lib.exact.optimizers.SGD` and
    :class:`~dropout_lib.exact.optimizers.Adam` without weight decay or clipping.
    """
    kind = type(optimizer)
    if kind not in _LR_POWER:
        raise ValueError(
            f"switch_keep_probs supports SGD and Adam; got {kind.__name__}. Other optimizers "
            "keep state in other units (see dropout_lib.mapping)."
        )
    if (
        optimizer.weight_decay is not None
        or optimizer.clipnorm is not None
        or optimizer.global_clipnorm is not None
    ):
        raise ValueError(
            "switch_keep_probs does not re-map weight decay or clipping thresholds; "
            "use an optimizer without weight_decay, clipnorm and global_clipnorm."
        )
    if not isinstance(optimizer.lr, Mapping) or (
        kind in _EPS_POWER and not isinstance(optimizer.eps, Mapping)
    ):
        raise ValueError(
            "the optimizer's lr (and Adam's eps) must be per-parameter dicts, as for a "
            "mapped standard net: build them with dropout_lib.exact.mlp.per_parameter."
        )
    L = mlp.n_layers(params_standard)
    old = [check_keep_prob(p) for p in old_keep_probs]
    new = [check_keep_prob(p) for p in new_keep_probs]
    if len(old) != L or len(new) != L:
        raise ValueError(
            f"old_keep_probs and new_keep_probs need one entry per layer input ({L}); "
            f"got {len(old)} and {len(new)}."
        )
    out = {n: np.array(v, dtype=np.float64) for n, v in params_standard.items()}
    lr, eps = dict(optimizer.lr), dict(optimizer.eps) if kind in _EPS_POWER else None
    for k, (p_old, p_new) in enumerate(zip(old, new), start=1):
        name = f"W{k}"
        ratio = p_new / p_old  # the keep probability's factor, p' / p
        if ratio == 1.0:
            continue
        if rescale_weights:
            out[name] = out[name] / ratio
        lr[name] = lr[name] * ratio ** _LR_POWER[kind]
        if eps is not None:
            eps[name] = eps[name] * ratio ** _EPS_POWER[kind]
        if rescale_state and name in optimizer.state:
            for key, power in _STATE_POWER[kind].items():
                if key in optimizer.state[name]:
                    optimizer.state[name][key] = optimizer.state[name][key] * ratio**power
    optimizer.lr = lr
    if eps is not None:
        optimizer.eps = eps
    return out


# ------------------------------------------------------ 4. global-norm clipping


class WeightedGlobalClip(Clipped):
    """Global-norm clipping with a weight per tensor, in front of an optimizer.

    ``step(params, grads)`` scales every gradient by ``min(1, c / N)`` with
    ``N = sqrt(sum_name ||g_name / w_name||^2)`` (``w`` = 1 for names not in
    ``weights``), then calls ``optimizer.step``. With ``w = p_k`` on the
    consuming weights of a standard-dropout net (``weights =
    mlp.consuming_weights(keep_probs)``), ``g / w`` is the inverted net's
    gradient, so ``N`` is the inverted net's global norm: this is the clipping
    rule that reproduces Keras's ``global_clipnorm=c`` of the inverted net. No
    threshold of plain global clipping does (see :func:`gradient_norm_split`).

    The package's one clipping design: a :class:`dropout_lib.exact.clipping.Clipped`
    with its own rule (``clip``); stepping, recording which tensors were
    clipped (``active``) and the wrapped optimizer's state are Clipped's.
    """

    def __init__(self, optimizer: Optimizer, clipnorm: float, weights: Mapping[str, float]) -> None:
        for name, w in weights.items():
            if not (math.isfinite(float(w)) and float(w) > 0.0):
                raise ValueError(f"weights[{name!r}] must be > 0; got {w!r}.")
        # Clipped checks the wrapped optimizer (no clipping of its own) and the threshold.
        super().__init__(optimizer, "global_norm", _check_threshold(clipnorm, "clipnorm"))
        self.weights = dict(weights)

    def clip(self, grads: Mapping[str, NDArray]) -> tuple[Params, dict[str, bool]]:
        """Scale every gradient by ``min(1, c / N_w)``, ``N_w`` the weighted global norm."""
        c = float(self.threshold)  # type: ignore[arg-type]
        total = math.sqrt(sum(float(np.sum((g / self.weights.get(n, 1.0)) ** 2)) for n, g in grads.items()))
        scale = min(1.0, c / total) if total > 0.0 else 1.0
        return {n: g * scale for n, g in grads.items()}, {n: total > c for n in grads}


@dataclass
class NormSplit:
    """How the global gradient norm splits, step by step, along an inverted run.

    Attributes
    ----------
    inverted
        ``N_inv[t] = sqrt(sum_name ||G_name||^2)``, the inverted net's global norm.
    standard
        ``N_std[t] = sqrt(sum_name s_name^2 ||G_name||^2)`` with ``s = p_k`` on
        consuming weights and 1 elsewhere: the mapped standard net's global norm.
    fractions
        ``{name: s_name ||G_name|| / N_inv}``: the standard net's gradient norm
        of each tensor, as a fraction of the inverted net's global norm.
    """

    inverted: NDArray[np.float64]
    standard: NDArray[np.float64]
    fractions: dict[str, NDArray[np.float64]]

    @property
    def ratios(self) -> NDArray[np.float64]:
        """``N_std / N_inv`` per step: the factor a global threshold would need."""
        return self.standard / self.inverted


def gradient_norm_split(
    history: Sequence[Mapping[str, NDArray]],
    data_batches: Sequence[tuple[NDArray, NDArray]],
    masks_sequence: Sequence[mlp.Masks],
    *,
    keep_probs: Sequence[float],
    **kw,
) -> NormSplit:
    """Along an inverted run, the global gradient norms of both nets and their split.

    At step ``t`` (parameters ``history[t]``, batch ``t % len(data_batches)``,
    masks ``masks_sequence[t]``) the inverted gradients ``G`` are computed with
    :func:`dropout_lib.exact.mlp.loss_and_grads` (``kw``: ``activation``, ``loss``).
    The mapped standard net's gradients are ``p_k G`` on consuming weights and
    ``G`` elsewhere (the gradient relation of the book), so its norms follow
    without a second net. Global clipping of the standard net at ``c'``
    reproduces the inverted net's ``c`` at a clipped step only if
    ``c' / c = N_std / N_inv`` (:attr:`NormSplit.ratios`); per-tensor clipping
    at ``c_name`` only if ``c_name / c`` equals that tensor's fraction. Returns
    one value per step ``t < len(history) - 1``.
    """
    scale = mlp.per_parameter(1.0, history[0], keep_probs, 1)
    per_name: dict[str, list[float]] = {n: [] for n in history[0]}
    for t in range(len(history) - 1):
        x, y = data_batches[t % len(data_batches)]
        _, g = mlp.loss_and_grads(
            history[t], x, y, variant="inverted", keep_probs=keep_probs, masks=masks_sequence[t], **kw
        )
        for n, v in g.items():
            per_name[n].append(float(np.linalg.norm(v)))
    norms = {n: np.array(v) for n, v in per_name.items()}
    inverted = np.sqrt(sum(v**2 for v in norms.values()))
    standard = np.sqrt(sum((scale[n] * v) ** 2 for n, v in norms.items()))
    fractions = {n: scale[n] * v / inverted for n, v in norms.items()}
    return NormSplit(inverted=inverted, standard=standard, fractions=fractions)


def scan_and_refine(
    fn: Callable[[float], float], grid: ArrayLike, *, xatol: float = 1e-10
) -> tuple[float, float, NDArray[np.float64]]:
    """Minimise ``fn`` over an interval: a grid scan, then Brent's method near the best point.

    Evaluates ``fn`` on every point of the increasing ``grid``, then runs
    ``scipy.optimize.minimize_scalar(method='bounded')`` between the grid
    neighbours of the best point. Returns ``(x_best, fn(x_best), values on the
    grid)``, the best of the scan and the refinement.
    """
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or g.size < 3 or np.any(np.diff(g) <= 0):
        raise ValueError("grid must be an increasing 1-D array of at least 3 points.")
    values = np.array([float(fn(float(v))) for v in g])
    i = int(np.argmin(values))
    lo, hi = g[max(i - 1, 0)], g[min(i + 1, g.size - 1)]
    res = minimize_scalar(fn, bounds=(lo, hi), method="bounded", options={"xatol": xatol})
    if float(res.fun) < values[i]:
        return float(res.x), float(res.fun), values
    return float(g[i]), float(values[i]), values


# ------------------------------------------------------------------ expectations


def mask_expectation(fn: Callable[[NDArray], ArrayLike], n_units: int, keep_prob: float) -> NDArray:
    """Exact ``E_m[fn(m)]`` over all ``2^n`` masks ``m ~ Bernoulli(p)^n``.

    ``fn`` receives one mask of shape ``(1, n_units)`` (so it broadcasts over a
    batch) and returns an array; the result is ``sum_m P(m) fn(m)`` with
    ``P(m) = p^{|m|} (1 - p)^{n - |m|}`` (:func:`dropout_lib.theory.ensemble.mask_probabilities`).
    """
    p = check_keep_prob(keep_prob)
    total = None
    for block in mask_blocks(int(n_units)):
        probs = mask_probabilities(block, p)
        for m, w in zip(block, probs):
            term = w * np.asarray(fn(m[None, :]), dtype=np.float64)
            total = term if total is None else total + term
    return total
