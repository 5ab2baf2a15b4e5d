"""An exact float64 numpy MLP with hand-written backprop, for both dropout variants.

Notation: ``keep_prob`` is the paper's ``p``, the probability that a unit is
kept; Keras's ``rate`` is ``1 - p``.

The net has ``L = len(sizes) - 1`` dense layers. With ``h_0 = x``,

    z_k = d_k(h_{k-1}) @ W_k + b_k,    h_k = act(z_k)  (k < L),

and the output is ``z_L`` (no output activation; the loss takes the logits).
``W_k`` has shape ``(sizes[k-1], sizes[k])``, as a Keras ``Dense`` kernel.
``d_k`` is dropout on the *input* of layer ``k``, with keep probability
``p_k = keep_probs[k - 1]`` (``keep_probs[0]`` is input dropout; 1.0 means no
dropout) and binary mask ``m_k``:

=============  ==========================  =========================
variant        training                    inference
=============  ==========================  =========================
standard       ``m_k * h``                 ``p_k * h``
inverted       ``m_k * h / p_k``           ``h``
=============  ==========================  =========================

``W_k`` *consumes* the dropped layer ``k - 1``. The masks are always given,
never drawn inside, so two nets can be fed identical randomness. Parameters
are a dict ``{'W1', 'b1', ..., 'WL', 'bL'}`` of float64 arrays.

The reparameterisation between the variants (:func:`to_standard_params`) is
``W_k -> W_k / p_k`` on the consuming weights, biases unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dropout_lib.reference import (
    Variant,
    apply_dropout,
    check_keep_prob,
    check_mask,
    check_variant,
    sample_mask,
)
from dropout_lib.reference import relative_difference as _relative_difference

Params = dict[str, NDArray[np.float64]]
Masks = Sequence[NDArray[np.float64] | None]
Activation = Literal["relu", "tanh", "sigmoid", "linear"]
Loss = Literal["mse", "softmax_xent"]
ACTIVATIONS: tuple[Activation, ...] = ("relu", "tanh", "sigmoid", "linear")
LOSSES: tuple[Loss, ...] = ("mse", "softmax_xent")

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "init_params",
    "n_layers",
    "consuming_weights",
    "per_parameter",
    "to_standard_params",
    "to_inverted_params",
    "sample_masks",
    "forward",
    "predict",
    "loss_and_grads",
    "gradient_check",
    "relative_difference",
]


# ----------------------------------------------------------------- parameters


def n_layers(params: Mapping[str, NDArray]) -> int:
    """Return ``L``, the number of dense layers (``W1 .. WL``) in ``params``."""
    L = 0
    while f"W{L + 1}" in params:
        L += 1
    if L == 0:
        raise ValueError(
            f"params has no 'W1'; got keys {sorted(params)}. Build params with init_params(sizes, rng)."
        )
    return L


def init_params(
    sizes: Sequence[int],
    rng: np.random.Generator | int | None = None,
    *,
    scale: float | Sequence[float] | None = None,
    bias_scale: float = 0.0,
) -> Params:
    """Draw ``W_k ~ N(0, sigma_k^2)`` and ``b_k ~ N(0, bias_scale^2)`` in float64.

    Parameters
    ----------
    sizes
        Layer widths ``(n_0, n_1, ..., n_L)``: input, hidden..., output.
    rng
        A ``numpy.random.Generator``, or an integer seed for a new one.
    scale
        ``sigma``, one for every ``W_k`` or a sequence ``(sigma_1, ..., sigma_L)``;
        by default He's ``sqrt(2 / n_{k-1})``. The draws are ``sigma_k * N(0, 1)``
        from the same stream whatever the scale, so scaling ``sigma_k`` by
        ``1 / p_k`` maps an inverted net's initialisation to the standard one's.
    bias_scale
        Standard deviation of the biases (0 gives zero biases).

    Returns
    -------
    dict with ``W_k`` of shape ``(n_{k-1}, n_k)`` and ``b_k`` of shape ``(n_k,)``.
    """
    sizes = [int(n) for n in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must hold at least two positive widths (input, output); got {sizes}.")
    L = len(sizes) - 1
    if scale is None:
        sigmas = [np.sqrt(2.0 / n) for n in sizes[:-1]]
    elif np.ndim(scale) == 0:
        sigmas = [float(scale)] * L
    else:
        sigmas = [float(s) for s in scale]
        if len(sigmas) != L:
            raise ValueError(f"scale must be one float or one per layer ({L}); got {len(sigmas)}: {sigmas}.")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    params: Params = {}
    for k in range(1, L + 1):
        params[f"W{k}"] = sigmas[k - 1] * gen.standard_normal((sizes[k - 1], sizes[k]))
        params[f"b{k}"] = bias_scale * gen.standard_normal(sizes[k])
    return params


def _check_keep_probs(keep_probs: Sequence[float], L: int) -> list[float]:
    if len(keep_probs) != L:
        raise ValueError(
            f"keep_probs must hold one keep probability per layer input ({L} for "
            f"this net: keep_probs[0] is input dropout); got {len(keep_probs)}: "
            f"{list(keep_probs)}. Use 1.0 for no dropout."
        )
    return [check_keep_prob(p) for p in keep_probs]


def consuming_weights(keep_probs: Sequence[float]) -> dict[str, float]:
    """Return ``{'W_k': p_k}`` for each weight consuming a dropped layer (``p_k < 1``)."""
    ps = [check_keep_prob(p) for p in keep_probs]
    return {f"W{k}": p for k, p in enumerate(ps, start=1) if p < 1.0}


def per_parameter(
    value: float, params: Mapping[str, NDArray], keep_probs: Sequence[float], power: float
) -> dict[str, float]:
    """Return ``{name: value * p_k**power}`` for consuming weights, ``value`` elsewhere.

    This builds a per-parameter hyperparameter of the maps of the book: for
    example ``per_parameter(eta, params, keep_probs, -2)`` is the standard net's
    SGD learning rate ``eta / p^2`` on consuming weights and ``eta`` on the rest.
    """
    consumers = consuming_weights(keep_probs)
    return {n: value * consumers[n] ** power if n in consumers else value for n in params}


def to_standard_params(params_inv: Mapping[str, NDArray], keep_probs: Sequence[float]) -> Params:
    """Map inverted-dropout parameters to the standard net computing the same function.

    ``W_k -> W_k / p_k`` for every ``W_k`` (an identity where ``p_k = 1``); biases
    unchanged. Proof: ``(m h / p) @ W = (m h) @ (W / p)`` in training and
    ``h @ W = (p h) @ (W / p)`` at inference.
    """
    ps = _check_keep_probs(keep_probs, n_layers(params_inv))
    out = {n: np.array(v, dtype=np.float64) for n, v in params_inv.items()}
    for k, p in enumerate(ps, start=1):
        out[f"W{k}"] = out[f"W{k}"] / p
    return out


def to_inverted_params(params_std: Mapping[str, NDArray], keep_probs: Sequence[float]) -> Params:
    """Inverse of :func:`to_standard_params`: ``W_k -> p_k * W_k``, biases unchanged."""
    ps = _check_keep_probs(keep_probs, n_layers(params_std))
    out = {n: np.array(v, dtype=np.float64) for n, v in params_std.items()}
    for k, p in enumerate(ps, start=1):
        out[f"W{k}"] = out[f"W{k}"] * p
    return out


def sample_masks(
    sizes: Sequence[int],
    keep_probs: Sequence[float],
    batch: int,
    rng: np.random.Generator | int | None = None,
) -> list[NDArray[np.float64] | None]:
    """Draw one step's masks: ``m_k ~ Bernoulli(p_k)``, shape ``(batch, n_{k-1})``.

    Entries are ``None`` where ``p_k = 1`` (no dropout on that layer's input).
    """
    ps = _check_keep_probs(keep_probs, len(sizes) - 1)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return [None if p == 1.0 else sample_mask((batch, sizes[k]), p, gen) for k, p in enumerate(ps)]


# --------------------------------------------------------------- forward pass


def _act(name: str, z: NDArray) -> NDArray:
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    return z


def _act_grad(name: str, z: NDArray, h: NDArray) -> NDArray:
    """Derivative ``act'(z)`` (ReLU: 0 at ``z = 0``, as TensorFlow)."""
    if name == "relu":
        return (z > 0.0).astype(z.dtype)
    if name == "tanh":
        return 1.0 - h * h
    if name == "sigmoid":
        return h * (1.0 - h)
    return np.ones_like(z)


def _check_common(variant: str, activation: str) -> None:
    check_variant(variant)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}.")


def _check_masks(
    masks: Masks | None, ps: list[float], training: bool, h_shapes: list[tuple[int, ...]]
) -> list:
    if not training:
        if masks is not None:
            raise ValueError(
                "masks were given with training=False; inference uses no mask. "
                "Pass training=True to apply them."
            )
        return [None] * len(ps)
    masks = [None] * len(ps) if masks is None else list(masks)
    if len(masks) != len(ps):
        raise ValueError(
            f"masks must hold one entry per layer input ({len(ps)}); got {len(masks)}. "
            "Use None where keep_prob is 1."
        )
    for k, (m, p) in enumerate(zip(masks, ps)):
        if (m is None) != (p == 1.0):
            raise ValueError(
                f"masks[{k}] is {'None' if m is None else 'an array'} but "
                f"keep_probs[{k}] = {p}: give a mask exactly where keep_prob < 1 "
                "(sample_masks() does), None where keep_prob = 1."
            )
    return [None if m is None else check_mask(m, s) for m, s in zip(masks, h_shapes)]


def _drop(variant: Variant, h: NDArray, p: float, m: NDArray | None, training: bool) -> NDArray:
    """``d(h)`` with an already checked mask: :func:`dropout_lib.reference.apply_dropout`.

    Identity when ``p = 1``. Linear in ``h``, so in training it is its own
    backward map."""
    return apply_dropout(variant, h, p, m, training=training)


def forward(
    params: Mapping[str, NDArray],
    x: ArrayLike,
    *,
    variant: Variant,
    keep_probs: Sequence[float],
    masks: Masks | None = None,
    training: bool,
    activation: Activation = "relu",
) -> tuple[NDArray[np.float64], dict]:
    """Return the output ``z_L`` (logits), shape ``(batch, n_L)``, and a cache for backprop.

    Computes ``z_k = d_k(h_{k-1}) @ W_k + b_k``, ``h_k = act(z_k)`` (see the
    module docstring). In training ``masks[k-1]`` is the binary mask ``m_k`` of
    shape ``(batch, n_{k-1})`` (or broadcastable to it), ``None`` where
    ``keep_probs[k-1] = 1``; at inference no masks are given and ``d_k`` is
    ``p_k h`` (standard) or ``h`` (inverted).
    """
    _check_common(variant, activation)
    L = n_layers(params)
    ps = _check_keep_probs(keep_probs, L)
    h = np.asarray(x, dtype=np.float64)
    if h.ndim != 2 or h.shape[1] != params["W1"].shape[0]:
        raise ValueError(
            f"x must have shape (batch, {params['W1'].shape[0]}) for this net; got "
            f"{h.shape}. Reshape a single example with x[None, :]."
        )
    shapes = [(h.shape[0], params[f"W{k}"].shape[0]) for k in range(1, L + 1)]
    ms = _check_masks(masks, ps, training, shapes)
    cache: dict = {
        "d": [],
        "z": [],
        "h": [],
        "masks": ms,
        "keep_probs": ps,
        "variant": variant,
        "activation": activation,
        "training": training,
    }
    for k in range(1, L + 1):
        d = _drop(variant, h, ps[k - 1], ms[k - 1], training)
        z = d @ params[f"W{k}"] + params[f"b{k}"]
        cache["d"].append(d)
        cache["z"].append(z)
        if k < L:
            h = _act(activation, z)
            cache["h"].append(h)
    return z, cache


def predict(
    params: Mapping[str, NDArray],
    x: ArrayLike,
    *,
    variant: Variant,
    keep_probs: Sequence[float],
    activation: Activation = "relu",
) -> NDArray[np.float64]:
    """Inference output ``z_L``.

    Standard dropout scales each dropped layer's input by ``p_k`` (the paper's
    "multiply the outgoing weights by ``p``"); inverted dropout does nothing.
    """
    return forward(params, x, variant=variant, keep_probs=keep_probs, training=False, activation=activation)[
        0
    ]


# ------------------------------------------------------------- loss, backprop


def _loss(kind: str, z: NDArray, y: NDArray) -> tuple[float, NDArray]:
    """Loss and ``dL/dz``. mse: ``mean((z - y)^2)`` over all entries (Keras's
    ``mean_squared_error`` averaged over the batch). softmax_xent:
    ``-mean_n sum_j y_nj log softmax(z_n)_j`` (Keras's categorical cross-entropy
    with ``from_logits=True``)."""
    if z.shape != y.shape:
        raise ValueError(f"y has shape {y.shape} but the output has shape {z.shape}.")
    if kind == "mse":
        r = z - y
        return float(np.mean(r * r)), 2.0 * r / r.size
    if kind == "softmax_xent":
        s = z - z.max(axis=1, keepdims=True)
        logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        n = z.shape[0]
        grad = (np.exp(logp) * y.sum(axis=1, keepdims=True) - y) / n
        return float(-(y * logp).sum() / n), grad
    raise ValueError(f"loss must be one of {LOSSES}; got {kind!r}.")


def loss_and_grads(
    params: Mapping[str, NDArray],
    x: ArrayLike,
    y: ArrayLike,
    *,
    variant: Variant,
    keep_probs: Sequence[float],
    masks: Masks | None = None,
    activation: Activation = "relu",
    loss: Loss = "mse",
    l2: Mapping[str, float] | None = None,
) -> tuple[float, Params]:
    """Training loss and its exact gradient with respect to every parameter.

    ``L = loss(z_L, y) + sum_name l2[name] * ||params[name]||^2``. Backprop, with
    ``g_k = dL/dz_k``:

        dL/dW_k = d_k^T g_k,   dL/db_k = sum_batch g_k,
        g_{k-1} = d_k(g_k @ W_k^T) * act'(z_{k-1}),

    where ``d_k`` applied to the backward signal is the same linear map as in
    the forward pass (``m_k *`` or ``m_k / p_k *``).
    """
    y = np.asarray(y, dtype=np.float64)
    z, cache = forward(
        params, x, variant=variant, keep_probs=keep_probs, masks=masks, training=True, activation=activation
    )
    value, g = _loss(loss, z, y)
    L = len(cache["z"])
    grads: Params = {}
    for k in range(L, 0, -1):
        grads[f"W{k}"] = cache["d"][k - 1].T @ g
        grads[f"b{k}"] = g.sum(axis=0)
        if k > 1:
            gd = g @ params[f"W{k}"].T
            gh = _drop(variant, gd, cache["keep_probs"][k - 1], cache["masks"][k - 1], True)
            g = gh * _act_grad(activation, cache["z"][k - 2], cache["h"][k - 2])
    for name, lam in (l2 or {}).items():
        if name not in params:
            raise ValueError(f"l2 names {name!r}, which is not a parameter; have {sorted(params)}.")
        w = params[name]
        value += float(lam) * float(np.sum(w * w))
        grads[name] = grads[name] + 2.0 * float(lam) * w
    return value, {n: grads[n] for n in params}


def gradient_check(
    params: Mapping[str, NDArray],
    x: ArrayLike,
    y: ArrayLike,
    *,
    variant: Variant,
    keep_probs: Sequence[float],
    masks: Masks | None = None,
    activation: Activation = "relu",
    loss: Loss = "mse",
    l2: Mapping[str, float] | None = None,
    step: float = 1e-5,
) -> float:
    """Check :func:`loss_and_grads` by central differences; return the worst relative error.

    For every entry ``theta`` the numerical derivative is
    ``(L(theta + s) - L(theta - s)) / (2 s)`` with the masks held fixed, so the
    loss is a deterministic function. Returns
    ``max_name ||g_name - n_name|| / (||g_name|| + ||n_name||)`` (0 where both vanish).
    The error of the central difference is ``O(s^2 L''')`` truncation plus
    ``O(eps_64 |L| / s)`` rounding, about 1e-10 for ``s = 1e-5`` on a smooth loss.
    """
    kw = dict(variant=variant, keep_probs=keep_probs, masks=masks, activation=activation, loss=loss, l2=l2)
    work = {n: np.array(v, dtype=np.float64) for n, v in params.items()}
    _, grads = loss_and_grads(work, x, y, **kw)
    worst = 0.0
    for name, w in work.items():
        num = np.zeros_like(w)
        for i in np.ndindex(w.shape):
            old = w[i]
            w[i] = old + step
            up = loss_and_grads(work, x, y, **kw)[0]
            w[i] = old - step
            down = loss_and_grads(work, x, y, **kw)[0]
            w[i] = old
            num[i] = (up - down) / (2.0 * step)
        denom = np.linalg.norm(grads[name]) + np.linalg.norm(num)
        if denom > 0.0:
            worst = max(worst, float(np.linalg.norm(grads[name] - num) / denom))
    return worst


def relative_difference(a: Mapping[str, NDArray], b: Mapping[str, NDArray]) -> float:
    """Return ``max_name ||a_name - b_name|| / ||b_name||`` (Frobenius norms).

    Per parameter :func:`dropout_lib.reference.relative_difference` (the
    absolute difference where ``||b_name|| = 0``), the worst over the names.
    """
    if set(a) != set(b):
        raise ValueError(f"parameter names differ: {sorted(a)} vs {sorted(b)}.")
    return max((_relative_difference(a[n], b[n]) for n in b), default=0.0)
