"""The ensemble view of dropout: every sub-network, enumerated exactly.

A network with dropout on the inputs of some of its layers defines, for each
binary mask ``m`` over the ``n`` dropped units, a *sub-network*; mask ``m`` is
drawn with probability

.. math:: P(m) = \\prod_\\ell p_\\ell^{|m_\\ell|}\\,(1 - p_\\ell)^{n_\\ell - |m_\\ell|},

where ``m_l`` is the part of the mask on layer ``l``'s ``n_l`` inputs and
``p_l`` that layer's keep probability (Keras's ``rate`` is ``1 - p``). With
``s(x; m)`` the sub-network's softmax output, this module computes, by summing
over all ``2^n`` masks,

* the arithmetic mean ``AM = sum_m P(m) s(x; m)``, the prediction of the
  ensemble and the limit of Monte Carlo dropout;
* the normalised weighted geometric mean (Baldi & Sadowski, 2013)
  ``NWGM_c = exp(E[log s_c]) / sum_k exp(E[log s_k])``;
* the weight-scaled prediction, the single deterministic net every framework
  runs at test time: the paper's ``p * h`` (``variant="standard"``) or the
  identity (``variant="inverted"``).

For one softmax layer with dropout on its inputs, ``NWGM`` equals the
weight-scaled prediction exactly: ``log s_c = z_c - logsumexp(z)`` and the
logits ``z`` are linear in ``m``, so ``E[log s_c] = z_c(E[m]) - E[logsumexp z]``;
the second term does not depend on ``c`` and cancels in the normalisation.
Behind a ReLU the logits are no longer linear in the mask and the equality is
only approximate; the arithmetic mean differs from both in general.

Conventions
-----------
* A :class:`DropoutNet` is an MLP ``h_{l+1} = relu(d_l(h_l) @ W_l + b_l)``
  with softmax on the last layer; ``W_l`` has shape ``(n_in, n_out)`` (Keras's
  kernel layout), so in the column notation of the book ``z = W_l^T d(h) + b``.
  ``d_l`` is dropout with keep probability ``keep_probs[l]`` on the *inputs* of
  layer ``l``; ``keep_probs[l] = 1`` means no dropout there.
* ``variant="standard"`` (the paper's): sub-network ``d(h) = m * h``, test
  ``d(h) = p * h``. ``variant="inverted"`` (Keras's): sub-network
  ``d(h) = m * h / p``, test ``d(h) = h``. A standard net with weights ``W`` and
  an inverted net with weights ``p * W`` (biases unchanged) define the same
  sub-networks and the same test-time net, hence the same ensemble.
* Mask bit ``j`` of the integer ``i`` is unit ``j`` of the concatenation of the
  dropped layers' inputs, in layer order; layers with ``keep_prob = 1`` get no
  bits. A mask is shared by all rows of a batch: it selects one sub-network,
  which is then evaluated on every input.
* Masks are streamed in blocks of at most ``chunk`` rows, so memory is
  ``O(chunk * batch * width)`` whatever ``2^n`` is. The first dropped layer's
  input is the same for every sub-network, so its pre-activations are linear
  in the mask, ``z(m) = b + sum_j m_j a_j``; :func:`enumerate_ensemble`
  tabulates them for a block by doubling (``z(m + e_j) = z(m) + a_j``), which
  costs one addition per entry instead of a matmul.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dropout_lib.reference import Variant, check_keep_prob, check_variant

__all__ = [
    "MAX_ENUMERATED_UNITS",
    "DropoutNet",
    "EnsembleResult",
    "MCErrorCurve",
    "mask_blocks",
    "mask_probabilities",
    "subnetwork_logits",
    "weight_scaled_logits",
    "weight_scaled_predict",
    "log_softmax",
    "enumerate_ensemble",
    "softmax_layer_ensemble",
    "mc_dropout_predict",
    "mc_error_curve",
    "mc_error_moments",
    "mse_ratio_sd",
]

#: Enumerating more than ``2^MAX_ENUMERATED_UNITS`` sub-networks is refused.
MAX_ENUMERATED_UNITS = 34

#: Target number of float64 entries in one block's arrays (1 MiB: stays in
#: cache, which measured faster than larger blocks).
_BLOCK_ENTRIES = 1 << 17


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #


def _check_chunk(chunk: int | None) -> int | None:
    if chunk is None:
        return None
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(
            f"chunk must be a positive integer (masks per block) or None for an "
            f"automatic size; got {chunk!r}."
        )
    return int(chunk)


def _check_n_units(n_units: int) -> int:
    if isinstance(n_units, bool) or not isinstance(n_units, (int, np.integer)) or n_units < 0:
        raise ValueError(f"n_units must be a non-negative integer; got {n_units!r}.")
    if n_units > MAX_ENUMERATED_UNITS:
        raise ValueError(
            f"n_units = {n_units} would enumerate 2^{n_units} sub-networks; at most "
            f"{MAX_ENUMERATED_UNITS} dropped units can be enumerated. Use "
            "mc_dropout_predict() to sample sub-networks instead."
        )
    return int(n_units)


@dataclass(frozen=True, eq=False)
class DropoutNet:
    """An MLP with dropout on the inputs of its layers, ReLU between, softmax out.

    Layer ``l`` computes ``z_l = d_l(h_l) @ weights[l] + biases[l]`` with
    ``h_0 = x``, ``h_{l+1} = relu(z_l)`` and output ``softmax(z_{L-1})``;
    ``d_l`` is dropout with keep probability ``keep_probs[l]`` (``1.0``: none).
    Whether ``d_l`` is the standard or the inverted variant is chosen by the
    functions that evaluate the net, not stored here.

    Parameters
    ----------
    weights
        Sequence of ``L`` arrays; ``weights[l]`` has shape ``(n_l, n_{l+1})``.
    biases
        Sequence of ``L`` arrays; ``biases[l]`` has shape ``(n_{l+1},)``.
    keep_probs
        Sequence of ``L`` keep probabilities ``p_l`` in ``(0, 1]``, one per
        layer, applied to that layer's inputs. Keras's ``rate`` is ``1 - p_l``.

    Arrays are converted to float64 copies and frozen (read-only).
    """

    weights: tuple[NDArray[np.float64], ...]
    biases: tuple[NDArray[np.float64], ...]
    keep_probs: tuple[float, ...]

    def __init__(
        self,
        weights: Sequence[ArrayLike],
        biases: Sequence[ArrayLike],
        keep_probs: Sequence[float],
    ) -> None:
        ws = tuple(np.array(w, dtype=np.float64) for w in weights)
        bs = tuple(np.array(b, dtype=np.float64) for b in biases)
        ps = tuple(check_keep_prob(p) for p in keep_probs)
        if not ws:
            raise ValueError("a DropoutNet needs at least one layer; got no weights.")
        if not len(ws) == len(bs) == len(ps):
            raise ValueError(
                f"weights, biases and keep_probs must have one entry per layer; got "
                f"{len(ws)}, {len(bs)} and {len(ps)}."
            )
        for i, (w, b) in enumerate(zip(ws, bs)):
            if w.ndim != 2:
                raise ValueError(f"weights[{i}] must be 2-D of shape (n_in, n_out); got shape {w.shape}.")
            if b.shape != (w.shape[1],):
                raise ValueError(
                    f"biases[{i}] must have shape ({w.shape[1]},) to match weights[{i}] "
                    f"of shape {w.shape}; got {b.shape}."
                )
            if i and w.shape[0] != ws[i - 1].shape[1]:
                raise ValueError(
                    f"weights[{i}] takes {w.shape[0]} inputs but layer {i - 1} has "
                    f"{ws[i - 1].shape[1]} outputs; shapes {ws[i - 1].shape} -> {w.shape}."
                )
            if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
                raise ValueError(f"weights[{i}] and biases[{i}] must be finite.")
            w.flags.writeable = False
            b.flags.writeable = False
        object.__setattr__(self, "weights", ws)
        object.__setattr__(self, "biases", bs)
        object.__setattr__(self, "keep_probs", ps)

    @property
    def n_inputs(self) -> int:
        """Width of the input ``x``."""
        return int(self.weights[0].shape[0])

    @property
    def n_classes(self) -> int:
        """Width of the softmax output."""
        return int(self.weights[-1].shape[1])

    @property
    def dropped_layers(self) -> tuple[int, ...]:
        """Indices ``l`` of the layers whose inputs are dropped (``p_l < 1``)."""
        return tuple(i for i, p in enumerate(self.keep_probs) if p < 1.0)

    @property
    def dropped_sizes(self) -> tuple[int, ...]:
        """Number of dropped units ``n_l`` of each layer in :attr:`dropped_layers`."""
        return tuple(int(self.weights[i].shape[0]) for i in self.dropped_layers)

    @property
    def n_dropped(self) -> int:
        """Total number ``n`` of dropped units; there are ``2^n`` sub-networks."""
        return int(sum(self.dropped_sizes))

    def _check_x(self, x: ArrayLike) -> tuple[NDArray[np.float64], bool]:
        arr2, single = _rows(
            x, self.n_inputs, f"x must have shape ({self.n_inputs},) or (batch, {self.n_inputs}) for this net"
        )
        if not np.all(np.isfinite(arr2)):
            raise ValueError("x must be finite.")
        return arr2, single


def _rows(a: ArrayLike, width: int, expected: str) -> tuple[NDArray[np.float64], bool]:
    """``a`` as float64 rows of ``width`` entries, and whether it was one row.

    A 1-D ``a`` becomes the single row ``a[None, :]`` (``True``); a 2-D ``a`` is
    kept (``False``). Any other shape raises ``ValueError(f"{expected}; got
    {shape}.")`` with ``a``'s own shape.
    """
    arr = np.asarray(a, dtype=np.float64)
    single = arr.ndim == 1
    rows = arr[None, :] if single else arr
    if rows.ndim != 2 or rows.shape[1] != width:
        raise ValueError(f"{expected}; got {arr.shape}.")
    return rows, single


@dataclass(frozen=True, eq=False)
class EnsembleResult:
    """Exact summaries of the sub-network ensemble at one input (or batch).

    Output arrays have shape ``(n_classes,)`` for one input or
    ``(batch, n_classes)`` for a batch.

    Attributes
    ----------
    arithmetic_mean
        ``AM = sum_m P(m) s(x; m)``.
    nwgm
        ``exp(E[log s]) / sum_c exp(E[log s_c])``, computed in log space.
    weight_scaled
        Softmax of the weight-scaled (test-time) net.
    expected_log_softmax
        ``E[log s(x; m)]``, the log of the *unnormalised* geometric mean.
    output_variance
        ``Var_m[s_c(x; m)] = E[s_c^2] - AM_c^2`` per class: the variance of one
        Monte Carlo draw, so ``T`` draws have standard error ``sqrt(var / T)``.
    total_probability
        ``sum_m P(m)`` as accumulated; 1 up to rounding.
    n_subnetworks
        ``2^n``, the number of masks summed over.
    """

    arithmetic_mean: NDArray[np.float64]
    nwgm: NDArray[np.float64]
    weight_scaled: NDArray[np.float64]
    expected_log_softmax: NDArray[np.float64]
    output_variance: NDArray[np.float64]
    total_probability: float
    n_subnetworks: int


# --------------------------------------------------------------------------- #
# Masks
# --------------------------------------------------------------------------- #


def mask_blocks(n_units: int, chunk: int = 1 << 16) -> Iterator[NDArray[np.float64]]:
    """Yield all ``2^n_units`` binary masks, in blocks of at most ``chunk`` rows.

    Row ``r`` of the block starting at integer ``s`` is the binary expansion of
    ``i = s + r``: ``mask[r, j] = (i >> j) & 1``. Blocks come in increasing
    ``i``, so concatenated they list ``i = 0, ..., 2^n_units - 1``.

    Parameters
    ----------
    n_units
        ``n``, the number of dropped units (at most :data:`MAX_ENUMERATED_UNITS`).
    chunk
        Maximum number of masks per block.

    Yields
    ------
    ndarray of float64, shape ``(k, n_units)`` with ``k <= chunk``, of 0.0 and 1.0.
    """
    n = _check_n_units(n_units)
    size = _check_chunk(chunk)
    if size is None:
        raise ValueError("chunk must be a positive integer for mask_blocks; got None.")
    for ints in _int_blocks(n, size):
        yield _bits(ints, 0, n)


def _int_blocks(n: int, size: int) -> Iterator[NDArray[np.int64]]:
    # the integers 0 .. 2^n - 1 in consecutive blocks of at most `size`
    total = 1 << n
    for start in range(0, total, size):
        yield np.arange(start, min(start + size, total), dtype=np.int64)


def _bits(ints: NDArray[np.int64], offset: int, width: int) -> NDArray[np.float64]:
    # mask[r, j] = bit (offset + j) of ints[r], as float64 0.0 / 1.0
    shifts = np.arange(offset, offset + width, dtype=np.int64)
    return ((ints[:, None] >> shifts) & 1).astype(np.float64)


def _probability_tables(keep_probs: Sequence[float], sizes: Sequence[int]) -> list[NDArray[np.float64]]:
    # table[k] = p^k (1 - p)^(n - k): the probability of one mask keeping k of n.
    tables = []
    for p, n in zip(keep_probs, sizes):
        k = np.arange(n + 1, dtype=np.float64)
        tables.append(p**k * (1.0 - p) ** (n - k))
    return tables


def _block_probabilities(
    masks: NDArray[np.float64],
    tables: Sequence[NDArray[np.float64]],
    sizes: Sequence[int],
) -> NDArray[np.float64]:
    prob = np.ones(masks.shape[0])
    start = 0
    for table, n in zip(tables, sizes):
        kept = masks[:, start : start + n].sum(axis=1).astype(np.int64)
        prob = prob * table[kept]
        start += n
    return prob


def mask_probabilities(
    masks: ArrayLike,
    keep_probs: float | Sequence[float],
    sizes: Sequence[int] | None = None,
) -> NDArray[np.float64]:
    """Return ``P(m) = prod_l p_l^{|m_l|} (1 - p_l)^{n_l - |m_l|}`` for each mask row.

    Parameters
    ----------
    masks
        Binary array of shape ``(k, n)``, one mask per row.
    keep_probs
        One keep probability ``p`` for all ``n`` columns, or one ``p_l`` per
        group of columns (Keras's ``rate`` is ``1 - p``).
    sizes
        Column-group widths ``n_l`` (summing to ``n``) when ``keep_probs`` is a
        sequence; omit for a single ``p``.

    Returns
    -------
    ndarray of float64, shape ``(k,)``.
    """
    m = np.asarray(masks, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"masks must be 2-D of shape (k, n); got shape {m.shape}.")
    if not np.all((m == 0.0) | (m == 1.0)):
        raise ValueError("masks must be binary (0 = dropped, 1 = kept).")
    if np.ndim(keep_probs) == 0:
        ps: tuple[float, ...] = (check_keep_prob(keep_probs),)  # type: ignore[arg-type]
        ns: tuple[int, ...] = (m.shape[1],) if sizes is None else tuple(sizes)
    else:
        ps = tuple(check_keep_prob(p) for p in keep_probs)  # type: ignore[union-attr]
        if sizes is None:
            raise ValueError(
                "sizes is required with one keep_prob per column group: pass the "
                "number of columns of each group, e.g. sizes=(n_inputs, n_hidden)."
            )
        ns = tuple(int(s) for s in sizes)
    if len(ps) != len(ns) or sum(ns) != m.shape[1]:
        raise ValueError(
            f"sizes {ns} must give one width per keep_prob ({len(ps)}) and sum to the "
            f"number of mask columns {m.shape[1]}."
        )
    return _block_probabilities(m, _probability_tables(ps, ns), ns)


# --------------------------------------------------------------------------- #
# Forward passes
# --------------------------------------------------------------------------- #


def log_softmax(z: ArrayLike, axis: int = -1) -> NDArray[np.float64]:
    """Return ``z - logsumexp(z)`` along ``axis``, with the max subtracted first."""
    arr = np.asarray(z, dtype=np.float64)
    shifted = arr - arr.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _input_scale(variant: Variant, p: float) -> float:
    # sub-network: d(h) = m * h * scale, scale = 1 (standard) or 1/p (inverted)
    return 1.0 if variant == "standard" else 1.0 / p


def _forward(
    net: DropoutNet,
    h: NDArray[np.float64],
    start: int,
    layer_mask: Callable[[int], NDArray[np.float64]],
    k: int,
    variant: Variant,
) -> NDArray[np.float64]:
    # Run layers start, start+1, ... of k sub-networks on the batch; return their
    # logits, shape (k, batch, n_classes). h is either shared by all k
    # sub-networks (2-D, (batch, width): no mask has acted yet) or per
    # sub-network (3-D, (k, batch, width)). layer_mask(i) is the (k, n_i) mask
    # of dropped layer i. The first mask that meets a shared h turns it into
    # per-sub-network values with one matmul, since that layer is linear in m:
    #   z[k, b, :] = sum_j m[k, j] * (scale * h[b, j] * W[j, :]) + bias.
    last = len(net.weights) - 1
    for i in range(start, last + 1):
        w, b, p = net.weights[i], net.biases[i], net.keep_probs[i]
        if p < 1.0:
            m = layer_mask(i)
            scale = _input_scale(variant, p)
            if h.ndim == 2:
                batch, (n_in, n_out) = h.shape[0], w.shape
                a = (h * scale)[:, :, None] * w[None, :, :]  # (batch, n_in, n_out)
                a = a.transpose(1, 0, 2).reshape(n_in, batch * n_out)
                z = (m @ a).reshape(k, batch, n_out) + b
            else:
                z = (h * (m * scale)[:, None, :]) @ w + b
        else:
            z = h @ w + b
        h = z if i == last else np.maximum(z, 0.0)
    if h.ndim == 2:
        h = np.broadcast_to(h, (k, *h.shape))
    return h


def _column_offsets(net: DropoutNet) -> dict[int, int]:
    # first mask column (= bit) of each dropped layer
    offsets, col = {}, 0
    for i, n in zip(net.dropped_layers, net.dropped_sizes):
        offsets[i] = col
        col += n
    return offsets


def _logits_block(
    net: DropoutNet, x: NDArray[np.float64], masks: NDArray[np.float64], variant: Variant
) -> NDArray[np.float64]:
    # Logits (k, batch, n_classes) of the k sub-networks given by the rows of masks.
    offsets = _column_offsets(net)

    def layer_mask(i: int) -> NDArray[np.float64]:
        n_in = net.weights[i].shape[0]
        return masks[:, offsets[i] : offsets[i] + n_in]

    return _forward(net, x, 0, layer_mask, masks.shape[0], variant)


def subnetwork_logits(
    net: DropoutNet,
    x: ArrayLike,
    masks: ArrayLike,
    variant: Variant = "standard",
) -> NDArray[np.float64]:
    """Return the logits of the sub-networks selected by the rows of ``masks``.

    For mask ``m = (m_l)_l`` over the dropped layers, the sub-network computes
    ``z_l = d_l(h_l) @ W_l + b_l`` with ``d_l(h) = m_l * h`` (standard) or
    ``m_l * h / p_l`` (inverted), ReLU between layers.

    Parameters
    ----------
    net
        The network.
    x
        Input of shape ``(n_inputs,)`` or ``(batch, n_inputs)``.
    masks
        Binary array of shape ``(k, net.n_dropped)`` (or ``(net.n_dropped,)``
        for one mask), columns in the order of :attr:`DropoutNet.dropped_layers`.
    variant
        ``"standard"`` or ``"inverted"``.

    Returns
    -------
    ndarray of shape ``(k, n_classes)`` for one input or ``(k, batch, n_classes)``.
    """
    v = check_variant(variant)
    xs, single = net._check_x(x)
    m, one_mask = _rows(
        masks,
        net.n_dropped,
        f"masks must have shape (k, {net.n_dropped}): one column per dropped unit "
        f"(layers {net.dropped_layers})",
    )
    if not np.all((m == 0.0) | (m == 1.0)):
        raise ValueError("masks must be binary (0 = dropped, 1 = kept).")
    z = _logits_block(net, xs, m, v)
    if single:
        z = z[:, 0, :]
    return z[0] if one_mask else z


def weight_scaled_logits(net: DropoutNet, x: ArrayLike, variant: Variant = "standard") -> NDArray[np.float64]:
    """Logits of the test-time net: ``d_l(h) = p_l * h`` (standard) or ``h`` (inverted).

    The standard variant's ``p * h`` is the paper's "multiply the outgoing
    weights by ``p``": ``(p h) @ W = h @ (p W)``.

    Returns
    -------
    ndarray of shape ``(n_classes,)`` or ``(batch, n_classes)``, matching ``x``.
    """
    v = check_variant(variant)
    h, single = net._check_x(x)
    last = len(net.weights) - 1
    for i, (w, b, p) in enumerate(zip(net.weights, net.biases, net.keep_probs)):
        z = ((h * p) if v == "standard" else h) @ w + b
        h = z if i == last else np.maximum(z, 0.0)
    return h[0] if single else h


def weight_scaled_predict(
    net: DropoutNet, x: ArrayLike, variant: Variant = "standard"
) -> NDArray[np.float64]:
    """Softmax output of the weight-scaled net, see :func:`weight_scaled_logits`."""
    return np.exp(log_softmax(weight_scaled_logits(net, x, variant)))


# --------------------------------------------------------------------------- #
# Exact enumeration
# --------------------------------------------------------------------------- #


def _auto_chunk(net: DropoutNet, batch: int) -> int:
    width = max(max(w.shape) for w in net.weights)
    return int(min(1 << 16, max(1 << 8, _BLOCK_ENTRIES // (batch * width))))


def enumerate_ensemble(
    net: DropoutNet,
    x: ArrayLike,
    variant: Variant = "standard",
    chunk: int | None = None,
) -> EnsembleResult:
    """Average over all ``2^n`` sub-networks of ``net`` exactly, streaming the masks.

    With ``P(m)`` the mask probability (module docstring), ``z(m)`` the
    sub-network's logits and ``s = softmax(z)``, accumulate over masks

    * ``AM = sum_m P(m) s(m)`` and ``E[s^2]`` (for :attr:`EnsembleResult.output_variance`);
    * ``E[log s_c] = E[z_c] - E[logsumexp z]``, accumulated as its two terms
      (an identity; the second term is common to all classes, so its rounding
      cannot distort the class ratios), then
      ``NWGM = softmax(E[log s])``, i.e. ``exp(E[log s])`` renormalised, in log space.

    Parameters
    ----------
    net
        The network; its ``n = net.n_dropped`` dropped units give ``2^n`` masks
        (``n`` at most :data:`MAX_ENUMERATED_UNITS`).
    x
        Input of shape ``(n_inputs,)`` or ``(batch, n_inputs)``.
    variant
        ``"standard"`` (sub-networks ``m * h``, test ``p * h``) or
        ``"inverted"`` (sub-networks ``m * h / p``, test ``h``).
    chunk
        Masks per block, rounded down to a power of two (blocks are aligned
        ranges of integers ``i``; see :func:`mask_blocks`). ``None`` picks a
        size that keeps each block's arrays near 1 MiB (at least 256 masks,
        at most 65536). The result does not depend on it beyond rounding.

    Returns
    -------
    EnsembleResult
    """
    v = check_variant(variant)
    size = _check_chunk(chunk)
    xs, single = net._check_x(x)
    n = _check_n_units(net.n_dropped)
    batch, n_classes = xs.shape[0], net.n_classes
    if size is None:
        size = _auto_chunk(net, batch)
    # blocks of 2^c masks, aligned, so that all bits >= c are constant in a block
    c = min(n, size.bit_length() - 1)
    sizes = net.dropped_sizes
    offsets = _column_offsets(net)
    tables = _probability_tables([net.keep_probs[i] for i in net.dropped_layers], sizes)

    # Logits of the first dropped layer f, whose input h_f is the same for every
    # sub-network: z = b + sum_j m_j a_j with a_j = scale * h_f[:, j] * W_f[j, :].
    # Tabulate it for all 2^c1 patterns of its c1 lowest bits by doubling
    # (table[i + 2^j] = table[i] + a_j); a block adds the constant contribution
    # of its remaining (high) bits of layer f.
    first = net.dropped_layers[0] if n else None
    if first is not None:
        h_f = xs
        for i in range(first):
            h_f = np.maximum(h_f @ net.weights[i] + net.biases[i], 0.0)
        n_f = sizes[0]
        scale = _input_scale(v, net.keep_probs[first])
        a = (h_f * scale).T[:, :, None] * net.weights[first][:, None, :]  # (n_f, B, C_f)
        c1 = min(n_f, c)
        table = np.broadcast_to(net.biases[first], (1, *a.shape[1:])).copy()
        for j in range(c1):
            table = np.concatenate([table, table + a[j]])
        low = (1 << c1) - 1

    total = 0.0
    e_z = np.zeros(batch * n_classes)
    e_lse = np.zeros(batch)
    am = np.zeros(batch * n_classes)
    e_s2 = np.zeros(batch * n_classes)
    for ints in _int_blocks(n, 1 << c):
        k, start = len(ints), int(ints[0])
        prob = np.ones(k)
        for table_l, i, n_l in zip(tables, net.dropped_layers, sizes):
            kept = np.bitwise_count((ints >> offsets[i]) & ((1 << n_l) - 1))
            prob = prob * table_l[kept.astype(np.intp)]

        def layer_mask(i: int, ints: NDArray[np.int64] = ints) -> NDArray[np.float64]:
            return _bits(ints, offsets[i], net.weights[i].shape[0])

        if first is None:
            z = _forward(net, xs, 0, layer_mask, k, v)
        else:
            z1 = table if c1 == c else table[ints & low]
            if c1 < n_f:  # bits c1..n_f-1 of layer f are constant in this block
                high = ((start >> np.arange(c1, n_f)) & 1).astype(np.float64)
                z1 = z1 + np.tensordot(high, a[c1:], axes=1)
            h = z1 if first == len(net.weights) - 1 else np.maximum(z1, 0.0)
            z = _forward(net, h, first + 1, layer_mask, k, v)
        zmax = z.max(axis=2, keepdims=True)
        ex = np.exp(z - zmax)
        sums = ex.sum(axis=2, keepdims=True)
        s = (ex / sums).reshape(k, -1)
        lse = (zmax + np.log(sums)).reshape(k, batch)
        total += prob.sum()
        e_z += prob @ z.reshape(k, -1)
        e_lse += prob @ lse
        am += prob @ s
        e_s2 += prob @ (s * s)

    e_z = e_z.reshape(batch, n_classes)
    am = am.reshape(batch, n_classes)
    var = np.maximum(e_s2.reshape(batch, n_classes) - am * am, 0.0)
    e_log_s = e_z - e_lse[:, None]
    nwgm = np.exp(log_softmax(e_log_s))
    ws = weight_scaled_predict(net, xs, v)

    def out(arr: NDArray[np.float64]) -> NDArray[np.float64]:
        return arr[0] if single else arr

    return EnsembleResult(
        arithmetic_mean=out(am),
        nwgm=out(nwgm),
        weight_scaled=out(ws),
        expected_log_softmax=out(e_log_s),
        output_variance=out(var),
        total_probability=float(total),
        n_subnetworks=1 << n,
    )


def softmax_layer_ensemble(
    x: ArrayLike,
    weights: ArrayLike,
    bias: ArrayLike,
    keep_prob: float,
    variant: Variant = "standard",
    chunk: int | None = None,
) -> EnsembleResult:
    """Exact ensemble of one softmax layer ``softmax(d(x) @ W + b)`` with dropout on ``x``.

    A shortcut for ``enumerate_ensemble(DropoutNet([W], [b], [keep_prob]), x, ...)``.
    All ``2^n`` sub-networks' logits come from one matmul per block,
    ``M_block @ (x[:, None] * W) + b``, because the logits are linear in the mask.

    Parameters
    ----------
    x
        Input of shape ``(n,)`` or ``(batch, n)``; its ``n`` entries are dropped.
    weights
        ``W`` of shape ``(n, n_classes)``: the standard net's weights for
        ``variant="standard"``, the inverted net's (``p * W_std``) for ``"inverted"``.
    bias
        ``b`` of shape ``(n_classes,)``, the same for both variants.
    keep_prob
        ``p`` in ``(0, 1]`` (Keras's ``rate`` is ``1 - p``).
    variant, chunk
        As in :func:`enumerate_ensemble`.
    """
    net = DropoutNet([weights], [bias], [keep_prob])
    return enumerate_ensemble(net, x, variant=variant, chunk=chunk)


# --------------------------------------------------------------------------- #
# Monte Carlo dropout
# --------------------------------------------------------------------------- #


def _sample_masks(net: DropoutNet, k: int, rng: np.random.Generator) -> NDArray[np.float64]:
    cols = [
        (rng.random((k, net.weights[i].shape[0])) < net.keep_probs[i]).astype(np.float64)
        for i in net.dropped_layers
    ]
    return np.concatenate(cols, axis=1) if cols else np.zeros((k, 0))


def _mc_sums(
    net: DropoutNet,
    xs: NDArray[np.float64],
    n_samples: int,
    variant: Variant,
    rng: np.random.Generator,
    chunk: int,
    checkpoints: Sequence[int],
) -> list[NDArray[np.float64]]:
    # Running sum of the softmax outputs of n_samples sampled sub-networks,
    # recorded after each checkpoint (sorted, <= n_samples).
    acc = np.zeros((xs.shape[0], net.n_classes))
    out = []
    done = 0
    for stop in checkpoints:
        while done < stop:
            k = min(chunk, stop - done)
            z = _logits_block(net, xs, _sample_masks(net, k, rng), variant)
            acc += np.exp(log_softmax(z)).sum(axis=0)
            done += k
        out.append(acc.copy())
    return out


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


def mc_dropout_predict(
    net: DropoutNet,
    x: ArrayLike,
    n_samples: int,
    variant: Variant = "standard",
    rng: np.random.Generator | int | None = None,
    chunk: int | None = None,
) -> NDArray[np.float64]:
    """Monte Carlo dropout: ``(1/T) sum_t s(x; m_t)`` with ``m_t ~ P`` i.i.d.

    An unbiased estimate of the arithmetic mean ``AM``; its standard error per
    class is ``sqrt(Var_m[s_c] / T)`` (see :attr:`EnsembleResult.output_variance`).
    Each draw ``m_t`` is one sub-network, shared by all rows of a batch.

    Parameters
    ----------
    net, x, variant
        As in :func:`enumerate_ensemble`.
    n_samples
        ``T``, the number of sampled sub-networks.
    rng
        A ``numpy.random.Generator``, or an integer seed for a new one.
    chunk
        Sub-networks evaluated per block (memory bound); ``None`` for automatic.

    Returns
    -------
    ndarray of shape ``(n_classes,)`` or ``(batch, n_classes)``, matching ``x``.
    """
    v = check_variant(variant)
    t = _check_positive_int("n_samples", n_samples)
    size = _check_chunk(chunk)
    xs, single = net._check_x(x)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    size = _auto_chunk(net, xs.shape[0]) if size is None else size
    mean = _mc_sums(net, xs, t, v, gen, size, [t])[0] / t
    return mean[0] if single else mean


@dataclass(frozen=True, eq=False)
class MCErrorCurve:
    """Error of Monte Carlo dropout against the exact arithmetic mean, vs ``T``.

    Attributes
    ----------
    sample_sizes
        The ``T`` values, shape ``(len,)``.
    rms_error
        ``sqrt(mean_r ||MC_T^{(r)} - AM||^2)`` over ``n_repeats`` independent
        runs (the norm over all classes and batch rows), shape ``(len,)``.
    predicted_rms
        ``sqrt(sum_c Var_m[s_c] / T)``, what the ``1/sqrt(T)`` law predicts.
    errors
        ``||MC_T^{(r)} - AM||`` for each run and ``T``, shape ``(n_repeats, len)``.
    """

    sample_sizes: NDArray[np.int64]
    rms_error: NDArray[np.float64]
    predicted_rms: NDArray[np.float64]
    errors: NDArray[np.float64]


def mc_error_curve(
    net: DropoutNet,
    x: ArrayLike,
    sample_sizes: Sequence[int],
    n_repeats: int = 20,
    variant: Variant = "standard",
    rng: np.random.Generator | int | None = None,
    exact: EnsembleResult | None = None,
    chunk: int | None = None,
) -> MCErrorCurve:
    """Measure how Monte Carlo dropout converges to the arithmetic mean.

    Each of ``n_repeats`` runs draws one stream of ``max(sample_sizes)``
    sub-networks and reads its running mean at every ``T`` in ``sample_sizes``
    (nested prefixes, so a run's errors at different ``T`` are correlated; the
    runs are independent). The reference ``AM`` and ``Var_m[s]`` come from
    exact enumeration, so ``n = net.n_dropped`` must be small enough for it.

    Parameters
    ----------
    net, x, variant, chunk
        As in :func:`enumerate_ensemble`.
    sample_sizes
        Increasing positive integers ``T``.
    n_repeats
        Independent runs to average the squared error over.
    rng
        A ``numpy.random.Generator``, or an integer seed for a new one.
    exact
        A precomputed :func:`enumerate_ensemble` result for the same
        ``net``, ``x`` and ``variant``; computed if omitted.

    Returns
    -------
    MCErrorCurve
    """
    v = check_variant(variant)
    reps = _check_positive_int("n_repeats", n_repeats)
    size = _check_chunk(chunk)
    ts = [_check_positive_int("each sample size", t) for t in sample_sizes]
    if not ts or any(b <= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"sample_sizes must be a non-empty, strictly increasing sequence; got {list(ts)}.")
    xs, _ = net._check_x(x)
    ref = enumerate_ensemble(net, xs, v, chunk) if exact is None else exact
    shape = (xs.shape[0], net.n_classes)
    if np.size(ref.arithmetic_mean) != shape[0] * shape[1]:
        raise ValueError(
            f"exact holds {np.size(ref.arithmetic_mean)} outputs but this net and x "
            f"give {shape[0] * shape[1]}; pass the enumerate_ensemble() result for the "
            "same net and x, or omit exact."
        )
    am = np.asarray(ref.arithmetic_mean).reshape(shape)
    var = np.asarray(ref.output_variance).reshape(shape)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    size = _auto_chunk(net, xs.shape[0]) if size is None else size
    errors = np.empty((reps, len(ts)))
    for r in range(reps):
        sums = _mc_sums(net, xs, ts[-1], v, gen, size, ts)
        for j, (t, acc) in enumerate(zip(ts, sums)):
            errors[r, j] = np.linalg.norm(acc / t - am)
    t_arr = np.asarray(ts, dtype=np.int64)
    return MCErrorCurve(
        sample_sizes=t_arr,
        rms_error=np.sqrt((errors**2).mean(axis=0)),
        predicted_rms=np.sqrt(var.sum() / t_arr),
        errors=errors,
    )


def mc_error_moments(
    net: DropoutNet,
    x: ArrayLike,
    exact: EnsembleResult,
    variant: Variant = "standard",
    chunk: int = 1 << 10,
) -> tuple[float, float, float]:
    """Moments of one sub-network's deviation from the AM, by enumerating every mask.

    With ``d(m) = s(x; m) - AM`` flattened over the inputs ``x`` and the classes
    (one mask serves every input, as in :func:`mc_error_curve`) and ``Sigma``
    its covariance under ``P(m)``, returns ``(tr Sigma, tr Sigma^2, E||d||^4)``.
    ``tr Sigma`` is ``sigma^2`` of :func:`mc_error_curve`'s prediction.
    ``exact`` is :func:`enumerate_ensemble`'s result for the same net, ``x``
    and variant (its AM is used).
    """
    v = check_variant(variant)
    xs, _ = net._check_x(x)
    size = _check_chunk(chunk)
    if size is None:
        raise ValueError("chunk must be a positive integer; got None.")
    am = np.asarray(exact.arithmetic_mean, dtype=np.float64).reshape(-1)
    if am.size != xs.shape[0] * net.n_classes:
        raise ValueError("exact must be enumerate_ensemble()'s result for the same net and x.")
    tables = _probability_tables([net.keep_probs[i] for i in net.dropped_layers], net.dropped_sizes)
    sigma = np.zeros((am.size, am.size))
    fourth = 0.0
    for masks in mask_blocks(net.n_dropped, size):
        prob = _block_probabilities(masks, tables, net.dropped_sizes)
        d = np.exp(log_softmax(_logits_block(net, xs, masks, v))).reshape(len(masks), -1) - am
        # einsum, not a BLAS product: between _forward's threaded products, a small
        # threaded gemm here measured 50 times slower on a busy 2-core machine
        sigma += np.einsum("ki,kj->ij", d * prob[:, None], d, optimize=False)
        sq = (d * d).sum(axis=1)
        fourth += float(prob @ (sq * sq))
    return float(np.trace(sigma)), float((sigma * sigma).sum()), fourth


def mse_ratio_sd(moments: tuple[float, float, float], sample_sizes: Sequence[int]) -> NDArray[np.float64]:
    """Standard deviation of one run's ``||MC_T - AM||^2 / (sigma^2 / T)``, for each ``T``.

    ``moments`` is :func:`mc_error_moments`'s ``(tr Sigma, tr Sigma^2, E||d||^4)``.
    With ``S = d_1 + ... + d_T`` (independent draws, mean 0, covariance
    ``Sigma``), ``||S||^2 = sum_t ||d_t||^2 + sum_{t != t'} d_t . d_t'``; the two
    parts are uncorrelated, the first has variance ``T (E||d||^4 - (tr Sigma)^2)``
    and the second ``2 T (T - 1) tr Sigma^2``. The ratio is ``||S||^2 / (T tr
    Sigma)``, with expectation 1 and variance
    ``(E||d||^4 - (tr Sigma)^2 + 2 (T - 1) tr Sigma^2) / (T (tr Sigma)^2)``.

    >>> # one coordinate, d = +-1 with probability 1/2: ||S||^2 / T has variance 2 (T - 1) / T
    >>> mse_ratio_sd((1.0, 1.0, 1.0), [1, 2]) ** 2
    array([0., 1.])
    """
    tr, tr2, fourth = (float(m) for m in moments)
    if not (tr > 0 and tr2 > 0 and fourth >= 0):
        raise ValueError(f"moments must be (tr Sigma > 0, tr Sigma^2 > 0, E||d||^4 >= 0); got {moments!r}")
    t = np.asarray(sample_sizes, dtype=np.float64)
    var = (fourth - tr**2 + 2.0 * (t - 1.0) * tr2) / (t * tr**2)
    return np.sqrt(np.maximum(var, 0.0))
