"""Twin Keras models: the same net with Keras's dropout and with the paper's, on shared masks.

Notation: ``keep_prob`` is the paper's ``p``, the probability of KEEPING a
unit; Keras's ``rate`` is the DROP probability ``1 - p``. Every dropout layer
here is configured with Keras's ``rate``, as ``keras.layers.Dropout`` is.

A *twin* of a model is the same architecture with every dropout layer
replaced by the other variant:

=====================================  ==========================================
inverted (Keras)                       standard (the paper's)
=====================================  ==========================================
``keras.layers.Dropout(rate,           ``StandardDropout(rate, noise_shape,
noise_shape, seed)``                   seed)``
``SpatialDropout1D(rate, seed)``       ``StandardDropout(rate, (None, 1, None))``
``SpatialDropout2D(rate, seed)``       ``StandardDropout(rate, (None, 1, 1, None))``
                                       (channels_last; ``(None, None, 1, 1)``
                                       for channels_first)
``SpatialDropout3D(rate, seed)``       ``StandardDropout(rate, (None, 1, 1, 1, None))``
                                       (channels_first: ``(None, None, 1, 1, 1)``)
=====================================  ==========================================

with the same ``rate``, ``seed``, dtype policy and name. A spatial dropout
draws exactly the mask of ``keras.layers.Dropout(rate, noise_shape)`` with
that noise shape and the same seed (both call ``backend.random.dropout`` with
the layer's seed generator), so the table loses nothing; the way back from
``StandardDropout`` is always ``keras.layers.Dropout(rate, noise_shape, seed)``.

Shared masks
------------
Keras's dropout layers draw their masks from a ``keras.random.SeedGenerator``
whose state starts at ``[seed, 0]`` and advances by one per training call.
:func:`twin` copies each generator's *state* (not just the seed) into the
twin (:func:`share_masks`), so the two models draw identical masks call for
call from then on, whatever the seeds were (``None`` included) and however
often the source was called before. Both models must then be called the same
way: one training call of one advances its generators, not the other's.

The reparameterisation
----------------------
:func:`mapped_twin` also rescales the kernels that consume dropped units,
``W_std = W_inv / p`` (``'standard'``) or ``W_inv = p W_std``
(``'inverted'``), biases and all other weights unchanged, with
:func:`dropout_lib.conversion.convert_weights` (which walks the graph and
refuses models where no exact map exists). With shared masks the twins then
compute the same function, in training and at inference: for a consuming
layer ``W_inv (m h / p) = (W_inv / p)(m h)`` and ``W_inv h = (W_inv / p)(p h)``.
:func:`scale_consumer_biases` applies the same factor to the consuming
biases too, the *wrong* map, as a negative control.

Comparing twins
---------------
:func:`compare_twins` runs two Keras models side by side (training calls on
shared masks, then ``predict``); :func:`compare_mlp_twins` does the same for
the exact float64 numpy nets of :mod:`dropout_lib.exact.mlp`;
:func:`rounding_tolerance` is the tolerance ``4 K eps`` for their relative
difference, with its justification; :func:`drawn_masks` reads the masks a
layer draws, to check that two layers draw the same ones.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from numpy.typing import ArrayLike, NDArray

from dropout_lib.conversion import (
    _PRODUCERS,
    ATTENTION_OUTPUT,
    BATCH_NORMALIZATION,
    KEEP_THE_VARIANT,
    KERNEL_KINDS,
    PRODUCER,
    RECURRENT_INPUT_KERNEL,
    Consumer,
    ScaledInitializer,
    _is_dropout,
    _plain_initializer,
    _rnns,
    convert_weights,
    converted_weights,
    dropout_consumers,
    kernel_scale,
    map_constraint,
    map_initializer,
    map_regularizer,
)
from dropout_lib.exact import mlp
from dropout_lib.layers import StandardDropout, StandardMultiHeadAttention
from dropout_lib.mapping import (
    check_untrained,
    clone_optimizer,
    mapped_multi_optimizer,
    unmapped_optimizer,
)
from dropout_lib.reference import relative_difference
from dropout_lib.validation import (
    Direction,
    NoExactMapError,
    NotConvertibleError,
    NothingToConvertWarning,
    Variant,
    check_variant,
    direction_to,
)

__all__ = [
    "ConvertedModel",
    "convert_model",
    "keras_float64",
    "quiet_tensorflow",
    "TwinComparison",
    "ULPS_PER_LAYER",
    "compare_mlp_twins",
    "compare_twins",
    "drawn_masks",
    "dropout_layers",
    "mapped_twin",
    "relative_difference",
    "rounding_tolerance",
    "scale_consumer_biases",
    "share_masks",
    "spatial_noise_shape",
    "twin",
    "verify",
    "Verification",
]


_L = keras.layers
_SPATIAL = (_L.SpatialDropout1D, _L.SpatialDropout2D, _L.SpatialDropout3D)
_INVERTED = (_L.Dropout,) + _SPATIAL


def _check_model(model: Any) -> keras.Model:
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model; got {type(model).__name__}.")
    if not (isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")):
        raise TypeError(
            f"{type(model).__name__} is a subclassed model: its layers cannot be "
            "swapped by cloning. Build it as a keras.Sequential or functional "
            "keras.Model."
        )
    if not model.built:
        raise ValueError(
            f"model {model.name!r} is not built; give it a keras.Input (or call it on data) first."
        )
    return model


def _variant_of(layer: Any) -> Variant:
    if isinstance(layer, StandardDropout):
        return "standard"
    if type(layer) in _INVERTED:
        return "inverted"
    raise TypeError(
        f"layer {layer.name!r} is a {type(layer).__name__}, a subclass of "
        "keras.layers.Dropout this module does not know: it may draw or scale its "
        "mask differently, so no twin is built. Supported: Dropout, "
        "SpatialDropout1D/2D/3D and dropout_lib.layers.StandardDropout."
    )


def dropout_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Return the model's dropout layers, both variants, in the model's layer order.

    Counts ``keras.layers.Dropout`` and its subclasses (the spatial ones) and
    :class:`~dropout_lib.layers.StandardDropout`, also inside nested models.

    Examples
    --------
    >>> import keras
    >>> model = keras.Sequential(
    ...     [keras.Input((3,)), keras.layers.Dropout(0.5, name="d"), keras.layers.Dense(2)]
    ... )
    >>> [layer.name for layer in dropout_layers(model)]
    ['d']
    """
    return [layer for layer in model._flatten_layers(include_self=False) if _is_dropout(layer)]


def spatial_noise_shape(layer: keras.layers.Layer) -> tuple[int | None, ...]:
    """The ``noise_shape`` with which ``keras.layers.Dropout`` draws ``layer``'s masks.

    ``SpatialDropout{1,2,3}D`` drops whole feature maps: one mask entry per
    (example, channel), broadcast over the spatial axes. channels_last:
    ``(None, 1, None)``, ``(None, 1, 1, None)``, ``(None, 1, 1, 1, None)``;
    channels_first (2D, 3D): ``(None, None, 1, 1)``, ``(None, None, 1, 1, 1)``.
    ``None`` takes the input's size at call time.

    Examples
    --------
    >>> import keras
    >>> spatial_noise_shape(keras.layers.SpatialDropout2D(0.5))
    (None, 1, 1, None)
    """
    if not isinstance(layer, _SPATIAL):
        raise TypeError(f"layer must be a SpatialDropout1D/2D/3D; got {type(layer).__name__}.")
    if isinstance(layer, _L.SpatialDropout1D):
        return (None, 1, None)
    n = 2 if isinstance(layer, _L.SpatialDropout2D) else 3
    if layer.data_format == "channels_first":
        return (None, None) + (1,) * n
    return (None,) + (1,) * n + (None,)


def _swap(layer: keras.layers.Layer, variant: Variant) -> keras.layers.Layer:
    """The other-variant twin of one dropout layer (same rate, seed, dtype, name)."""
    rate = float(layer.rate)  # Keras's rate: the drop probability 1 - p
    if isinstance(layer, _SPATIAL):
        noise_shape: Sequence[int | None] | None = spatial_noise_shape(layer)
    else:
        noise_shape = layer.noise_shape
    kwargs = dict(noise_shape=noise_shape, seed=layer.seed, dtype=layer.dtype_policy, name=layer.name)
    if variant == "standard":
        return StandardDropout(rate, **kwargs)
    return _L.Dropout(rate, **kwargs)


def share_masks(source: keras.Model, target: keras.Model) -> None:
    """Make ``target``'s dropout layers draw the masks ``source``'s will draw next.

    Copies the state ``[seed, counter]`` of each dropout layer's seed
    generator from ``source`` to the layer at the same position in
    ``target`` (both variants draw their mask with
    ``backend.random.dropout(..., seed=generator)``, so equal states give
    equal masks for equal shapes and dtypes). Layers with ``rate = 0`` have no
    generator and draw nothing.

    Raises
    ------
    ValueError
        If the two models have different numbers of dropout layers, or a pair
        differs in ``rate`` (Keras's drop probability ``1 - p``) or in whether
        it has a generator.

    Examples
    --------
    >>> import keras, numpy as np
    >>> a = keras.Sequential([keras.Input((8,)), keras.layers.Dropout(0.5, seed=1)])
    >>> b = keras.Sequential([keras.Input((8,)), keras.layers.Dropout(0.5, seed=2)])
    >>> share_masks(a, b)
    >>> x = np.ones((1, 8), dtype="float32")
    >>> bool(np.array_equal(a(x, training=True), b(x, training=True)))
    True
    """
    src, dst = dropout_layers(source), dropout_layers(target)
    if len(src) != len(dst):
        raise ValueError(
            f"source has {len(src)} dropout layers but target has {len(dst)}; "
            "share_masks pairs them by position, so build the target with twin()."
        )
    for a, b in zip(src, dst):
        if not math.isclose(float(a.rate), float(b.rate), rel_tol=0.0, abs_tol=1e-15):
            raise ValueError(
                f"dropout {a.name!r} has rate {a.rate} but {b.name!r} has rate "
                f"{b.rate}: the same masks need the same Keras rate (drop "
                "probability 1 - p)."
            )
        gen_a = getattr(a, "seed_generator", None)
        gen_b = getattr(b, "seed_generator", None)
        if (gen_a is None) != (gen_b is None):
            raise ValueError(f"dropout {a.name!r} and {b.name!r}: only one has a seed generator.")
        if gen_a is not None:
            _copy_state(gen_a, gen_b)


def _copy_state(source: Any, target: Any) -> None:
    """Give ``target``'s generator the value of ``source``'s state in a buffer of its own.

    Assigning the source's array itself would make both variables hold one
    buffer, which JAX donates to (and deletes after) the source's jitted
    training step; a numpy copy is a new buffer with the same value.
    """
    target.state.assign(np.array(keras.ops.convert_to_numpy(source.state.value)))


def _seed_generators(layer: keras.layers.Layer) -> list[Any]:
    return [g for sub in layer._flatten_layers(include_self=True) for g in sub._seed_generators]


_NOT_BERNOULLI = (_L.GaussianDropout, _L.AlphaDropout)
_ATTENTION_TWINS = {
    _L.MultiHeadAttention: StandardMultiHeadAttention,
    StandardMultiHeadAttention: _L.MultiHeadAttention,
}
_DROPOUT_ATTRIBUTES = ("dropout", "recurrent_dropout")


def _hidden_dropouts(model: keras.Model, *, strict: bool) -> None:
    """Refuse dropouts that a layer-by-layer swap cannot reach (or, ``strict``, cannot convert).

    A dropout inside a nested model or inside another layer (a custom layer's
    sublayer, ``MultiHeadAttention(dropout=...)``, ``LSTM(dropout=...)``) is
    not a layer of ``model``'s graph: cloning would leave it unswapped and the
    twins would differ silently. ``strict`` (for :func:`convert_model`) also
    refuses dropout kinds that are not Bernoulli dropout, which have no
    counterpart in the other variant.
    """
    for layer in model.layers:
        where = f"layer {layer.name!r} ({type(layer).__name__})"
        if strict and isinstance(layer, _NOT_BERNOULLI):
            raise NotConvertibleError(
                f"{where} is not Bernoulli dropout ({type(layer).__name__} multiplies by "
                "Gaussian noise or sets dropped units to a constant), and only Bernoulli "
                "dropout has a paper's and an inverted variant to swap. Replace it by "
                "keras.layers.Dropout (a different model), or keep this model as it is."
            )
        if _is_dropout(layer):
            continue
        # the layer itself and everything inside it: a wrapped RNN's layers and cells
        for sub in layer._flatten_layers(include_self=True):
            for attribute in _DROPOUT_ATTRIBUTES:
                value = getattr(sub, attribute, None)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                    inside = "" if sub is layer else f" in its sublayer {sub.name!r} ({type(sub).__name__})"
                    if isinstance(sub, _L.MultiHeadAttention) and type(sub) in _ATTENTION_TWINS:
                        continue  # swapped whole, its output projection mapped
                    if isinstance(sub, _L.MultiHeadAttention):
                        raise NotConvertibleError(
                            f"{where} drops attention probabilities inside itself (dropout={value}"
                            f"{inside}), which this conversion cannot swap. The exact map is in "
                            "the value or the output projection (chapter 8: the output projection's "
                            "kernel, or the value projection's kernel and bias, times s, with their "
                            "optimizer maps), with the inner dropout swapped; convert_model does not "
                            f"build it. {KEEP_THE_VARIANT[0].upper()}{KEEP_THE_VARIANT[1:]}."
                        )
                    raise NotConvertibleError(
                        f"{where} applies dropout inside itself ({attribute}={value}{inside}), "
                        "which this conversion cannot see into or swap: it would stay Keras's "
                        "inverted dropout while the rest changes. Set "
                        f"{attribute}=0 and put a keras.layers.Dropout layer in the graph "
                        f"instead (a different model), or {KEEP_THE_VARIANT}."
                    )
        if type(layer) in _ATTENTION_TWINS:
            continue  # its attention dropout is swapped with the layer, the output projection mapped
        inner = [
            sub
            for sub in layer._flatten_layers(include_self=False)
            if (_is_dropout(sub) or isinstance(sub, _NOT_BERNOULLI)) and float(getattr(sub, "rate", 1.0)) > 0
        ]
        if inner:
            kind = "a nested model" if isinstance(layer, keras.Model) else "a layer"
            raise NotConvertibleError(
                f"{where} is {kind} holding the dropout {inner[0].name!r} "
                f"({type(inner[0]).__name__}), which this conversion cannot see into: "
                "the dropout would stay unswapped and the two models would differ. "
                "Build the model with the inner layers in the outer graph (call them "
                f"on the outer tensors), or {KEEP_THE_VARIANT}."
            )


_RANDOM_SOURCE = re.compile(r"random|SeedGenerator")


def _is_keras_layer(layer: Any) -> bool:
    """A layer class of Keras's own ``keras.layers`` (``Lambda`` runs user code: not counted)."""
    return type(layer).__module__.startswith("keras.src.layers.") and not isinstance(layer, _L.Lambda)


def _unknown_random_layers(model: keras.Model) -> None:
    """Refuse a layer that may draw random numbers and is not a dropout this module swaps.

    Such a layer (a stochastic-depth or drop-path layer such as ConvNeXt's
    ``StochasticDepth``, which computes ``x / keep_prob * floor(keep_prob + U)``)
    would be copied unchanged: it would stay in Keras's inverted variant while
    the rest changes, and its draws (unseeded, or from a generator of its own)
    could not be shared with the source's. Keras's own random layers
    (``GaussianNoise``, the ``Random*`` augmentation layers) are known: the
    clone gets copies of their generator states, so they draw what the
    source's draw; where a dropped tensor reaches them the walk refuses them.
    Any other layer counts as random when it (or a sublayer) holds a
    ``keras.random.SeedGenerator`` or its source code mentions ``random``; a
    layer whose source cannot be read is refused too (nothing shows it
    deterministic).
    """
    for layer in model._flatten_layers(include_self=False):
        if _is_dropout(layer) or isinstance(layer, keras.Model) or _is_keras_layer(layer):
            continue
        if layer._seed_generators:
            why = "it holds a keras.random.SeedGenerator"
        else:
            code = layer.function if isinstance(layer, _L.Lambda) else type(layer)
            try:
                source = inspect.getsource(code)
            except (OSError, TypeError):
                why = "its source code cannot be read to show that it draws no random numbers"
            else:
                if not _RANDOM_SOURCE.search(source):
                    continue
                why = "its source code calls a random function"
        raise NotConvertibleError(
            f"layer {layer.name!r} ({type(layer).__name__}) may draw random numbers ({why}) "
            "and is not a dropout this conversion knows how to swap: it would be copied "
            "unchanged, so a stochastic-depth or drop-path layer would stay in Keras's "
            "inverted variant (x / keep_prob * mask) while the rest changes, and its draws "
            "would not be shared with the source's. For a per-sample drop path use "
            "keras.layers.Dropout(rate, noise_shape=(None, 1, ..., 1), seed=...) (a "
            "seeded, swappable layer; on a residual branch it converts with the "
            "producer-side map where the branch ends in a single-use Dense, EinsumDense, "
            "Conv, BatchNormalization or LayerNormalization layer, not after another layer "
            f"such as ConvNeXt's LayerScale), or {KEEP_THE_VARIANT}."
        )


def _share_other_generators(source: keras.Model, target: keras.Model) -> None:
    """Copy the generator states of every non-dropout layer (``GaussianNoise``, ``Random*``)."""
    for a, b in zip(source._flatten_layers(include_self=False), target._flatten_layers(include_self=False)):
        if _is_dropout(a) or _is_dropout(b):
            continue
        if len(a._seed_generators) != len(b._seed_generators):
            raise ValueError(f"layer {a.name!r} and its clone hold different numbers of seed generators.")
        for gen_a, gen_b in zip(a._seed_generators, b._seed_generators):
            _copy_state(gen_a, gen_b)


def _copy_lookup_state(layer: keras.layers.Layer, new: keras.layers.Layer) -> None:
    """Copy state a config does not hold (an adapted vocabulary) into a clone, or refuse.

    Lookup layers (``StringLookup``, ``IntegerLookup``, ``TextVectorization``)
    keep their adapted vocabulary in a table that is neither a weight nor part
    of the config; Keras's own saving moves it with ``save_own_variables``/
    ``save_assets``, and so does this.
    """
    if not (hasattr(layer, "save_assets") and hasattr(new, "load_assets")):
        return
    try:
        store: dict[str, Any] = {}
        layer.save_own_variables(store)
        new.load_own_variables(store)
        with tempfile.TemporaryDirectory() as directory:
            layer.save_assets(directory)
            new.load_assets(directory)
    except Exception as error:  # noqa: BLE001 - any failure: refuse, naming the layer
        raise NotConvertibleError(
            f"layer {layer.name!r} ({type(layer).__name__}) keeps state outside its weights "
            f"and config (e.g. an adapted vocabulary), and copying it failed ({error}); the "
            f"clone would lose it. Convert a model without it (apply it to the data "
            f"first), or {KEEP_THE_VARIANT}."
        ) from error


def twin(model: keras.Model, variant: Variant) -> keras.Model:
    """Clone ``model`` with every dropout layer swapped to ``variant``; weights unchanged.

    Parameters
    ----------
    model
        A built ``keras.Sequential`` or functional ``keras.Model`` whose dropout
        layers are all of the *other* variant: ``keras.layers.Dropout`` or
        ``SpatialDropout{1,2,3}D`` for ``variant='standard'``,
        :class:`~dropout_lib.layers.StandardDropout` for ``variant='inverted'``.
    variant
        The twin's dropout: ``'standard'`` (the paper's, ``m x`` in training,
        ``p x`` at inference) or ``'inverted'`` (Keras's, ``m x / p`` and ``x``).

    Returns
    -------
    keras.Model
        Same layers, configurations and weights (copied, NOT rescaled: use
        :func:`convert_model` for the same function), each dropout swapped as
        in the module's table, with its generator state copied
        (:func:`share_masks`), so both draw the same masks call for call.

    Raises
    ------
    TypeError
        For subclassed models or unknown ``Dropout`` subclasses.
    ValueError
        If a dropout layer already has the twin's variant.
    dropout_lib.validation.NotConvertibleError
        If a dropout sits inside a nested model or another layer, where the
        swap cannot reach it.

    Examples
    --------
    >>> import keras
    >>> inverted = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5, seed=1),
    ...                              keras.layers.Dense(2)])
    >>> type(twin(inverted, "standard").layers[0]).__name__
    'StandardDropout'
    """
    variant = check_variant(variant)
    _check_model(model)
    _hidden_dropouts(model, strict=False)
    for layer in dropout_layers(model):
        if _variant_of(layer) == variant:
            raise ValueError(
                f"model already has {variant} dropout {layer.name!r} "
                f"({type(layer).__name__}); twin(model, {variant!r}) swaps every "
                f"dropout of the other variant into {variant} dropout."
            )
    return _clone(model, variant, {})


def _set_mapped(layer: Any, name: str, value: Any) -> None:
    """Set a mapped attribute, and on a variable the layer has already built, its penalty or constraint.

    A layer rebuilt from a config may be built at once (a Bidirectional's
    RNNs are): its variables then hold the config's regulariser (a Python
    float, which Keras rounds through float32) and constraint.
    """
    setattr(layer, name, value)
    variable_name, _, kind = name.rpartition("_")
    variable = getattr(layer, variable_name, None) if getattr(layer, "built", False) else None
    if kind in ("regularizer", "constraint") and isinstance(variable, keras.Variable):
        setattr(variable, kind, value)


def _clone(model: keras.Model, variant: Variant, mapped: dict[int, dict[str, Any]]) -> keras.Model:
    """Clone with dropouts swapped; layers in ``mapped`` (by id) get those attributes set.

    The mapped objects are set on the new layer before it is built, not passed
    through its config: a config turns an ``L2`` factor stored as
    ``numpy.float64`` into a Python float, which Keras then rounds through
    float32 (``ops.cast``), and the map would no longer be exact.
    """

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if _is_dropout(layer):
            return _swap(layer, variant)
        kind = layer.__class__
        if kind in _ATTENTION_TWINS and float(layer.dropout) > 0:
            kind = StandardMultiHeadAttention if variant == "standard" else _L.MultiHeadAttention
        new = kind.from_config(layer.get_config())
        for key, value in mapped.get(id(layer), {}).items():
            *path, name = key.split(".")  # "cell.kernel_regularizer", "forward_layer.cell...."
            target = new
            for part in path:
                target = getattr(target, part)
            _set_mapped(target, name, value)
        _copy_lookup_state(layer, new)
        return new

    out = keras.models.clone_model(model, clone_function=clone)
    out.set_weights(model.get_weights())
    share_masks(model, out)
    _share_other_generators(model, out)
    return out


#: Config-key prefix of each consumer kernel's regulariser, constraint, initialiser.
_KERNEL_PREFIX = {
    _L.DepthwiseConv1D: "depthwise",
    _L.DepthwiseConv2D: "depthwise",
    _L.SeparableConv1D: "depthwise",
    _L.SeparableConv2D: "depthwise",
}


def _mapped_hyperparameters(consumers: Sequence[Consumer], direction: Direction) -> dict[int, dict[str, Any]]:
    """Each consuming layer's kernel regulariser, constraint and initialiser, mapped (by layer id)."""
    mapped: dict[int, dict[str, Any]] = {}
    for consumer in consumers:
        layer, p = consumer.layer, consumer.keep_prob
        if consumer.kind not in KERNEL_KINDS:
            mapped[id(layer)] = _normalization_map(consumer, direction)
            continue
        if consumer.kind == ATTENTION_OUTPUT:
            # one regulariser/constraint serves all four projections: no map for the output alone
            for key in ("kernel_regularizer", "kernel_constraint"):
                if getattr(layer, f"_{key}", None) is not None:
                    raise NotConvertibleError(
                        f"layer {layer.name!r} ({type(layer).__name__}): its {key} acts on all "
                        "four projections, and only the output projection is rescaled, so no "
                        f"single {key} maps. Remove it, or {KEEP_THE_VARIANT}."
                    )
            mapped[id(layer)] = {}  # the shared initialiser is not mapped: the weights are
            continue
        if consumer.kind == RECURRENT_INPUT_KERNEL and type(layer) is _L.Bidirectional:
            attributes = {}
            for part, rnn, kernel in zip(
                ("forward_layer", "backward_layer"), _rnns(layer), consumer.variables
            ):
                wrapped = Consumer(rnn, (kernel,), p, RECURRENT_INPUT_KERNEL, consumer.dropouts)
                inner = _mapped_hyperparameters([wrapped], direction)[id(rnn)]
                attributes.update({f"{part}.{key}": value for key, value in inner.items()})
            mapped[id(layer)] = attributes
            continue
        if consumer.kind == PRODUCER:  # kernel and bias, or gamma and beta, all scaled by s
            prefixes = tuple(n for n in _PRODUCERS[type(layer)] if getattr(layer, n, None) is not None)
        else:
            prefixes = (_KERNEL_PREFIX.get(type(layer), "kernel"),)
        maps = (
            ("regularizer", map_regularizer, keras.regularizers),
            ("constraint", map_constraint, keras.constraints),
            ("initializer", map_initializer, keras.initializers),
        )
        attributes: dict[str, Any] = {}
        for prefix, variable in zip(prefixes, consumer.variables):
            for suffix, mapper, kind in maps:
                key = f"{prefix}_{suffix}"
                source = getattr(layer, key, None)
                if source is None and layer.get_config().get(key) is not None:
                    source = kind.get(layer.get_config()[key])
                try:
                    if suffix == "initializer":
                        attributes[key] = mapper(source, p, direction, shape=variable.shape)
                    else:
                        attributes[key] = mapper(source, p, direction)
                except NoExactMapError as error:
                    raise NotConvertibleError(
                        f"layer {layer.name!r} ({type(layer).__name__}): its {key} has no exact map: {error}"
                    ) from error
        if consumer.kind == PRODUCER and getattr(layer, "activity_regularizer", None) is not None:
            # the producer outputs s F(x): lambda' R(s F) = lambda R(F) iff L2 lambda/s**2, L1 lambda/s
            try:
                attributes["activity_regularizer"] = map_regularizer(layer.activity_regularizer, p, direction)
            except NoExactMapError as error:
                raise NotConvertibleError(
                    f"dropout {', '.join(repr(n) for n in consumer.dropouts)} sits on a residual "
                    f"branch mapped on the producer side, and its producer {layer.name!r} "
                    f"({type(layer).__name__}) has an activity_regularizer on the output the map "
                    f"scales by s = {kernel_scale(p, direction):.6g}: {error} Use an L1/L2/L1L2 "
                    f"activity regularizer, remove it (a different model), or {KEEP_THE_VARIANT}."
                ) from error
        if consumer.kind == RECURRENT_INPUT_KERNEL:  # the RNN layer reads them from its cell
            attributes = {f"cell.{key}": value for key, value in attributes.items()}
        mapped[id(layer)] = attributes
    return mapped


def _scaled_initializer(initializer: Any, factor: float) -> Any:
    """``factor`` times ``initializer``'s draws: a plain Keras initializer where one exists."""
    initializer = keras.initializers.get(initializer)
    plain = _plain_initializer(initializer, factor, None)
    return plain if plain is not None else ScaledInitializer(initializer, factor)


def _normalization_map(consumer: Consumer, direction: Direction) -> dict[str, Any]:
    """Chapter 10's epsilon map for a normalisation that reads the dropped tensor.

    The layer reads ``t = 1/s`` times the source's input (``p`` times to
    standard), so ``eps -> t**2 eps``; a BatchNormalization's moving-statistics
    initialisers map ``x t`` (mean) and ``x t**2`` (variance), as its moving
    statistics do (:meth:`Consumer.scales`).
    """
    layer = consumer.layer
    t = 1.0 / kernel_scale(consumer.keep_prob, direction)
    attributes: dict[str, Any] = {"epsilon": np.float64(float(layer.epsilon) * t**2)}
    if consumer.kind == BATCH_NORMALIZATION:
        attributes["moving_mean_initializer"] = _scaled_initializer(layer.moving_mean_initializer, t)
        attributes["moving_variance_initializer"] = _scaled_initializer(
            layer.moving_variance_initializer, t**2
        )
    return attributes


@dataclass(frozen=True)
class ConvertedModel:
    """What :func:`convert_model` returns.

    Attributes
    ----------
    model
        The new Keras model, with the other dropout variant, computing the
        source model's function.
    optimizer
        The optimizer to compile ``model`` with (``None`` if none was given
        and the source was not compiled).
    direction
        ``'to_standard'`` or ``'to_inverted'``.
    consumers
        The layers of ``model`` whose kernels were rescaled, with their keep
        probabilities (:class:`dropout_lib.conversion.Consumer`).

    Examples
    --------
    >>> import keras
    >>> result = convert_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), to="standard")
    >>> result.direction, result.consumers, result.optimizer is None   # no dropout, no optimizer
    ('to_standard', (), True)
    """

    model: keras.Model
    optimizer: keras.optimizers.Optimizer | None
    direction: Direction
    consumers: tuple[Consumer, ...]

    @property
    def maps(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """Which map absorbed each dropout: its name -> ``((layer name, kind), ...)``.

        ``kind`` is :attr:`dropout_lib.conversion.Consumer.kind` (``'kernel'``,
        ``'recurrent input kernel'``, ``'batch normalization epsilon and
        moving statistics'``, ``'normalization epsilon'``).

        >>> import keras
        >>> from dropout_lib.layers import StandardDropout
        >>> model = keras.Sequential([keras.Input((3,)), StandardDropout(0.5, name="drop"),
        ...                           keras.layers.LayerNormalization(name="norm"), keras.layers.Dense(2)])
        >>> convert_model(model, to="inverted").maps
        {'drop': (('norm', 'normalization epsilon'),)}
        """
        out: dict[str, list[tuple[str, str]]] = {}
        for consumer in self.consumers:
            for name in consumer.dropouts:
                out.setdefault(name, []).append((consumer.layer.name, consumer.kind))
        return {name: tuple(pairs) for name, pairs in out.items()}


def convert_model(
    model: keras.Model,
    to: Variant,
    optimizer: keras.optimizers.Optimizer | None = None,
) -> ConvertedModel:
    r"""Port a Keras model to the other dropout variant: same function, same training.

    Every dropout is swapped for the other variant with the same ``rate``,
    ``seed``, noise shape and generator state (so both models draw the same
    masks, call for call), and every kernel ``W`` that consumes dropped units
    is rescaled, :math:`W_{\mathrm{std}} = W_{\mathrm{inv}} / p`, with ``p``
    the keep probability (``1 - rate``; the product of the keep
    probabilities behind consecutive dropouts). Biases are unchanged. Then,
    with the same masks, the two models compute the same function in training
    (:math:`W_{\mathrm{inv}}\, (m h / p) = (W_{\mathrm{inv}}/p)(m h)`) and at
    inference (:math:`W_{\mathrm{inv}} h = (W_{\mathrm{inv}}/p)(p h)`).

    The consuming kernels' hyperparameters are mapped exactly with
    :math:`s = 1/p` to standard and :math:`s = p` to inverted: an L2 factor
    :math:`\lambda / s^2`, L1 :math:`\lambda / s`, an
    :class:`~dropout_lib.conversion.EquivariantMaxNorm` bound :math:`c\,s`,
    the initialiser's draws times :math:`s`; the optimizer of those kernels
    is :func:`dropout_lib.mapping.map_optimizer` (e.g. SGD ``lr / p**2`` to
    standard), every other variable keeps the source's optimizer, in one
    ``keras.optimizers.MultiOptimizer`` (per-variable optimizers, in Keras
    3.15, the version this package is tested with). The mapped learning rate
    follows the default sub-optimizer's
    (:class:`~dropout_lib.mapping.FollowingLearningRate`), so Keras's
    ``LearningRateScheduler`` and ``ReduceLROnPlateau``, which set every
    sub-optimizer's rate, keep the map.

    Where no kernel reads the dropped tensor first, a normalisation or a
    recurrent layer may absorb the factor (chapter 10): BatchNormalization
    (``epsilon * t**2``, moving mean ``* t``, moving variance ``* t**2`` and
    their initialisers, ``t = p`` to standard, ``1/p`` to inverted; no change
    of optimizer), LayerNormalization, GroupNormalization, RMSNormalization
    (``epsilon * t**2``), and the input ``kernel`` of LSTM, GRU and SimpleRNN
    (like a Dense kernel; the recurrent kernel is unchanged). A dropout on a
    residual branch ``x + Dropout(F(x))`` (stochastic depth included) is
    mapped on the producer side: ``F``'s last Dense/Conv kernel and bias, or
    its last normalisation's gamma and beta, times ``s``, with their
    optimizer mapped (chapter 8); an ``activity_regularizer`` on that layer
    penalises ``s F(x)`` and maps like a kernel penalty (``L2`` ``lambda /
    s**2``, ``L1`` ``lambda / s``, ``L1L2`` both; any other is refused, naming
    the dropout and the producer); ``MultiHeadAttention(dropout=...)`` becomes
    :class:`~dropout_lib.layers.StandardMultiHeadAttention` (or back) with its
    output projection's kernel times ``s``. :attr:`ConvertedModel.maps` says
    which map absorbed each dropout.

    Other random layers: Keras's own (``GaussianNoise``, the ``Random*``
    augmentation layers) get copies of their generator states; any other
    layer that may draw random numbers (ConvNeXt's ``StochasticDepth``) is
    refused, naming it. Lookup tables (an adapted ``StringLookup`` or
    ``TextVectorization``) are copied into the clone. A model without a
    dropout layer is copied with a
    :class:`~dropout_lib.validation.NothingToConvertWarning`.

    Parameters
    ----------
    model
        A built ``keras.Sequential`` or functional ``keras.Model`` whose
        dropouts are all of the other variant: ``keras.layers.Dropout`` or
        ``SpatialDropout{1,2,3}D`` for ``to='standard'``,
        :class:`~dropout_lib.layers.StandardDropout` for ``to='inverted'``.
        It is not modified.
    to
        ``'inverted'`` (Keras's dropout) or ``'standard'`` (the paper's): the
        variant of the returned model.
    optimizer
        The optimizer that trains ``model`` (not modified). ``None``: the
        optimizer ``model`` was compiled with, if any. A ``MultiOptimizer``
        that ``convert_model`` returned converts back: with the model it
        trains, ``to`` the other variant, the result is its default
        optimizer, the original hyperparameters
        (:func:`dropout_lib.mapping.unmapped_optimizer`).

    Returns
    -------
    ConvertedModel
        ``.model`` computes ``model``'s function; compiled with
        ``.optimizer`` and trained on the same data, it follows ``model``'s
        trajectory (trained with ``optimizer``) up to float64 rounding, with
        the consuming kernels ``s`` times the source's at every step.

    Raises
    ------
    dropout_lib.validation.NotConvertibleError
        Naming the layer and the reason, for anything without an exact
        conversion: a dropout inside a nested model or another layer, a
        dropout that is not Bernoulli dropout (``GaussianDropout``,
        ``AlphaDropout``), a dropout already of the target variant, a
        kernel shared between dropped and undropped inputs, a dropped tensor
        reaching a layer that neither absorbs nor commutes with the factor
        (``tanh``, ``UnitNormalization``, ``BatchNormalization(renorm=True)``
        (its renormalisation statistics and clipping are not mapped), a residual ``Add`` whose dropped
        branch has no producer to scale, or whose producer's output is also a
        model output, an unknown layer), a dropped tensor that is a model
        output, a layer that may
        draw random numbers and is not a known dropout, a lookup table that
        cannot be copied, a consuming kernel with
        ``keras.constraints.MaxNorm`` or an unknown regulariser, a subclassed
        or unbuilt model.
    dropout_lib.validation.NoExactMapError
        If the optimizer has no exact map (``global_clipnorm``, ...).
    ValueError
        If the optimizer has already taken steps (``iterations > 0``): its
        state is not carried over, so convert before training.
    TypeError
        If ``optimizer`` is not an optimizer instance, or a
        ``MultiOptimizer`` of another form than the one returned here.

    Notes
    -----
    Keras 3.15.1 cannot load a saved model compiled with the returned
    ``MultiOptimizer`` (``keras.saving.load_model`` fails on its state): save
    weights, or load with ``compile=False``. A model converted to
    ``'inverted'`` holds only Keras classes (the consuming kernels'
    initialisers are plain Keras initialisers,
    :func:`dropout_lib.conversion.map_initializer`) and loads in any process;
    one converted to ``'standard'`` holds ``StandardDropout``: ``import
    dropout_lib`` (which registers the package's Keras classes once Keras is
    imported) before ``keras.models.load_model``.

    Examples
    --------
    A net built with the paper's recipe, ported to Keras's dropout:

    >>> import keras, numpy as np
    >>> import dropout_lib as dl
    >>> paper = keras.Sequential([
    ...     keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
    ...     dl.StandardDropout(0.5, seed=1), keras.layers.Dense(2)])
    >>> ported = dl.convert_model(paper, to="inverted", optimizer=keras.optimizers.SGD(0.1))
    >>> type(ported.model.layers[1]).__name__
    'Dropout'
    >>> ported.consumers[0].layer.name == paper.layers[2].name, ported.consumers[0].keep_prob
    (True, 0.5)
    >>> x = np.ones((3, 4), dtype="float32")
    >>> bool(np.allclose(ported.model.predict(x, verbose=0), paper.predict(x, verbose=0), rtol=1e-6))
    True

    Refused with the reason:

    >>> noisy = keras.Sequential([keras.Input((4,)), keras.layers.GaussianDropout(0.5, name="noise"),
    ...                           keras.layers.Dense(2)])
    >>> dl.convert_model(noisy, to="standard")
    Traceback (most recent call last):
    ...
    dropout_lib.validation.NotConvertibleError: layer 'noise' (GaussianDropout) is not
    Bernoulli dropout ...
    """
    direction = direction_to(to)
    variant: Variant = to
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model; got {type(model).__name__}.")
    try:
        _check_model(model)
    except (TypeError, ValueError) as error:
        raise NotConvertibleError(str(error)) from error
    _hidden_dropouts(model, strict=True)
    _unknown_random_layers(model)
    for layer in dropout_layers(model):
        try:
            kind = _variant_of(layer)
        except TypeError as error:
            raise NotConvertibleError(str(error)) from error
        if kind == variant:
            raise NotConvertibleError(
                f"dropout {layer.name!r} ({type(layer).__name__}) is already {variant} "
                f"dropout; convert_model(model, to={variant!r}) converts a model whose "
                f"dropouts are all of the other variant."
            )
    consumers = dropout_consumers(model)
    if optimizer is None:
        optimizer = getattr(model, "optimizer", None)
    returned = False
    if isinstance(optimizer, keras.optimizers.MultiOptimizer):
        # one convert_model returned: converting back needs its default optimizer everywhere
        optimizer, returned = unmapped_optimizer(optimizer, model, direction), True
    if not dropout_layers(model):
        warnings.warn(
            f"model {model.name!r} has no dropout layer: convert_model returns a copy "
            "(same layers, weights and optimizer); nothing was converted.",
            NothingToConvertWarning,
            stacklevel=2,
        )
    out = _clone(model, variant, _mapped_hyperparameters(consumers, direction))
    out.set_weights(converted_weights(model, direction))
    share_masks(model, out)
    if optimizer is None:
        mapped = None
    elif consumers and not returned:
        mapped = mapped_multi_optimizer(out, optimizer, direction)  # refuses a trained one
    else:
        check_untrained(optimizer)  # its state would not carry over to the clone
        mapped = clone_optimizer(optimizer)
    new_consumers = tuple(dropout_consumers(out))
    return ConvertedModel(out, mapped, direction, new_consumers)


def mapped_twin(model: keras.Model, variant: Variant, *, hyperparameters: str = "mapped") -> keras.Model:
    """The twin of ``model`` (:func:`twin`) that computes the same function: ``convert_model(...).model``.

    Every kernel that consumes dropped units is rescaled, ``W -> W / p`` for
    ``variant='standard'`` (``model`` uses Keras's dropout) or ``W -> p W``
    for ``variant='inverted'``, with ``p = 1 - rate`` the keep probability
    (the product of the keep probabilities behind consecutive dropouts);
    biases and every other weight are copied unchanged. Masks are shared.

    Parameters
    ----------
    model, variant
        As :func:`convert_model`'s ``model`` and ``to``.
    hyperparameters
        ``'mapped'`` (default): the consuming kernels' regularisers,
        constraints and initialisers are mapped too (:func:`convert_model`),
        so the twin also TRAINS like ``model``. ``'copied'``: they are copied
        unmapped, a twin that computes the same function but trains
        differently under an L2 penalty, max-norm or re-initialisation: the
        book's negative control, not for use.

    Raises
    ------
    dropout_lib.validation.NotConvertibleError
        As :func:`convert_model` (``'copied'``: if the graph admits no exact
        map of the weights).

    Examples
    --------
    >>> import keras
    >>> inverted = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5, seed=1),
    ...                              keras.layers.Dense(2, kernel_regularizer=keras.regularizers.L2(0.01))])
    >>> standard = mapped_twin(inverted, "standard")
    >>> round(float(standard.layers[1].kernel_regularizer.l2), 6)   # 0.01 * p**2
    0.0025
    """
    variant = check_variant(variant)
    if hyperparameters == "mapped":
        return convert_model(model, to=variant).model
    if hyperparameters != "copied":
        raise ValueError(f"hyperparameters must be 'mapped' or 'copied'; got {hyperparameters!r}.")
    out = twin(model, variant)
    convert_weights(model, out, direction_to(variant))
    return out


def scale_consumer_biases(model: keras.Model, direction: str) -> int:
    """Negative control: give each consuming bias the kernel's factor too (in place).

    ``b -> s b`` with ``s = 1/p`` (``'to_standard'``) or ``p``
    (``'to_inverted'``) for every layer whose kernel :func:`mapped_twin`
    rescales. This is the WRONG map: ``b`` is added after ``W d(h)`` and is
    not multiplied by the mask, so the twin's pre-activations become
    ``z + (s - 1) b`` and the functions differ wherever ``b != 0``.

    Returns
    -------
    int
        The number of biases rescaled (consumers without a bias are skipped).

    Examples
    --------
    >>> import keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5), keras.layers.Dense(2)])
    >>> scale_consumer_biases(model, "to_standard")
    1
    """
    n = 0
    for consumer in dropout_consumers(model):
        if consumer.kind not in KERNEL_KINDS:
            continue
        bias = getattr(consumer.layer, "bias", None)
        if bias is None:
            continue
        s = kernel_scale(consumer.keep_prob, direction)  # type: ignore[arg-type]
        bias.assign(np.asarray(bias.numpy()) * s)
        n += 1
    return n


def drawn_masks(layer: keras.layers.Layer, x: ArrayLike, calls: int = 3) -> list[NDArray]:
    """The binary keep masks ``layer`` draws in ``calls`` training calls on ``x``.

    Each call ``layer(x, training=True)`` advances the layer's generator; the
    mask is read off the output as ``y != 0`` (1 = kept), broadcast to
    ``x``'s shape, which needs every entry of ``x`` nonzero. Works for both
    variants and any noise shape.

    Examples
    --------
    >>> import keras, numpy as np
    >>> masks = drawn_masks(keras.layers.Dropout(0.5, seed=1), np.ones((1, 6), dtype="float32"), calls=2)
    >>> len(masks), masks[0].shape, set(np.unique(masks[0])) <= {0.0, 1.0}
    (2, (1, 6), True)
    """
    x = np.asarray(x)
    if not np.all(x != 0):
        raise ValueError(
            "x has zero entries, so a kept unit could not be told from a dropped "
            "one; use e.g. x = rng.normal(size=shape)."
        )
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        raise ValueError(f"calls must be a positive integer; got {calls!r}.")
    return [(_numpy(layer(x, training=True)) != 0).astype(np.float64) for _ in range(calls)]


#: Rounding budget per layer that consumes dropped units, in units of eps.
ULPS_PER_LAYER = 4


def rounding_tolerance(n_consumers: int, dtype: Any) -> float:
    """Tolerance for ``||y_std - y_inv|| / ||y_inv||`` between mapped twins: ``4 K eps``.

    The twins evaluate the same real-number expression but round the factor
    ``1/p`` at different places: ``fl(h / p)`` times ``W`` in the inverted
    net, ``fl(W / p)`` times ``h`` in the standard one. Each product carries
    two roundings of relative size at most ``u = eps / 2`` on either side, so
    the two products differ by at most ``2 eps`` relative, and with
    independent signs these differences mostly cancel in the sums (observed:
    1 to 2.3 ``eps`` for nets of up to four consuming layers, float64 and
    float32). Each of the ``K = n_consumers`` layers adds its own such
    difference and passes earlier ones on with a gain near 1, so the budget
    is ``ULPS_PER_LAYER * K * eps`` with ``eps = numpy.finfo(dtype).eps``
    (``2**-52`` for float64, ``2**-23`` for float32). A wrong map (a missing
    ``p``, a scaled bias) is off by ``O(1 - p)``, about ``1e-2`` or more.

    Examples
    --------
    >>> rounding_tolerance(2, "float64") == 8 * 2.0**-52
    True
    """
    integer = isinstance(n_consumers, (int, np.integer)) and not isinstance(n_consumers, bool)
    if not integer or n_consumers < 1:
        raise ValueError(
            f"n_consumers must be a positive integer (the number of layers whose "
            f"kernel consumes dropped units); got {n_consumers!r}."
        )
    eps = np.finfo(np.dtype(dtype)).eps
    return float(ULPS_PER_LAYER * int(n_consumers) * eps)


@dataclass(frozen=True)
class TwinComparison:
    """How far apart two models' outputs are, call for call.

    Attributes
    ----------
    training
        ``||y_a - y_b|| / ||y_b||`` for each ``model(x, training=True)`` call
        (fresh, shared masks each call).
    inference
        The same for ``model.predict(x)`` (``training=False``).
    bitwise
        Whether every output pair was identical bit for bit.

    Examples
    --------
    >>> TwinComparison(training=(1e-16, 3e-16), inference=2e-16, bitwise=False).worst
    3e-16
    """

    training: tuple[float, ...]
    inference: float
    bitwise: bool

    @property
    def worst(self) -> float:
        """The largest relative difference, training and inference."""
        return max(self.training + (self.inference,))


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """Silence TensorFlow's Python warnings (not errors) for the duration.

    Each model traces its own predict function; after five traces in a row
    TensorFlow warns about "retracing" on stderr, a performance hint that a
    stored notebook must not record. This is the package's one TensorFlow
    log silencer; it changes no environment variable.

    Examples
    --------
    >>> with quiet_tensorflow():
    ...     pass
    """
    logger = logging.getLogger("tensorflow")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


_quiet_tensorflow_warnings = quiet_tensorflow


@contextlib.contextmanager
def keras_float64() -> Iterator[None]:
    """Build layers AND optimizer variables in float64 for the duration.

    Sets both ``keras.config.floatx`` (an optimizer's learning rate lives in
    a variable of that type) and the global dtype policy (``set_floatx``
    alone does not reach layers once the policy is cached); restores both
    afterwards. The maps of :mod:`dropout_lib.mapping` are exact to float64
    rounding only when both nets and their optimizers are float64.

    Examples
    --------
    >>> import keras
    >>> with keras_float64():
    ...     keras.layers.Dense(2).dtype
    'float64'
    """
    old_floatx, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(old_floatx)
        keras.config.set_dtype_policy(old_policy)


def _numpy(y: Any) -> NDArray:
    return np.asarray(keras.ops.convert_to_numpy(y))


def compare_twins(
    model_a: keras.Model,
    model_b: keras.Model,
    x: ArrayLike,
    *,
    training_calls: int = 3,
    predict: bool = True,
) -> TwinComparison:
    """Run both models on ``x``: ``training_calls`` training calls, then inference.

    Each training call, ``model(x, training=True)``, draws fresh masks in both
    models; with shared generator states (:func:`twin`) the two draw the same
    ones. Inference is ``model.predict(x)`` in one batch (Keras passes
    ``training=False``), or the eager ``model(x, training=False)`` with
    ``predict=False`` (no graph to trace: faster for many small models).
    Returns the relative differences (``model_b`` is the reference).

    Examples
    --------
    >>> import keras, numpy as np
    >>> inverted = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5, seed=1),
    ...                              keras.layers.Dense(2)])
    >>> result = compare_twins(inverted, mapped_twin(inverted, "standard"), np.ones((4, 3)), predict=False)
    >>> result.worst <= rounding_tolerance(1, "float32")
    True
    """
    integer = isinstance(training_calls, int) and not isinstance(training_calls, bool)
    if not integer or training_calls < 0:
        raise ValueError(f"training_calls must be a non-negative integer; got {training_calls!r}.")
    x = np.asarray(x)
    training, bitwise = [], True
    for _ in range(training_calls):
        ya, yb = _numpy(model_a(x, training=True)), _numpy(model_b(x, training=True))
        training.append(relative_difference(ya, yb))
        bitwise &= bool(np.array_equal(ya, yb))
    if predict:
        with _quiet_tensorflow_warnings():
            pa = model_a.predict(x, batch_size=len(x), verbose=0)
            pb = model_b.predict(x, batch_size=len(x), verbose=0)
    else:
        pa, pb = _numpy(model_a(x, training=False)), _numpy(model_b(x, training=False))
    bitwise &= bool(np.array_equal(pa, pb))
    return TwinComparison(tuple(training), relative_difference(pa, pb), bitwise)


def compare_mlp_twins(
    params_inv: Mapping[str, NDArray],
    x: ArrayLike,
    *,
    keep_probs: Sequence[float],
    masks: Sequence[NDArray | None],
    activation: mlp.Activation = "relu",
    scale_biases: bool = False,
) -> TwinComparison:
    """The numpy counterpart of :func:`compare_twins`, for :mod:`dropout_lib.exact.mlp` nets.

    Builds the standard twin of the inverted net ``params_inv``,
    ``W_k -> W_k / p_k``, biases unchanged (:func:`dropout_lib.exact.mlp.to_standard_params`;
    ``keep_probs`` are the keep probabilities ``p_k``, not Keras's rates), and
    compares the two outputs in one training pass with the given ``masks``
    (shared) and at inference; differences are relative to the inverted net's
    outputs.

    ``scale_biases=True`` is the negative control: the biases get the
    kernels' factor too, ``b_k -> b_k / p_k`` where ``p_k < 1``.

    Examples
    --------
    >>> import numpy as np
    >>> from dropout_lib.exact import mlp
    >>> params = mlp.init_params((3, 4, 2), rng=0)
    >>> masks = mlp.sample_masks((3, 4, 2), (0.8, 0.5), batch=5, rng=1)
    >>> result = compare_mlp_twins(params, np.ones((5, 3)), keep_probs=(0.8, 0.5), masks=masks)
    >>> result.worst <= rounding_tolerance(2, "float64")
    True
    """
    params_std = mlp.to_standard_params(params_inv, keep_probs)
    if scale_biases:
        for name, p in mlp.consuming_weights(keep_probs).items():
            params_std["b" + name[1:]] = params_std["b" + name[1:]] / p
    kw = dict(keep_probs=keep_probs, activation=activation)
    z_inv, _ = mlp.forward(params_inv, x, variant="inverted", masks=masks, training=True, **kw)
    z_std, _ = mlp.forward(params_std, x, variant="standard", masks=masks, training=True, **kw)
    y_inv = mlp.predict(params_inv, x, variant="inverted", **kw)
    y_std = mlp.predict(params_std, x, variant="standard", **kw)
    bitwise = bool(np.array_equal(z_std, z_inv) and np.array_equal(y_std, y_inv))
    return TwinComparison((relative_difference(z_std, z_inv),), relative_difference(y_std, y_inv), bitwise)


# ------------------------------------------------------------ seeing exactness


@dataclass(frozen=True)
class Verification:
    """What :func:`verify` measured, step by step.

    Attributes
    ----------
    gaps
        After each training step ``t`` (``gaps[0]`` before any), the largest
        difference between a weight of the source and the same weight of the
        conversion mapped back (a consuming kernel divided by its factor
        ``s``), relative to the source's largest weight:
        ``max_v ||v_tgt / s - v_src||_inf / max_v ||v_src||_inf``.
    controls
        The same distance between the source and a copy of it whose every
        float weight was moved by one ulp, trained alike: how far rounding
        alone carries a run on this model.
    tolerance_factor
        ``10 * ULPS_PER_LAYER * K`` (``K`` the layers that absorb a factor):
        the conversion rounds ``p`` at other places, a few ulps per such
        layer and step (:func:`rounding_tolerance`), where the control starts
        one ulp apart; both then grow at the model's own rate (the factor 10
        bounds the gain, as in the package's tests).

    Examples
    --------
    >>> Verification(gaps=(0.0, 2e-16), controls=(1e-16, 3e-16), tolerance_factor=40.0).exact
    True
    """

    gaps: tuple[float, ...]
    controls: tuple[float, ...]
    tolerance_factor: float

    @property
    def conclusive(self) -> bool:
        """Whether the control stays small enough to tell rounding from a wrong map.

        A wrong map is apart by ``O(1 - p)``, a percent or more of the
        weights; the verdict is conclusive while ``tolerance_factor`` times
        every control stays below ``1e-3``. A model that turns one ulp into
        a large difference within the steps (tiny batches through many
        normalisations) makes no verdict possible: fewer steps, a larger
        batch, or :func:`compare_twins` on the functions before training.
        """
        return self.tolerance_factor * max(self.controls) < 1e-3

    @property
    def exact(self) -> bool:
        """Conclusive, and every step's gap within ``tolerance_factor * max(control, eps)``."""
        eps = float(np.finfo(np.float64).eps)
        within = all(g <= self.tolerance_factor * max(c, eps) for g, c in zip(self.gaps, self.controls))
        return self.conclusive and within


#: Attributes that may hold a mapped object a config would round (an L2 factor
#: stored as numpy.float64 becomes a Python float, which Keras casts through float32):
#: every attribute convert_model maps (a residual producer's bias, gamma and beta
#: included, and its activity regularizer).
_MAPPED_ATTRIBUTES = tuple(
    f"{prefix}_{suffix}"
    for prefix in ("kernel", "depthwise", "bias", "gamma", "beta", "moving_mean", "moving_variance")
    for suffix in ("regularizer", "constraint", "initializer")
) + ("activity_regularizer", "epsilon")


def _copy_attributes(source: Any, target: Any) -> None:
    for name in _MAPPED_ATTRIBUTES:
        if name in vars(source):  # instance attributes only (an RNN's are its cell's)
            _set_mapped(target, name, vars(source)[name])
    for part in ("cell", "forward_layer", "backward_layer"):  # an RNN's cell, a Bidirectional's RNNs
        if hasattr(source, part) and hasattr(target, part):
            _copy_attributes(getattr(source, part), getattr(target, part))


def _copy_model(model: keras.Model) -> keras.Model:
    """A copy with the same weights, mapped attributes and generator states (the same masks)."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        new = layer.__class__.from_config(layer.get_config())
        _copy_attributes(layer, new)
        _copy_lookup_state(layer, new)
        return new

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    for a, b in zip(model._flatten_layers(include_self=False), copy._flatten_layers(include_self=False)):
        for gen_a, gen_b in zip(a._seed_generators, b._seed_generators):
            _copy_state(gen_a, gen_b)
    return copy


def _one_ulp_up(value: NDArray) -> NDArray:
    """``value`` moved up by one ulp of the precision the backend computes in.

    Keras 3.15.1's torch backend multiplies float64 matrices at float32
    precision (gaps of ``1e-8`` where TensorFlow and JAX give ``1e-16``), so a
    one-float64-ulp control would be rounded away there: it moves by one
    float32 ulp instead.
    """
    if keras.backend.backend() == "torch" and value.dtype == np.float64:
        return value + np.spacing(value.astype(np.float32)).astype(np.float64)
    return np.nextafter(value, np.inf)


def _weight_gap(source: keras.Model, target: keras.Model, factor: Mapping[str, float]) -> float:
    """``max_v ||v_tgt / f_v - v_src||_inf / max_v ||v_src||_inf`` over the float variables.

    Relative to the model's largest weight, not each variable's: a variable
    whose gradient is zero in exact arithmetic (an attention key's bias) moves
    by rounding noise alone, and its own relative change means nothing.
    """
    num, den = 0.0, 0.0
    for w, v in zip(source.weights, target.weights):
        a, b = np.asarray(_numpy(w), np.float64), np.asarray(_numpy(v), np.float64) / factor.get(v.path, 1.0)
        if np.asarray(_numpy(w)).dtype.kind == "f" and a.size:
            num, den = max(num, float(np.max(np.abs(b - a)))), max(den, float(np.max(np.abs(a))))
    return num / den if den > 0 else num


def verify(
    source: keras.Model,
    converted: ConvertedModel,
    x: ArrayLike,
    y: ArrayLike,
    steps: int,
    *,
    optimizer: keras.optimizers.Optimizer | None = None,
    loss: Any = "mse",
    batch_size: int | None = None,
    run_eagerly: bool = False,
) -> Verification:
    r"""Train copies of ``source`` and of ``converted.model`` in step and report the gap per step.

    On a real architecture float64 training is chaotic: after a few dozen
    steps a copy moved by one ulp ends as far from the source as anything
    else, so final weights cannot tell an exact conversion from a wrong one.
    The gap *per step*, beside that one-ulp control, can: an exact
    conversion stays within a few ulps per absorbing layer of the control at
    every step (:attr:`Verification.exact`), a wrong one is ``O(1 - p)``
    apart from the first step.

    Copies are trained (``source``, ``converted.model`` and their optimizers
    are not modified): the source's with a clone of ``optimizer`` (default:
    the optimizer ``source`` was compiled with), the conversion's with the
    map of that optimizer (:func:`dropout_lib.mapping.mapped_multi_optimizer`),
    the control (every float weight of the source moved by one ulp,
    :func:`numpy.nextafter`; on Keras's torch backend, which in Keras 3.15.1
    computes float64 matrix products at float32 precision, by one float32
    ulp, the precision the products keep) with a clone. All three draw the same masks
    (generator states copied) and see the same batches: ``x[i*b:(i+1)*b]``
    for step ``i``, ``b = batch_size`` (default ``len(x) // steps``). After
    step ``t`` a consuming kernel compares as ``W_tgt / s`` with ``W_src``
    (``s = 1/p`` to standard), a BatchNorm's moving statistics as ``/ t`` and
    ``/ t**2``. ``run_eagerly=True`` compiles the copies without tracing
    (faster for a few steps of a small model).

    Examples
    --------
    >>> import keras, numpy as np
    >>> import dropout_lib as dl
    >>> with dl.twins.keras_float64():
    ...     paper = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"),
    ...                               dl.StandardDropout(0.5, seed=1), keras.layers.Dense(2)])
    ...     ported = dl.convert_model(paper, to="inverted")
    ...     x, y = np.ones((8, 3)), np.zeros((8, 2))
    ...     result = dl.verify(paper, ported, x, y, steps=2, optimizer=keras.optimizers.SGD(0.1))
    >>> len(result.gaps), result.exact
    (3, True)
    """
    if not isinstance(converted, ConvertedModel):
        raise TypeError(f"converted must be what convert_model returns; got {type(converted).__name__}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}.")
    x, y = np.asarray(x), np.asarray(y)
    b = batch_size if batch_size is not None else len(x) // steps
    if b < 1 or b * steps > len(x):
        raise ValueError(f"{steps} steps of batch {b} need {steps * b} rows; x has {len(x)}.")
    optimizer = optimizer if optimizer is not None else getattr(source, "optimizer", None)
    if optimizer is None:
        raise ValueError("pass optimizer= (the source is not compiled): verify trains with it.")
    runs = {
        "source": _copy_model(source),
        "target": _copy_model(converted.model),
        "control": _copy_model(source),
    }
    for v in runs["control"].weights:
        value = np.asarray(_numpy(v))
        if value.dtype.kind == "f":
            v.assign(_one_ulp_up(value))
    target_optimizer = mapped_multi_optimizer(runs["target"], optimizer, converted.direction)
    runs["source"].compile(optimizer=clone_optimizer(optimizer), loss=loss, run_eagerly=run_eagerly)
    runs["control"].compile(optimizer=clone_optimizer(optimizer), loss=loss, run_eagerly=run_eagerly)
    runs["target"].compile(optimizer=target_optimizer, loss=loss, run_eagerly=run_eagerly)
    factor = {
        v.path: f
        for c in dropout_consumers(runs["target"])
        for v, f in zip(c.variables, c.scales(converted.direction))
    }
    n_absorbing = max(1, len(converted.consumers))
    gaps = [_weight_gap(runs["source"], runs["target"], factor)]
    controls = [_weight_gap(runs["source"], runs["control"], {})]
    with quiet_tensorflow():
        for i in range(steps):
            batch = slice(i * b, (i + 1) * b)
            for model in runs.values():
                model.train_on_batch(x[batch], y[batch])
            gaps.append(_weight_gap(runs["source"], runs["target"], factor))
            controls.append(_weight_gap(runs["source"], runs["control"], {}))
    return Verification(tuple(gaps), tuple(controls), float(10 * ULPS_PER_LAYER * n_absorbing))
