"""Convert a Keras model's weights, penalties, constraints, initialisers between variants.

Notation: ``keep_prob`` is the paper's ``p`` (probability of KEEPING a unit);
Keras's ``rate`` is ``1 - p``. Every function here takes ``keep_prob`` or
reads ``rate`` off a dropout layer and says so.

The statement
-------------
A layer *consumes* dropped units when a dropout's output reaches its linear
part, ``z = W x + b``, through layers that commute with a positive rescaling.
The standard (paper's) net feeds it ``p`` times what the inverted (Keras) net
feeds it, at training time (``m*h`` vs ``m*h/p``) and at test time (``p*h``
vs ``h``). So, with the same masks, the two nets compute the same function
iff every consuming kernel satisfies

    ``W_std = W_inv / p``   (biases unchanged: ``b`` is added after ``W x``).

``W_tgt = s * W_src`` with ``s = 1/p`` (``'to_standard'``) or ``s = p``
(``'to_inverted'``); behind several dropouts in a row ``p`` is the product of
their keep probabilities.

Which layers are allowed, and why
---------------------------------
A tensor in the target net equals ``c`` times the source's (``c`` a positive
number per tensor, 1 for undropped tensors). The walk over the graph only
lets ``c`` pass where that is provably exact:

* dropouts (``keras.layers.Dropout`` and subclasses, ``StandardDropout``):
  ``c -> c * p`` (``'to_standard'``);
* consumers (``Dense``, ``EinsumDense``, ``Conv*``, ``Conv*Transpose``,
  ``DepthwiseConv*``: ``kernel``; ``SeparableConv*``: ``depthwise_kernel``):
  linear in the input, they absorb ``c`` into the kernel, ``c -> 1``;
* recurrent layers (``LSTM``, ``GRU``, ``SimpleRNN``): their pre-activations
  are ``x_t W + h_{t-1} W_r + b``, and only ``x_t`` carries ``c``, so the input
  ``kernel`` absorbs it (``W -> s W``, its optimizer mapped); the recurrent
  kernel and the bias are unchanged, ``c -> 1``;
* normalisations (chapter 10): the target reads ``t`` times the source's
  input (``t = 1/s``), and ``(t y - t mu) / sqrt(t**2 var + eps')`` equals
  ``(y - mu) / sqrt(var + eps)`` iff ``eps' = t**2 eps``; ``BatchNormalization``
  also maps its moving mean ``x t`` and moving variance ``x t**2`` (linear
  recursions of the batch statistics: the ratio holds at every step when it
  holds at the start, so their initialisers map alike), gamma, beta and the
  optimizer unchanged (``renorm=True`` is refused: its renormalisation
  statistics and the clipping of ``r`` and ``d`` are not mapped);
  ``LayerNormalization`` (also ``rms_scaling``),
  ``GroupNormalization`` and ``RMSNormalization``: the epsilon only;
  ``c -> 1``;
* positively homogeneous layers without an offset, ``f(c x) = c f(x)`` for
  ``c > 0``: reshaping, cropping, zero padding, up-sampling, max and average
  pooling, ``ReLU`` (no ``max_value``/``threshold``), ``LeakyReLU``,
  ``PReLU``, ``Activation`` in {relu, leaky_relu, linear}, ``GaussianDropout``
  (multiplicative noise), ``Identity``: ``c`` unchanged;
* merges: ``Add``, ``Subtract``, ``Average``, ``Maximum``, ``Minimum``,
  ``Concatenate`` if all inputs carry the same ``c``; ``Multiply`` and ``Dot``
  (not normalised) multiply the inputs' ``c``.

Everything else that receives ``c != 1`` is refused with the reason: a
non-homogeneous activation (``tanh(c x) != c tanh(x)``); ``UnitNormalization``
(its hard-coded ``1e-12`` clamp has no hyperparameter to map); additive
noise; a merge of a dropped with an undropped branch, unless the dropped
branch ends in a layer the producer-side map can scale (below); a layer shared
between a dropped and an undropped input; a dropped tensor that is a model
output. :attr:`Consumer.kind` says which map absorbed each factor.

Residual branches (chapter 8): where a merge (``Add``, ...) meets a dropped
and an undropped tensor, the dropout ``D`` feeding it is taken on the
producer side when ``D`` reads the output of a ``Dense``, ``EinsumDense``,
``Conv1D/2D/3D`` (linear or ReLU activation), ``BatchNormalization`` or
``LayerNormalization`` (with ``scale``) that nothing else reads and that is
called once, and whose output is not a model output: that layer's kernel
and bias (gamma and beta) are scaled by ``s``, so ``F'(x) = s F(x)``,
``D``'s output is the same tensor in both variants
(``m F(x) / p = m (F(x) / p)``), and ``c`` stays 1 after ``D``; its
optimizer, penalties, constraints and initialisers map like a consuming
kernel's (the gradients are ``1/s`` times the source's), and so does an L1/L2
``activity_regularizer`` on it (it penalises ``s F(x)``: ``L2`` ``lambda /
s**2``, ``L1`` ``lambda / s``; any other is refused). Per-sample
stochastic depth, ``Dropout(rate, noise_shape=(None, 1, ..., 1))``, is such
a dropout (EfficientNet's).

Attention dropout (chapter 8): ``MultiHeadAttention(dropout=r)`` drops its
attention probabilities, ``A m / p``, and its output projection reads
``einsum(A_dropped, V)`` linearly, so the output projection's kernel absorbs
the factor like a consuming kernel (``W_o -> s W_o``, bias unchanged, its
optimizer mapped); the layer is swapped for
:class:`dropout_lib.layers.StandardMultiHeadAttention` (the paper's dropout
inside) or back. Its query, key and value must be undropped (the softmax is
not homogeneous).

Hyperparameters tied to the consuming kernels map with the same ``s``
(derivations in each function): L2 penalty ``l2 / s**2`` (``l2 * p**2`` to
standard), L1 ``l1 / s``, max-norm ``c * s`` (``c / p``), an initialiser's
scale ``sigma * s`` (``sigma / p``). Optimizers: :mod:`dropout_lib.mapping`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import NDArray

from dropout_lib.layers import StandardDropout, StandardMultiHeadAttention
from dropout_lib.validation import (
    Direction,
    NoExactMapError,
    NotConvertibleError,
    check_direction,
    check_keep_prob,
)

__all__ = [
    "kernel_scale",
    "Consumer",
    "NotConvertibleError",
    "EquivariantMaxNorm",
    "consumer_kernels",
    "dropout_consumers",
    "converted_weights",
    "convert_weights",
    "map_l2",
    "map_l1",
    "map_max_norm",
    "map_regularizer",
    "map_constraint",
    "map_initializer",
    "ScaledInitializer",
]

L = keras.layers


def kernel_scale(keep_prob: float, direction: Direction) -> float:
    """Return ``s`` with ``W_target = s * W_source`` for a consuming kernel.

    ``s = 1/keep_prob`` for ``'to_standard'`` (``W_std = W_inv / p``) and
    ``s = keep_prob`` for ``'to_inverted'``. ``keep_prob`` is the keep
    probability ``p``, not Keras's ``rate = 1 - p``.

    Examples
    --------
    >>> kernel_scale(0.5, "to_standard"), kernel_scale(0.5, "to_inverted")
    (2.0, 0.5)
    """
    p = check_keep_prob(keep_prob)
    return 1.0 / p if check_direction(direction) == "to_standard" else p


def _keras_scalar(value: Any) -> float:
    """The value Keras computes with, ``ops.cast(value, 'float64')``.

    A Python float passes through float32 (0.1 -> 0.10000000149011612); a
    ``numpy.float64`` does not.
    """
    return float(ops.convert_to_numpy(ops.cast(value, "float64")))


# ----------------------------------------------------------- layer tables

_CONSUMER_KERNELS: dict[type, tuple[str, ...]] = {
    L.Dense: ("kernel",),
    L.EinsumDense: ("kernel",),
    L.Conv1D: ("kernel",),
    L.Conv2D: ("kernel",),
    L.Conv3D: ("kernel",),
    L.Conv1DTranspose: ("kernel",),
    L.Conv2DTranspose: ("kernel",),
    L.Conv3DTranspose: ("kernel",),
    L.DepthwiseConv1D: ("kernel",),
    L.DepthwiseConv2D: ("kernel",),
    # depthwise then pointwise, bias after both: scaling either kernel works;
    # the depthwise one is the one that touches the dropped input.
    L.SeparableConv1D: ("depthwise_kernel",),
    L.SeparableConv2D: ("depthwise_kernel",),
}

_HOMOGENEOUS: tuple[type, ...] = (
    L.Flatten,
    L.Reshape,
    L.Permute,
    L.RepeatVector,
    L.Identity,
    L.Cropping1D,
    L.Cropping2D,
    L.Cropping3D,
    L.ZeroPadding1D,
    L.ZeroPadding2D,
    L.ZeroPadding3D,
    L.UpSampling1D,
    L.UpSampling2D,
    L.UpSampling3D,
    L.MaxPooling1D,
    L.MaxPooling2D,
    L.MaxPooling3D,
    L.AveragePooling1D,
    L.AveragePooling2D,
    L.AveragePooling3D,
    L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D,
    L.GlobalMaxPooling3D,
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D,
    L.LeakyReLU,
    L.PReLU,
    L.GaussianDropout,
)

_SAME_SCALE_MERGES: tuple[type, ...] = (
    L.Add,
    L.Subtract,
    L.Average,
    L.Maximum,
    L.Minimum,
    L.Concatenate,
)

_EPSILON_NORMALISERS: tuple[type, ...] = (
    L.BatchNormalization,
    L.LayerNormalization,
    L.GroupNormalization,
    L.UnitNormalization,
) + ((L.RMSNormalization,) if hasattr(L, "RMSNormalization") else ())

#: Normalisations that absorb the factor by the epsilon map (chapter 10):
#: ``eps -> t**2 eps``; BatchNorm also its moving statistics (``x t``, ``x t**2``).
_EPSILON_MAPS: tuple[type, ...] = (
    L.BatchNormalization,
    L.LayerNormalization,
    L.GroupNormalization,
) + ((L.RMSNormalization,) if hasattr(L, "RMSNormalization") else ())

#: Recurrent layers whose input kernel absorbs the factor (the recurrent kernel
#: reads the state, which is the same in both variants).
_RNN_INPUT: tuple[type, ...] = (L.LSTM, L.GRU, L.SimpleRNN)

#: Attention layers whose output projection absorbs their attention dropout.
_ATTENTION: tuple[type, ...] = (L.MultiHeadAttention, StandardMultiHeadAttention)


def _rnns(layer: Any) -> tuple[Any, ...]:
    """The recurrent layers whose input kernels read ``layer``'s input (both of a Bidirectional)."""
    if type(layer) is L.Bidirectional:
        return (layer.forward_layer, layer.backward_layer)
    return (layer,)


def _is_rnn(layer: Any) -> bool:
    return type(layer) in _RNN_INPUT or (
        type(layer) is L.Bidirectional
        and all(type(rnn) in _RNN_INPUT for rnn in (layer.forward_layer, layer.backward_layer))
    )


#: What absorbed a dropout's factor (``Consumer.kind``).
KERNEL = "kernel"
RECURRENT_INPUT_KERNEL = "recurrent input kernel"
BATCH_NORMALIZATION = "batch normalization epsilon and moving statistics"
NORMALIZATION_EPSILON = "normalization epsilon"
PRODUCER = "producer"
ATTENTION_OUTPUT = "attention output projection"
#: Kinds whose variables are trained parameters (their optimizer is mapped).
KERNEL_KINDS = (KERNEL, RECURRENT_INPUT_KERNEL, PRODUCER, ATTENTION_OUTPUT)

#: Layers that can take a residual dropout's factor on the producer side:
#: their output is linear in (kernel, bias) or (gamma, beta), scaled together.
_PRODUCERS: dict[type, tuple[str, str]] = {
    L.Dense: ("kernel", "bias"),
    L.EinsumDense: ("kernel", "bias"),
    L.Conv1D: ("kernel", "bias"),
    L.Conv2D: ("kernel", "bias"),
    L.Conv3D: ("kernel", "bias"),
    L.BatchNormalization: ("gamma", "beta"),
    L.LayerNormalization: ("gamma", "beta"),
}


class _MergeRefusal(NotConvertibleError):
    """A merge of tensors with different factors; ``dropouts`` feed it."""

    def __init__(self, message: str, dropouts: frozenset[str]) -> None:
        super().__init__(message)
        self.dropouts = dropouts


# How a refusal ends: the model can always stay on its own variant, and the
# paper's variant runs in Keras unchanged (recipe.md, thm-rescaling-paper).
KEEP_THE_VARIANT = (
    "keep this model on its own dropout variant (the paper's dropout runs in Keras "
    "as keras.layers.Dropout followed by Rescaling(1 - rate): "
    "dropout_lib.recipe.paper_dropout)"
)

_HOMOGENEOUS_ACTIVATIONS = (
    keras.activations.relu,
    keras.activations.leaky_relu,
    keras.activations.linear,
)


def _is_dropout(layer: Any) -> bool:
    return isinstance(layer, (L.Dropout, StandardDropout))


def _variant(layer: Any) -> str:
    return "standard" if isinstance(layer, StandardDropout) else "inverted"


def _homogeneous(layer: Any) -> bool:
    if type(layer) in _HOMOGENEOUS:
        return True
    if type(layer) is L.ReLU:
        return layer.max_value is None and float(layer.threshold) == 0.0
    if type(layer) is L.Activation:
        return layer.activation in _HOMOGENEOUS_ACTIVATIONS
    return False


def _refusal(layer: Any, scale: float, dropouts: tuple[frozenset[str], ...] = ()) -> str:
    name = f"layer {layer.name!r} ({type(layer).__name__})"
    names = sorted(frozenset().union(*dropouts))
    source = f" The dropped tensor comes from dropout {', '.join(repr(n) for n in names)}." if names else ""
    head = f"{name} receives a dropped tensor (the two variants differ there by the factor {scale:.6g}) but "
    way_out = "Move the dropout so that a Dense/Conv layer consumes it directly (a different model), or "
    if isinstance(layer, L.UnitNormalization):
        why = (
            "it divides by max(||x||^2, 1e-12)^(1/2), with the 1e-12 hard-coded (no "
            "hyperparameter to map), so it is scale-invariant only where the norm is "
            "not clamped"
        )
    elif isinstance(layer, (L.Activation, L.ReLU)):
        why = (
            "its activation is not positively homogeneous (f(c x) != c f(x)); only "
            "relu without max_value/threshold, leaky_relu and linear commute with "
            "the scale"
        )
    elif isinstance(layer, L.GaussianNoise):
        why = "it adds noise, x + n, which does not scale with x"
    elif isinstance(layer, L.AlphaDropout):
        why = "AlphaDropout is affine (it sets dropped units to a constant), not linear"
    elif isinstance(layer, _SAME_SCALE_MERGES):
        why = (
            "it merges inputs that carry different factors (e.g. a dropped and an "
            "undropped branch), so no single kernel rescaling downstream fits both"
        )
        way_out = (
            "On a residual branch x + Dropout(F(x)) (stochastic depth included) the exact "
            "map is on the producer side: scale F's last kernel and bias (or its last "
            "normalisation's scale and offset) by the dropout's factor, with their "
            "optimizer maps (chapter 8). convert_model builds it where F ends in a "
            "single-use Dense, EinsumDense or Conv layer (linear or ReLU) or a "
            "BatchNormalization/LayerNormalization with a scale; here it does not apply "
            "(see below). Otherwise "
        )
    elif isinstance(layer, L.Dot):
        why = "a normalised Dot divides by norms (with an epsilon)"
    elif isinstance(layer, keras.Model):
        why = "it is a nested model; flatten it into the outer model to convert it"
    elif isinstance(layer, tuple(_CONSUMER_KERNELS)):
        why = "it uses LoRA or quantisation, whose kernel is not a single rescalable tensor"
    else:
        why = (
            "it is not known to commute with a positive rescaling of its input "
            "and has no kernel this module knows how to rescale"
        )
    return f"{head}{why}.{source} {way_out}{KEEP_THE_VARIANT}."


# -------------------------------------------------------------- the walk


@dataclass(frozen=True)
class Consumer:
    """A layer whose kernel(s) absorb the dropout factor.

    Attributes
    ----------
    layer
        The consuming layer.
    variables
        The kernel variable(s) to rescale: ``W_tgt = s * W_src``.
    keep_prob
        ``p``, the keep probability of the dropout feeding it (Keras's rate
        is ``1 - p``); the product of keep probabilities behind several
        dropouts. ``s = 1/p`` to standard, ``p`` to inverted.
    kind
        Which map absorbs the factor. ``'kernel'``: a Dense/Conv kernel,
        ``W -> s W``, its optimizer mapped. ``'recurrent input kernel'``: an
        LSTM/GRU/SimpleRNN's input ``kernel`` (``x_t W + h W_r + b``: only
        ``x_t`` carries the factor; the recurrent kernel and the bias stay),
        its optimizer mapped. ``'batch normalization epsilon and moving
        statistics'``: the layer reads ``t = 1/s`` times the source's input
        and normalises it, ``(t y - t mu) / sqrt(t**2 var + eps')`` equals the
        source's ``(y - mu) / sqrt(var + eps)`` iff ``eps' = t**2 eps``
        (chapter 10); the moving mean and variance, linear recursions of the
        batch statistics, map ``x t`` and ``x t**2`` with their initialisers;
        gamma, beta and the optimizer are unchanged. ``'normalization
        epsilon'``: LayerNormalization (also ``rms_scaling``),
        GroupNormalization, RMSNormalization: ``eps' = t**2 eps``, nothing
        else. ``'producer'``: on a residual branch ``x + Dropout(F(x))`` the
        layer that computes ``F``'s output (Dense/Conv: kernel and bias;
        BatchNorm/LayerNorm: gamma and beta) is scaled by ``s``, so that
        ``F'(x) = s F(x)`` and the dropout's output is the same in both
        variants (``m F(x) / p = m (F(x)/p)``, chapter 8); its gradients are
        ``1/s`` times the source's, so its optimizer is mapped like a kernel's.
        ``'attention output projection'``: a MultiHeadAttention's own
        attention dropout, absorbed by its output projection's kernel.
    dropouts
        The names of the dropout layers whose factor this layer absorbs.

    Examples
    --------
    >>> import keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.2),
    ...                           keras.layers.Dense(2, name="out")])
    >>> consumer = dropout_consumers(model)[0]
    >>> consumer.layer.name, round(consumer.keep_prob, 12), consumer.variables[0].name
    ('out', 0.8, 'kernel')
    """

    layer: keras.layers.Layer
    variables: tuple[Any, ...]
    keep_prob: float
    kind: str = KERNEL
    dropouts: tuple[str, ...] = ()

    def scales(self, direction: Direction) -> tuple[float, ...]:
        """The factor of each of :attr:`variables` in the target: ``v_tgt = factor * v_src``.

        Kernels (``kind`` ``'kernel'`` or ``'recurrent input kernel'``):
        ``s = kernel_scale(keep_prob, direction)`` (``1/p`` to standard). A
        BatchNormalization reads ``t = 1/s`` times the source's input (``p``
        times to standard), so its moving mean is ``t`` and its moving
        variance ``t**2`` times the source's.

        >>> import keras
        >>> bn = keras.layers.BatchNormalization()
        >>> bn.build((None, 2))
        >>> Consumer(bn, (bn.moving_mean, bn.moving_variance), 0.5, BATCH_NORMALIZATION).scales("to_standard")
        (0.5, 0.25)
        """
        s = kernel_scale(self.keep_prob, direction)
        if self.kind == BATCH_NORMALIZATION:
            return (1.0 / s, 1.0 / s**2)
        return (s,) * len(self.variables)


def consumer_kernels(layer: keras.layers.Layer) -> tuple[Any, ...]:
    """The kernel variable(s) of ``layer`` that absorb a rescaled input.

    Raises
    ------
    NotConvertibleError
        If ``layer`` is not a linear layer with a known kernel (exact class),
        is unbuilt, or uses LoRA or quantisation.

    Examples
    --------
    >>> import keras
    >>> layer = keras.layers.Dense(2)
    >>> layer.build((None, 3))
    >>> [v.name for v in consumer_kernels(layer)]
    ['kernel']
    """
    if _is_rnn(layer):
        if not layer.built:
            raise NotConvertibleError(f"layer {layer.name!r} is not built; build the model first.")
        return tuple(rnn.cell.kernel for rnn in _rnns(layer))
    names = _CONSUMER_KERNELS.get(type(layer))
    if names is None:
        raise NotConvertibleError(
            f"layer {layer.name!r} ({type(layer).__name__}) is not a supported "
            "consumer; supported: " + ", ".join(c.__name__ for c in _CONSUMER_KERNELS)
        )
    if not layer.built:
        raise NotConvertibleError(f"layer {layer.name!r} is not built; build the model first.")
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        raise NotConvertibleError(_refusal(layer, float("nan")))
    return tuple(getattr(layer, n) for n in names)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12)


class _Walk:
    """Propagate the per-tensor keep factor through a model graph."""

    def __init__(self, producers: Mapping[str, Any] | None = None) -> None:
        self.producers = dict(producers or {})  # dropout name -> its producer layer
        self.produced: list[Consumer] = []
        self.calls: dict[int, tuple[keras.layers.Layer, list[float]]] = {}
        self.order: list[int] = []
        self.feeds: dict[int, set[str]] = {}
        self._origins: tuple[frozenset[str], ...] = ()

    def origin_out(self, layer: Any, origins: list[frozenset[str]], out: float) -> frozenset[str]:
        """The names of the dropouts whose factor the layer's output carries."""
        if _close(out, 1.0):
            return frozenset()
        names = frozenset().union(*origins)
        return names | {layer.name} if _is_dropout(layer) else names

    def layer_out(self, layer: Any, ins: list[float], origins: list[frozenset[str]] | None = None) -> float:
        """The factor of the layer's outputs given its inputs' factors."""
        self._origins = tuple(origins or ())
        out = self._layer_out(layer, ins)
        if not _close(out, 1.0) and getattr(layer, "activity_regularizer", None) is not None:
            raise NotConvertibleError(
                f"layer {layer.name!r} ({type(layer).__name__}) has an activity regularizer "
                f"on a dropped tensor (the two variants differ there by the factor {out:.6g}), "
                "and a penalty on the activations changes with their scale: remove it, or "
                "put it on a layer after the consuming Dense/Conv layer."
            )
        return out

    def _layer_out(self, layer: Any, ins: list[float]) -> float:
        if isinstance(layer, L.InputLayer):
            return 1.0
        if _is_dropout(layer):
            (c,) = ins
            if layer.name in self.producers:
                producer = self.producers[layer.name]
                if not _close(c, 1.0) or any(
                    not _close(f, 1.0) for f in self.calls.get(id(producer), (0, []))[1]
                ):
                    raise NotConvertibleError(
                        f"dropout {layer.name!r} sits on a residual branch whose last layer "
                        f"{producer.name!r} already reads a dropped tensor: the producer-side map "
                        "would scale a layer another map scales too (the two maps compose, but "
                        "not in one optimizer map). Put a layer between them (a different model), "
                        f"or {KEEP_THE_VARIANT}."
                    )
                names = _PRODUCERS[type(producer)]
                variables = tuple(
                    getattr(producer, n) for n in names if getattr(producer, n, None) is not None
                )
                p = 1.0 - float(layer.rate)
                self.produced.append(Consumer(producer, variables, p, PRODUCER, (layer.name,)))
                return c
            return c * (1.0 - float(layer.rate))
        if type(layer) in _CONSUMER_KERNELS:
            if not all(_close(c, ins[0]) for c in ins):
                raise NotConvertibleError(_refusal(layer, ins[0], self._origins))
            self._record(layer, ins[0])
            if not _close(ins[0], 1.0):
                consumer_kernels(layer)  # LoRA / quantisation / unbuilt checks
            return 1.0
        if _is_rnn(layer):
            # call(sequences, initial_state=..., mask=...): only the sequence may be dropped
            if not all(_close(c, 1.0) for c in ins[1:]):
                raise NotConvertibleError(
                    f"layer {layer.name!r} ({type(layer).__name__}) receives a dropped "
                    "initial state or mask: only its input sequence's factor can be "
                    "absorbed (by its input kernel). Drop the sequence instead (a different "
                    f"model), or {KEEP_THE_VARIANT}."
                )
            self._record(layer, ins[0])
            return 1.0
        if type(layer) in _ATTENTION and float(layer.dropout) > 0:
            if not all(_close(c, 1.0) for c in ins):
                raise NotConvertibleError(
                    f"layer {layer.name!r} ({type(layer).__name__}) reads a dropped query, key "
                    "or value: its softmax is not homogeneous, so no map passes the factor. "
                    f"{KEEP_THE_VARIANT[0].upper()}{KEEP_THE_VARIANT[1:]}."
                )
            # its own dropout on the attention probabilities: the output projection absorbs it
            if id(layer) not in self.calls:
                self.calls[id(layer)] = (layer, [])
                self.order.append(id(layer))
            self.calls[id(layer)][1].append(1.0 - float(layer.dropout))
            self.feeds.setdefault(id(layer), set()).add(f"{layer.name}/attention_dropout")
            return 1.0
        if type(layer) in _EPSILON_MAPS and not _close(ins[0], 1.0):
            (c,) = ins
            if getattr(layer, "renorm", False):
                names = sorted(frozenset().union(*self._origins))
                raise NotConvertibleError(
                    f"layer {layer.name!r} (BatchNormalization) reads the dropped tensor of "
                    f"dropout {', '.join(repr(n) for n in names)} (the two variants differ there "
                    f"by the factor {c:.6g}) and uses batch renormalization (renorm=True): its "
                    "renorm_mean, renorm_stddev and moving_stddev statistics, and its clipping "
                    "of r and d, are not mapped by convert_model, so the converted model would "
                    "train differently. Use renorm=False (then the epsilon and moving-statistics "
                    "map is exact; a different model), put a Dense/Conv layer between the dropout "
                    f"and the normalisation (a different model), or {KEEP_THE_VARIANT}."
                )
            self._record(layer, c)
            return 1.0
        if all(_close(c, 1.0) for c in ins):
            if isinstance(layer, keras.Model) and any(
                _is_dropout(sub) for sub in layer._flatten_layers(include_self=False)
            ):
                raise NotConvertibleError(_refusal(layer, 1.0))
            return 1.0
        if _homogeneous(layer):
            (c,) = ins
            return c
        if type(layer) in _SAME_SCALE_MERGES and all(_close(c, ins[0]) for c in ins):
            return ins[0]
        if type(layer) is L.Multiply or (type(layer) is L.Dot and not layer.normalize):
            return math.prod(ins)
        worst = next(c for c in ins if not _close(c, 1.0))
        if type(layer) in _SAME_SCALE_MERGES:
            raise _MergeRefusal(_refusal(layer, worst, self._origins), frozenset().union(*self._origins))
        raise NotConvertibleError(_refusal(layer, worst, self._origins))

    def _record(self, layer: Any, c: float) -> None:
        if id(layer) not in self.calls:
            self.calls[id(layer)] = (layer, [])
            self.order.append(id(layer))
        self.calls[id(layer)][1].append(c)
        self.feeds.setdefault(id(layer), set()).update(*self._origins)

    def consumers(self) -> list[Consumer]:
        out = []
        for key in self.order:
            layer, factors = self.calls[key]
            if any(_close(c, 1.0) for c in factors) and not all(_close(c, 1.0) for c in factors):
                raise NotConvertibleError(
                    f"layer {layer.name!r} is called on a dropped input and on an "
                    "undropped one: its kernel is shared, and no single rescaling "
                    "serves both calls (no consumer-side map exists). Rescale the "
                    "dropped tensor's producer by hand (chapter 7), untie the layer (a "
                    f"different model), or {KEEP_THE_VARIANT}."
                )
            if not all(_close(c, factors[0]) for c in factors):
                raise NotConvertibleError(
                    f"layer {layer.name!r} is called on inputs behind different "
                    f"dropout keep probabilities {factors}: its shared kernel cannot "
                    "be rescaled for all of them."
                )
            if not _close(factors[0], 1.0):
                dropouts = tuple(sorted(self.feeds.get(key, ())))
                if isinstance(layer, L.BatchNormalization):
                    variables = (layer.moving_mean, layer.moving_variance)
                    out.append(Consumer(layer, variables, factors[0], BATCH_NORMALIZATION, dropouts))
                elif type(layer) in _EPSILON_MAPS:
                    out.append(Consumer(layer, (), factors[0], NORMALIZATION_EPSILON, dropouts))
                elif type(layer) in _ATTENTION:
                    variables = (layer._output_dense.kernel,)
                    out.append(Consumer(layer, variables, factors[0], ATTENTION_OUTPUT, dropouts))
                elif _is_rnn(layer):
                    variables = consumer_kernels(layer)
                    out.append(Consumer(layer, variables, factors[0], RECURRENT_INPUT_KERNEL, dropouts))
                else:
                    out.append(Consumer(layer, consumer_kernels(layer), factors[0], KERNEL, dropouts))
        return self.produced + out


def _check_outputs(factors: list[float], origins: list[frozenset[str]] | None = None) -> None:
    for c, names in zip(factors, origins or [frozenset()] * len(factors)):
        if not _close(c, 1.0):
            source = f" (behind dropout {', '.join(repr(n) for n in sorted(names))})" if names else ""
            raise NotConvertibleError(
                f"a model output is a dropped tensor{source} that no Dense/Conv layer "
                f"consumes: the two variants' outputs differ by the factor {c:.6g} "
                "and there is no kernel to absorb it. End the model with a "
                f"consuming layer after the last dropout, or {KEEP_THE_VARIANT}."
            )


def dropout_consumers(model: keras.Model) -> list[Consumer]:
    """Find every layer whose kernel must be rescaled between the variants.

    Walks a built ``keras.Sequential`` or functional ``keras.Model`` (the
    graph of inbound nodes), tracking per tensor the factor between the two
    variants (``keep_prob`` products). Works on either twin: the answer does
    not depend on which dropout class the model uses.

    Returns
    -------
    list of Consumer
        In graph order; empty if the model has no dropout.

    Raises
    ------
    NotConvertibleError
        If a dropped tensor reaches a layer that cannot pass or absorb the
        factor (module docstring), or a model output.
    TypeError
        For subclassed models, whose graph cannot be read: pass
        ``consuming_layers`` and ``keep_prob`` to the functions that take them.

    Examples
    --------
    >>> import keras
    >>> x = keras.Input((4,))
    >>> h = keras.layers.Dense(4, activation="relu", name="hidden")(keras.layers.Dropout(0.5)(x))
    >>> y = keras.layers.Dense(2, name="out")(keras.layers.ReLU()(keras.layers.Dropout(0.5)(h)))
    >>> [(c.layer.name, c.keep_prob) for c in dropout_consumers(keras.Model(x, y))]
    [('hidden', 0.5), ('out', 0.5)]
    """
    if not model.built:
        raise NotConvertibleError(f"model {model.name!r} is not built; call it on data or give it an Input.")
    producers: dict[str, Any] = {}
    while True:
        try:
            return _walk_graph(model, producers)
        except _MergeRefusal as refusal:
            # a residual merge: take the dropouts feeding it on the producer side, where they can be
            new = {}
            for name in sorted(refusal.dropouts - set(producers)):
                producer, why = _producer(model, name)
                if producer is None:
                    raise NotConvertibleError(
                        f"{refusal} The producer-side map does not apply: {why}"
                    ) from None
                new[name] = producer
            if not new:
                raise
            producers.update(new)


def _producer(model: keras.Model, dropout_name: str) -> tuple[Any, str]:
    """The layer whose output a dropout reads, if the producer-side map can scale it."""
    dropout = model.get_layer(dropout_name)
    if len(dropout._inbound_nodes) != 1:
        return None, f"dropout {dropout_name!r} is called more than once."
    (tensor,) = dropout._inbound_nodes[0].input_tensors
    producer = tensor._keras_history.operation
    where = f"dropout {dropout_name!r} reads the output of {producer.name!r} ({type(producer).__name__}), "
    if type(producer) not in _PRODUCERS:
        return None, where + "which is not a Dense/Conv/BatchNormalization/LayerNormalization layer."
    if len(producer._inbound_nodes) != 1:
        return None, where + "a layer called more than once (its weights serve other calls)."
    readers = (
        [
            node
            for depth in model._nodes_by_depth.values()
            for node in depth
            if any(t is tensor for t in node.input_tensors)
        ]
        if hasattr(model, "_nodes_by_depth")
        else [None]
    )
    if len(readers) != 1:
        return None, where + "whose output other layers read too."
    if any(t is tensor for t in getattr(model, "outputs", None) or ()):
        return None, where + (
            "whose output is also a model output: the map scales that output by s, so the "
            "converted model's output would differ from the source's. Do not expose F's "
            "output (a different model), or keep this model on its own variant."
        )
    activation = getattr(producer, "activation", keras.activations.linear)
    if activation not in _HOMOGENEOUS_ACTIVATIONS:
        return None, where + "whose activation is not positively homogeneous."
    if isinstance(producer, (L.BatchNormalization, L.LayerNormalization)) and not producer.scale:
        return None, where + "a normalisation without a scale (gamma) to carry the factor."
    if getattr(producer, "lora_enabled", False) or getattr(producer, "quantization_mode", None):
        return None, where + "which uses LoRA or quantisation."
    return producer, ""


def _walk_graph(model: keras.Model, producers: Mapping[str, Any]) -> list[Consumer]:
    walk = _Walk(producers)
    if isinstance(model, keras.Sequential):
        c, origin = 1.0, frozenset()
        for layer in model.layers:
            c_in = c
            c = walk.layer_out(layer, [c_in], [origin])
            origin = walk.origin_out(layer, [origin], c)
        _check_outputs([c], [origin])
        return walk.consumers()
    if not hasattr(model, "_nodes_by_depth"):
        raise TypeError(
            f"{type(model).__name__} is a subclassed model: its graph cannot be read. "
            "Rebuild it as a Sequential or functional model, or pass the consuming "
            "layers and keep_prob explicitly."
        )
    factor: dict[int, float] = {}
    origin: dict[int, frozenset[str]] = {}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            ins = [factor.get(id(t), 1.0) for t in node.input_tensors]
            origins = [origin.get(id(t), frozenset()) for t in node.input_tensors]
            layer = node.operation
            if not isinstance(layer, keras.layers.Layer):
                if all(_close(c, 1.0) for c in ins):
                    out = 1.0
                else:
                    raise NotConvertibleError(
                        f"operation {getattr(layer, 'name', layer)!r} "
                        f"({type(layer).__name__}) receives a dropped tensor; only "
                        "known Keras layers are allowed on a dropped path."
                    )
            else:
                out = walk.layer_out(layer, ins or [1.0], origins)
            for t in node.outputs:
                factor[id(t)] = out
                origin[id(t)] = walk.origin_out(layer, origins, out)
    _check_outputs(
        [factor.get(id(t), 1.0) for t in model.outputs],
        [origin.get(id(t), frozenset()) for t in model.outputs],
    )
    return walk.consumers()


# --------------------------------------------------------- the weights


def converted_weights(model: keras.Model, direction: Direction) -> list[NDArray]:
    """``model.get_weights()`` with every consuming kernel rescaled for the other variant.

    ``'to_standard'``: ``model`` uses ``keras.layers.Dropout``; kernels become
    ``W / p``. ``'to_inverted'``: ``model`` uses the paper's dropout; kernels
    become ``p * W``. Biases and all other weights are copied unchanged.
    Load the result with ``twin.set_weights(...)``.

    Examples
    --------
    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dropout(0.5),
    ...                           keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="ones")])
    >>> [w.ravel().tolist() for w in converted_weights(model, "to_standard")]   # W / p, b unchanged
    [[2.0, 2.0], [1.0]]
    """
    check_direction(direction)
    scale: dict[int, float] = {}
    for consumer in dropout_consumers(model):
        for v, s in zip(consumer.variables, consumer.scales(direction)):
            scale[id(v)] = s
    return [w * scale[id(v)] if id(v) in scale else w for v, w in zip(model.weights, model.get_weights())]


def _dropouts(model: keras.Model) -> list[Any]:
    return [layer for layer in model._flatten_layers(include_self=False) if _is_dropout(layer)]


def convert_weights(model_src: keras.Model, model_dst: keras.Model, direction: Direction) -> None:
    """Set ``model_dst``'s weights so it computes ``model_src``'s function in the other variant.

    Parameters
    ----------
    model_src, model_dst
        Twins built the same way, except that ``model_src`` uses one dropout
        variant and ``model_dst`` the other, with the same Keras ``rate``
        (drop probability ``1 - p``) at each position.
    direction
        ``'to_standard'``: ``model_src`` uses ``keras.layers.Dropout``,
        ``model_dst`` ``StandardDropout``; ``'to_inverted'``: the reverse.

    Notes
    -----
    Only weights change. Regularizers, constraints and initialisers of the
    consuming kernels are the twin's own: build the twin with
    :func:`map_regularizer`, :func:`map_constraint`, :func:`map_initializer`
    for the two nets to train alike (and an optimizer from
    :func:`dropout_lib.mapping.mapped_multi_optimizer`).

    Raises
    ------
    ValueError
        If the twins do not match (layer classes, rates, weight shapes) or a
        dropout has the wrong variant for ``direction``.
    NotConvertibleError
        If the graph admits no exact conversion (see :func:`dropout_consumers`).

    Examples
    --------
    >>> import keras, numpy as np
    >>> from dropout_lib.layers import StandardDropout
    >>> inv = keras.Sequential([keras.Input((2,)), keras.layers.Dropout(0.5),
    ...                         keras.layers.Dense(1, kernel_initializer="ones")])
    >>> std = keras.Sequential([keras.Input((2,)), StandardDropout(0.5), keras.layers.Dense(1)])
    >>> convert_weights(inv, std, "to_standard")
    >>> std.layers[1].kernel.numpy().ravel().tolist()
    [2.0, 2.0]
    """
    check_direction(direction)
    want_src, want_dst = ("inverted", "standard") if direction == "to_standard" else ("standard", "inverted")
    pairs = ((model_src, want_src, "model_src"), (model_dst, want_dst, "model_dst"))
    for model, want, role in pairs:
        for layer in _dropouts(model):
            if _variant(layer) != want:
                raise ValueError(
                    f"{role} has {_variant(layer)} dropout {layer.name!r} "
                    f"({type(layer).__name__}), but direction={direction!r} needs "
                    f"{want} dropout there (keras.layers.Dropout is inverted, "
                    "dropout_lib.layers.StandardDropout is standard)."
                )
    layers_src = model_src._flatten_layers(include_self=False)
    layers_dst = model_dst._flatten_layers(include_self=False)
    if len(layers_src) != len(layers_dst):
        raise ValueError(
            f"the twins differ: {len(layers_src)} layers in model_src, {len(layers_dst)} in model_dst."
        )
    for a, b in zip(layers_src, layers_dst):
        if _is_dropout(a) and _is_dropout(b):
            if not math.isclose(float(a.rate), float(b.rate), rel_tol=0, abs_tol=1e-15):
                raise ValueError(
                    f"dropout {a.name!r} has rate {a.rate} but its twin {b.name!r} "
                    f"has rate {b.rate}; rate is Keras's DROP probability (1 - p) "
                    "and must be equal in both."
                )
        elif type(a) is not type(b) and {type(a), type(b)} != set(_ATTENTION):
            raise ValueError(
                f"the twins differ: layer {a.name!r} is {type(a).__name__} in "
                f"model_src but {b.name!r} is {type(b).__name__} in model_dst."
            )
    weights = converted_weights(model_src, direction)
    if len(weights) != len(model_dst.weights) or any(
        tuple(w.shape) != tuple(v.shape) for w, v in zip(weights, model_dst.weights)
    ):
        raise ValueError("the twins' weights differ in number or shape.")
    src_pos = [layers_src.index(c.layer) for c in dropout_consumers(model_src)]
    dst_pos = [layers_dst.index(c.layer) for c in dropout_consumers(model_dst)]
    if src_pos != dst_pos:
        raise ValueError("the twins' graphs differ: their consuming layers do not match.")
    model_dst.set_weights(weights)


# ------------------------------------------------ penalties and constraints


def map_l2(l2: float, keep_prob: float, direction: Direction) -> float:
    """Map the factor of an L2 penalty ``l2 * ||W||^2`` on a consuming kernel.

    ``l2' * ||s W||^2 = l2 * ||W||^2`` iff ``l2' = l2 / s**2``: ``l2 * p**2``
    to standard, ``l2 / p**2`` to inverted. The penalty's gradient
    ``2 l2' s W = (2 l2 W) / s`` then rescales like the data gradient.
    ``keep_prob`` is ``p``, not Keras's ``rate``.

    Examples
    --------
    >>> map_l2(1e-4, 0.5, "to_standard")      # l2 * p**2
    2.5e-05
    """
    return float(l2) / kernel_scale(keep_prob, direction) ** 2


def map_l1(l1: float, keep_prob: float, direction: Direction) -> float:
    """Map the factor of an L1 penalty ``l1 * sum|W|``: ``l1 / s`` (``l1 * p`` to standard).

    Examples
    --------
    >>> map_l1(1e-4, 0.5, "to_standard")      # l1 * p
    5e-05
    """
    return float(l1) / kernel_scale(keep_prob, direction)


def map_max_norm(max_value: float, keep_prob: float, direction: Direction) -> float:
    """Map a max-norm bound ``||w|| <= c`` on a consuming kernel: ``c * s`` (``c / p`` to standard).

    ``||s w|| <= s c`` iff ``||w|| <= c``, and the projection
    ``w * min(1, c/||w||)`` commutes with the scale (:class:`EquivariantMaxNorm`).

    Examples
    --------
    >>> map_max_norm(3.0, 0.5, "to_standard")  # c / p
    6.0
    """
    if not (isinstance(max_value, (int, float)) and max_value > 0):
        raise ValueError(f"max_value must be a positive number; got {max_value!r}.")
    return float(max_value) * kernel_scale(keep_prob, direction)


def _exact(value: Any, factor: float) -> np.float64:
    # Keras regularizers multiply by ops.cast(self.l2, x.dtype): a Python
    # float goes through float32 there, a numpy.float64 does not.
    return np.float64(_keras_scalar(value) * factor)


def map_regularizer(regularizer: Any, keep_prob: float, direction: Direction) -> Any:
    """Map a kernel regularizer of a consuming layer (``None`` maps to ``None``).

    ``L2(l2) -> L2(l2 / s**2)``, ``L1(l1) -> L1(l1 / s)``, ``L1L2`` both;
    ``s = 1/p`` to standard (so ``l2 * p**2``), ``p`` to inverted. The factors
    are stored as ``numpy.float64`` so the float64 penalty is exact (of the
    factor Keras computes with: a Python float passes through float32). The
    result remembers its source: mapping it back (``s`` inverse) returns the
    source regulariser itself, the value the user gave, not
    ``0.10000000149011612`` for ``0.1`` (the two penalties agree to float64
    rounding).

    Raises
    ------
    NoExactMapError
        For any other regularizer (no map derived).

    Examples
    --------
    >>> import keras
    >>> float(map_regularizer(keras.regularizers.L2(0.5), 0.5, "to_standard").l2)   # 0.5 * p**2
    0.125
    """
    s = kernel_scale(keep_prob, direction)
    if regularizer is None:
        return None
    if isinstance(regularizer, str):
        regularizer = keras.regularizers.get(regularizer)
    origin = getattr(regularizer, "_dropout_lib_mapped_from", None)
    if origin is not None and math.isclose(origin[1] * s, 1.0, rel_tol=1e-12):
        return origin[0]  # the inverse map of a map: the regulariser the user gave
    kind = type(regularizer)
    if kind is keras.regularizers.L2:
        new = keras.regularizers.L2(map_l2(regularizer.l2, keep_prob, direction))
        new.l2 = _exact(regularizer.l2, 1.0 / s**2)
    elif kind is keras.regularizers.L1:
        new = keras.regularizers.L1(map_l1(regularizer.l1, keep_prob, direction))
        new.l1 = _exact(regularizer.l1, 1.0 / s)
    elif kind is keras.regularizers.L1L2:
        new = keras.regularizers.L1L2(
            l1=map_l1(regularizer.l1, keep_prob, direction),
            l2=map_l2(regularizer.l2, keep_prob, direction),
        )
        new.l1 = _exact(regularizer.l1, 1.0 / s)
        new.l2 = _exact(regularizer.l2, 1.0 / s**2)
    else:
        raise NoExactMapError(f"no map derived for the regularizer {kind.__name__}; supported: L1, L2, L1L2.")
    new._dropout_lib_mapped_from = (regularizer, s)
    return new


@keras.saving.register_keras_serializable(package="dropout_lib")
class EquivariantMaxNorm(keras.constraints.Constraint):
    """Max-norm projection ``w * min(1, c / ||w||)`` without an epsilon.

    Parameters
    ----------
    max_value
        The bound ``c`` on the norm of each slice along ``axis``.
    axis
        As ``keras.constraints.MaxNorm``: 0 constrains each column of a
        Dense kernel (the weights into one unit).

    Notes
    -----
    Unlike ``keras.constraints.MaxNorm``, which returns
    ``w * clip(||w||, 0, c) / (1e-7 + ||w||)`` and so shrinks every slice a
    little on every step, this leaves slices with ``||w|| <= c`` untouched
    and satisfies ``EquivariantMaxNorm(s c)(s w) = s EquivariantMaxNorm(c)(w)``
    exactly, which the dropout map needs. A zero slice stays zero
    (``c / 0 = inf``, ``min(1, inf) = 1``).

    Examples
    --------
    >>> import numpy as np
    >>> w = np.array([[3.0], [4.0]])                         # one column of norm 5
    >>> EquivariantMaxNorm(2.5)(w).numpy().ravel().tolist()   # projected onto norm 2.5
    [1.5, 2.0]
    """

    def __init__(self, max_value: float = 2.0, axis: int | tuple[int, ...] = 0) -> None:
        if not (isinstance(max_value, (int, float)) and max_value > 0):
            raise ValueError(f"max_value must be a positive number; got {max_value!r}.")
        self.max_value = float(max_value)
        self.axis = axis

    def __call__(self, w: Any) -> Any:
        w = ops.convert_to_tensor(w)
        norms = ops.sqrt(ops.sum(ops.square(w), axis=self.axis, keepdims=True))
        return w * ops.minimum(1.0, ops.divide(self.max_value, norms))

    def get_config(self) -> dict[str, Any]:
        return {"max_value": self.max_value, "axis": self.axis}


def map_constraint(constraint: Any, keep_prob: float, direction: Direction) -> Any:
    """Map a kernel constraint of a consuming layer (``None`` maps to ``None``).

    ``EquivariantMaxNorm(c) -> EquivariantMaxNorm(c * s)`` (``c / p`` to
    standard); ``NonNeg`` is unchanged (the sign is scale-free).

    Raises
    ------
    NoExactMapError
        For ``keras.constraints.MaxNorm``: its ``1e-7`` in
        ``w * clip(n, 0, c) / (1e-7 + n)`` does not scale with ``w``, so the
        mapped constraint differs by a relative ``~1e-7 / ||w||`` per step;
        use :class:`EquivariantMaxNorm`. Also for ``UnitNorm``/``MinMaxNorm``
        (they fix the norm, or carry the same epsilon) and unknown constraints.

    Examples
    --------
    >>> map_constraint(EquivariantMaxNorm(2.0), 0.5, "to_standard").max_value   # c / p
    4.0
    """
    s = kernel_scale(keep_prob, direction)
    if constraint is None:
        return None
    if isinstance(constraint, str):
        constraint = keras.constraints.get(constraint)
    kind = type(constraint)
    if kind is EquivariantMaxNorm:
        return EquivariantMaxNorm(constraint.max_value * s, axis=constraint.axis)
    if kind is keras.constraints.NonNeg:
        return keras.constraints.NonNeg()
    if kind is keras.constraints.MaxNorm:
        raise NoExactMapError(
            "keras.constraints.MaxNorm computes w * clip(||w||, 0, c) / (epsilon + "
            "||w||) with epsilon = keras.config.epsilon() (1e-7), which does not "
            "scale with w: MaxNorm(c*s)(s*w) != s*MaxNorm(c)(w) by a relative "
            "~1e-7/||w|| per step (and it shrinks every column a little on every "
            "step, even within the bound). Use "
            "dropout_lib.conversion.EquivariantMaxNorm(c) in both nets; it maps "
            "exactly with max_value * s."
        )
    raise NoExactMapError(
        f"no exact map for the constraint {kind.__name__}: supported are "
        "EquivariantMaxNorm and NonNeg (UnitNorm fixes the norm, which a rescaled "
        "kernel cannot keep; MinMaxNorm carries MaxNorm's epsilon)."
    )


# ------------------------------------------------------------ initialisers


@keras.saving.register_keras_serializable(package="dropout_lib")
class ScaledInitializer(keras.initializers.Initializer):
    """Draw ``factor * base(shape, dtype)``.

    Parameters
    ----------
    base
        Any Keras initializer (object, name or config).
    factor
        Positive multiplier ``s``.

    Notes
    -----
    ``ScaledInitializer(RandomNormal(mean, sigma), s)`` is ``N(s*mean,
    (s*sigma)**2)``; a ``VarianceScaling(scale)`` becomes
    ``VarianceScaling(scale * s**2)`` in distribution. Multiplying the draws,
    rather than rebuilding the initializer with scaled parameters, keeps a
    seeded twin draw-for-draw equal to ``s`` times the source: Keras passes
    some distribution parameters through float32 (``tf.cast`` of the uniform
    bounds), which would put a relative 1e-8 between the two draws.

    Examples
    --------
    >>> import keras
    >>> init = ScaledInitializer(keras.initializers.Constant(3.0), 2.0)
    >>> init((2,)).numpy().tolist()
    [6.0, 6.0]
    """

    def __init__(self, base: Any, factor: float) -> None:
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise ValueError(f"factor must be a positive finite number; got {factor!r}.")
        self.base = keras.initializers.get(base)
        self.factor = float(factor)

    def __call__(self, shape: Any, dtype: Any = None) -> Any:
        return ops.multiply(self.base(shape, dtype=dtype), self.factor)

    def get_config(self) -> dict[str, Any]:
        return {"base": keras.initializers.serialize(self.base), "factor": self.factor}


_I = keras.initializers


def _seed(initializer: Any) -> int | None:
    """The integer seed a random initializer draws with (``None`` means a seed generator)."""
    seed = getattr(initializer, "seed", None)
    return seed if isinstance(seed, int) else None


def _plain_initializer(initializer: Any, s: float, shape: Any) -> Any:
    """A plain Keras initializer drawing ``s`` times ``initializer``'s draws, or ``None``.

    Parameters that Keras passes through ``ops.cast`` (a constant, uniform
    bounds) are stored as ``numpy.float64`` of the value Keras uses, so the
    float64 draws stay exact in memory.
    """
    kind = type(initializer)
    if kind is _I.Zeros:
        return _I.Zeros()
    if kind is _I.Ones:
        return _I.Constant(np.float64(s))
    if kind is _I.Constant and np.ndim(initializer.value) == 0:
        return _I.Constant(_exact(initializer.value, s))
    seed = _seed(initializer)
    if seed is None:
        return None
    if kind in (_I.RandomNormal, _I.TruncatedNormal):
        return kind(mean=float(initializer.mean) * s, stddev=float(initializer.stddev) * s, seed=seed)
    if kind is _I.RandomUniform:
        return _I.RandomUniform(_exact(initializer.minval, s), _exact(initializer.maxval, s), seed=seed)
    if kind is _I.Orthogonal:
        return _I.Orthogonal(gain=float(initializer.gain) * s, seed=seed)
    if isinstance(initializer, _I.VarianceScaling) and kind.__module__.startswith("keras.src."):
        # Glorot*, He*, Lecun* are VarianceScaling with fixed arguments:
        # std or limit ~ sqrt(scale), so scale * s**2 scales the draws by s.
        if initializer.distribution != "uniform":
            return _I.VarianceScaling(
                scale=float(initializer.scale) * s**2,
                mode=initializer.mode,
                distribution=initializer.distribution,
                seed=seed,
            )
        if shape is None:
            return None
        # limit = sqrt(3 scale / fan), which Keras passes through ops.cast: the
        # bounds it uses, times s, as a RandomUniform with float64 bounds.
        from keras.src.initializers.random_initializers import compute_fans

        fan_in, fan_out = compute_fans(tuple(shape))
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[initializer.mode]
        limit = math.sqrt(3.0 * float(initializer.scale) / max(1.0, fan))
        return _I.RandomUniform(_exact(-limit, s), _exact(limit, s), seed=seed)
    return None


def map_initializer(initializer: Any, keep_prob: float, direction: Direction, *, shape: Any = None) -> Any:
    """Map a consuming kernel's initialiser: ``sigma -> sigma * s`` (``sigma / p`` to standard).

    Returns a plain Keras initializer whose draws are ``s`` times the
    source's (same seed: the same draws, scaled, to float64 rounding), so
    its distribution is the source's with every scale parameter times ``s``:

    ============================  ==========================================
    source                        mapped (``s = 1/p`` to standard, ``p`` to inverted)
    ============================  ==========================================
    ``RandomNormal``,             ``mean * s``, ``stddev * s``
    ``TruncatedNormal``
    ``RandomUniform``             ``minval * s``, ``maxval * s``
    ``VarianceScaling`` normal    ``scale * s**2`` (``He``/``Lecun``/``Glorot``
    kinds                         normal included)
    ``VarianceScaling`` uniform   ``RandomUniform(-limit * s, limit * s)``,
    (``GlorotUniform``, ...)      ``limit = sqrt(3 scale / fan)`` for ``shape``
    ``Orthogonal``                ``gain * s``
    ``Zeros``, ``Ones``,          ``Zeros``; ``Constant(s)``; ``value * s``
    ``Constant``
    ============================  ==========================================

    Keras passes a constant and uniform bounds through ``ops.cast``, which
    rounds a Python float to float32: the mapped ones are stored as
    ``numpy.float64`` (exact draws in memory); a saved model's config holds
    them as Python floats, so a loaded model re-initialises within float32
    rounding of those parameters (relative ``2**-24``). ``Identity`` is not
    mapped to ``Identity(gain * s)``: Keras 3.15 drops ``gain`` from its
    config. Any other
    initializer, one without an integer seed, or a ``VarianceScaling``
    uniform kind without ``shape``, maps to :class:`ScaledInitializer`
    (registered once Keras and ``dropout_lib`` are both imported: a fresh
    process must ``import dropout_lib`` before loading such a model). ``keep_prob`` is
    ``p``, not Keras's ``rate``.

    Examples
    --------
    >>> import keras
    >>> base = keras.initializers.RandomNormal(seed=1)
    >>> mapped = map_initializer(base, 0.5, "to_standard")      # draws times 1/p
    >>> type(mapped).__name__, mapped.stddev
    ('RandomNormal', 0.1)
    >>> bool((mapped((3,)).numpy() == 2 * keras.initializers.RandomNormal(seed=1)((3,)).numpy()).all())
    True
    """
    s = kernel_scale(keep_prob, direction)
    initializer = keras.initializers.get(initializer)
    plain = _plain_initializer(initializer, s, shape)
    return plain if plain is not None else ScaledInitializer(initializer, s)


# mapping's ScaledLearningRateSchedule registers when its module runs (see the end of
# dropout_lib.layers): import it unless it is being imported now.
if "dropout_lib.mapping" not in sys.modules:
    import dropout_lib.mapping  # noqa: E402, F401
