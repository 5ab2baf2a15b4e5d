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
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from numpy.typing import ArrayLike, NDArray

from dropout_lib.conversion import convert_weights, dropout_consumers
from dropout_lib.exact import mlp
from dropout_lib.layers import StandardDropout
from dropout_lib.mapping import kernel_scale
from dropout_lib.reference import Variant, check_variant

__all__ = [
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
            f"model {model.name!r} is not built; give it a keras.Input (or call it "
            "on data) first."
        )
    return model


def _is_dropout(layer: Any) -> bool:
    return isinstance(layer, (_L.Dropout, StandardDropout))


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
    """
    return [layer for layer in model._flatten_layers(include_self=False) if _is_dropout(layer)]


def spatial_noise_shape(layer: keras.layers.Layer) -> tuple[int | None, ...]:
    """The ``noise_shape`` with which ``keras.layers.Dropout`` draws ``layer``'s masks.

    ``SpatialDropout{1,2,3}D`` drops whole feature maps: one mask entry per
    (example, channel), broadcast over the spatial axes. channels_last:
    ``(None, 1, None)``, ``(None, 1, 1, None)``, ``(None, 1, 1, 1, None)``;
    channels_first (2D, 3D): ``(None, None, 1, 1)``, ``(None, None, 1, 1, 1)``.
    ``None`` takes the input's size at call time.
    """
    if not isinstance(layer, _SPATIAL):
        raise TypeError(
            f"layer must be a SpatialDropout1D/2D/3D; got {type(layer).__name__}."
        )
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
    kwargs = dict(noise_shape=noise_shape, seed=layer.seed, dtype=layer.dtype_policy,
                  name=layer.name)
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
            raise ValueError(
                f"dropout {a.name!r} and {b.name!r}: only one has a seed generator."
            )
        if gen_a is not None:
            gen_b.state.assign(gen_a.state.value)


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
        :func:`mapped_twin` for the same function), each dropout swapped as in
        the module's table, with its generator state copied
        (:func:`share_masks`), so both draw the same masks call for call.

    Raises
    ------
    TypeError
        For subclassed models or unknown ``Dropout`` subclasses.
    ValueError
        If a dropout layer already has the twin's variant.
    """
    variant = check_variant(variant)
    _check_model(model)
    for layer in dropout_layers(model):
        if _variant_of(layer) == variant:
            raise ValueError(
                f"model already has {variant} dropout {layer.name!r} "
                f"({type(layer).__name__}); twin(model, {variant!r}) swaps every "
                f"dropout of the other variant into {variant} dropout."
            )

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if _is_dropout(layer):
            return _swap(layer, variant)
        return layer.__class__.from_config(layer.get_config())

    out = keras.models.clone_model(model, clone_function=clone)
    out.set_weights(model.get_weights())
    share_masks(model, out)
    return out


def mapped_twin(model: keras.Model, variant: Variant) -> keras.Model:
    """The twin of ``model`` (:func:`twin`) that computes the same function.

    Every kernel that consumes dropped units is rescaled, ``W -> W / p`` for
    ``variant='standard'`` (``model`` uses Keras's dropout) or ``W -> p W``
    for ``variant='inverted'``, with ``p = 1 - rate`` the keep probability
    (the product of the keep probabilities behind consecutive dropouts);
    biases and every other weight are copied unchanged
    (:func:`dropout_lib.conversion.convert_weights`). Masks are shared.

    Raises
    ------
    dropout_lib.conversion.NotConvertibleError
        If the graph admits no exact map (e.g. a dropped tensor reaches a
        ``tanh`` or a normalisation layer before any kernel).
    """
    out = twin(model, variant)
    direction = "to_standard" if variant == "standard" else "to_inverted"
    convert_weights(model, out, direction)
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
    """
    n = 0
    for consumer in dropout_consumers(model):
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
    """
    integer = isinstance(n_consumers, (int, np.integer)) and not isinstance(n_consumers, bool)
    if not integer or n_consumers < 1:
        raise ValueError(
            f"n_consumers must be a positive integer (the number of layers whose "
            f"kernel consumes dropped units); got {n_consumers!r}."
        )
    eps = np.finfo(np.dtype(dtype)).eps
    return float(ULPS_PER_LAYER * int(n_consumers) * eps)


def relative_difference(a: ArrayLike, b: ArrayLike) -> float:
    """Return ``||a - b|| / ||b||`` (Frobenius norms, computed in float64).

    The absolute difference ``||a - b||`` where ``||b|| = 0``.
    """
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    if a64.shape != b64.shape:
        raise ValueError(f"shapes differ: {a64.shape} vs {b64.shape}.")
    diff = float(np.linalg.norm(a64 - b64))
    ref = float(np.linalg.norm(b64))
    return diff / ref if ref > 0.0 else diff


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
    """

    training: tuple[float, ...]
    inference: float
    bitwise: bool

    @property
    def worst(self) -> float:
        """The largest relative difference, training and inference."""
        return max(self.training + (self.inference,))


@contextlib.contextmanager
def _quiet_tensorflow_warnings() -> Iterator[None]:
    """Silence TensorFlow's Python warnings (not errors) for the duration.

    Each model traces its own predict function; after five traces in a row
    TensorFlow warns about "retracing" on stderr, a performance hint that a
    stored notebook must not record.
    """
    logger = logging.getLogger("tensorflow")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


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
    """
    integer = isinstance(training_calls, int) and not isinstance(training_calls, bool)
    if not integer or training_calls < 0:
        raise ValueError(
            f"training_calls must be a non-negative integer; got {training_calls!r}."
        )
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
    return TwinComparison(
        (relative_difference(z_std, z_inv),), relative_difference(y_std, y_inv), bitwise
    )
