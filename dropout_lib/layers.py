"""The paper's dropout as a Keras layer: a mask-for-mask twin of ``keras.layers.Dropout``.

``StandardDropout(rate)`` takes Keras's ``rate`` (the DROP probability), so it
is a drop-in replacement for ``keras.layers.Dropout(rate)``; its keep
probability is ``keep_prob = 1 - rate``. With ``m`` the binary keep mask,

* training (``training=True``, as ``fit`` passes):  ``m * x``  (no rescaling);
* inference (``training=False``, as ``predict``/``evaluate`` pass): ``keep_prob * x``.

``keras.layers.Dropout`` computes ``m * x / keep_prob`` and ``x`` instead.

Given the same integer ``seed``, both layers draw the *same* masks, call for
call: ``StandardDropout`` asks Keras's own ``backend.random.dropout`` for the
mask (with the same seed generator, shape and dtype), so the two variants can
be compared on identical randomness.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from dropout_lib.validation import check_rate

__all__ = ["StandardDropout"]


def _check_noise_shape(noise_shape: Any) -> tuple[int | None, ...] | None:
    if noise_shape is None:
        return None
    if isinstance(noise_shape, str):
        raise ValueError(
            f"noise_shape must be a tuple of positive integers or None; got the string {noise_shape!r}."
        )
    try:
        dims = tuple(noise_shape)
    except TypeError:
        raise ValueError(
            f"noise_shape must be a tuple of positive integers or None; got {noise_shape!r}."
        ) from None
    for i, dim in enumerate(dims):
        if dim is None:
            continue
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(
                f"noise_shape[{i}] must be a positive integer or None; got {dim!r} in noise_shape={dims}."
            )
    return dims


@keras.saving.register_keras_serializable(package="dropout_lib")
class StandardDropout(keras.layers.Layer):
    """Dropout as in Srivastava et al. (2014): mask in training, scale by ``keep_prob`` at inference.

    Parameters
    ----------
    rate
        Keras's meaning: the probability of DROPPING a unit, in ``[0, 1)``.
        The paper's keep probability is ``keep_prob = 1 - rate``.
    noise_shape
        Shape of the binary mask, broadcast against the input as in
        ``keras.layers.Dropout``; ``None`` entries take the input's dimension.
        For inputs ``(batch, steps, features)``, ``(None, 1, None)`` shares one
        mask across steps.
    seed
        Integer seed. Two layers with the same seed, this one and
        ``keras.layers.Dropout``, draw the same sequence of masks.

    Call arguments
    --------------
    inputs
        A floating-point tensor. Integer or boolean inputs raise ``TypeError``
        (a mask times an integer has no inference-time scaling that stays an
        integer); cast them to a float dtype first.
    training
        ``True``: return ``m * inputs`` with ``m_i ~ Bernoulli(keep_prob)``.
        ``False`` (the default, and what ``predict``/``evaluate`` pass):
        return ``keep_prob * inputs``.

    Examples
    --------
    >>> import numpy as np
    >>> layer = StandardDropout(0.25, seed=3)      # Keras's rate 0.25: keep_prob p = 0.75
    >>> x = np.ones((2, 4), dtype="float32")
    >>> layer(x, training=False).numpy()           # p * x at inference
    array([[0.75, 0.75, 0.75, 0.75],
           [0.75, 0.75, 0.75, 0.75]], dtype=float32)
    >>> import keras
    >>> same = keras.layers.Dropout(0.25, seed=3)(x, training=True).numpy() != 0
    >>> bool(np.array_equal(layer(x, training=True).numpy() != 0, same))   # the same mask
    True
    """

    def __init__(
        self,
        rate: float,
        noise_shape: Sequence[int | None] | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.rate = check_rate(rate)
        self.keep_prob = 1.0 - self.rate
        self.noise_shape = _check_noise_shape(noise_shape)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an integer or None; got {seed!r}.")
        self.seed = seed
        if self.rate > 0:
            # Same construction as keras.layers.Dropout, hence the same masks.
            self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True
        self._build_at_init()

    def _check_inputs(self, inputs: Any) -> None:
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        if "float" not in dtype:
            raise TypeError(
                f"StandardDropout needs floating-point inputs; got dtype {dtype}. "
                f"Cast first, e.g. keras.ops.cast(x, 'float32')."
            )
        if self.noise_shape is None:
            return
        shape = tuple(inputs.shape)
        if len(self.noise_shape) != len(shape):
            raise ValueError(
                f"noise_shape={self.noise_shape} has {len(self.noise_shape)} "
                f"dimensions but the input has {len(shape)} (shape {shape}); give "
                f"one entry per input dimension (None keeps the input's size)."
            )
        for i, (n, s) in enumerate(zip(self.noise_shape, shape)):
            if n is not None and n != 1 and s is not None and n != s:
                raise ValueError(
                    f"noise_shape={self.noise_shape} does not broadcast to the "
                    f"input shape {shape}: dimension {i} is {n}, but must be 1, "
                    f"None or {s}."
                )

    def keep_mask(self, inputs: Any) -> Any:
        """Draw the next binary keep mask, exactly as ``keras.layers.Dropout`` would.

        Returns a tensor of the inputs' dtype and shape holding 0 and 1 (the
        mask broadcast over any ``noise_shape`` dimensions of size 1). Each
        call advances the seed generator by one draw, like a training call.
        """
        self._check_inputs(inputs)
        return self._draw_mask(inputs)

    def _draw_mask(self, inputs: Any) -> Any:
        if self.rate == 0:
            return ops.ones_like(inputs)
        scaled = keras.random.dropout(
            ops.ones_like(inputs),
            self.rate,
            noise_shape=self.noise_shape,
            seed=self.seed_generator,
        )
        return ops.cast(ops.not_equal(scaled, 0), inputs.dtype)

    def call(self, inputs: Any, training: bool = False) -> Any:
        self._check_inputs(inputs)
        if training:
            if self.rate == 0:
                return inputs
            # where(), not mask * x: a dropped inf or nan gives 0 (not nan) and a
            # dropped negative gives +0.0, exactly as keras.layers.Dropout does.
            kept = ops.not_equal(self._draw_mask(inputs), 0)
            return ops.where(kept, inputs, ops.zeros_like(inputs))
        keep_prob = ops.convert_to_tensor(self.keep_prob, dtype=inputs.dtype)
        return inputs * keep_prob

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"rate": self.rate, "noise_shape": self.noise_shape, "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="dropout_lib")
class StandardMultiHeadAttention(keras.layers.MultiHeadAttention):
    """``keras.layers.MultiHeadAttention`` with the paper's dropout on the attention probabilities.

    Keras drops attention probabilities with inverted dropout, ``A m / p``;
    this layer uses :class:`StandardDropout`, ``A m`` in training and ``p A``
    at inference, with the same ``dropout`` rate (Keras's drop probability
    ``1 - p``), seed and masks. The output projection ``W_o`` reads
    ``einsum(A_dropped, V)`` linearly, so a ``MultiHeadAttention`` with
    ``W_o`` and this layer with ``W_o / p`` compute the same function
    (chapter 8); :func:`dropout_lib.twins.convert_model` builds one from the
    other.

    Examples
    --------
    >>> import keras, numpy as np
    >>> attention = StandardMultiHeadAttention(num_heads=1, key_dim=2, dropout=0.5, seed=1)
    >>> x = np.ones((1, 3, 2), dtype="float32")
    >>> tuple(attention(x, x).shape), type(attention._dropout_layer).__name__
    ((1, 3, 2), 'StandardDropout')
    """

    def _build_attention(self, rank: int) -> None:
        super()._build_attention(rank)
        inverted = self._dropout_layer
        self._dropout_layer = StandardDropout(self._dropout, dtype=self.dtype_policy, seed=self.seed)
        if inverted in self._layers:  # Keras tracks the replaced Dropout: forget it
            self._layers.remove(inverted)


# The package's other Keras classes register when their modules run: import them
# too (unless one is being imported now, and then finishes the chain itself), so
# that keras.models.load_model finds them after any import of dropout_lib.
if "dropout_lib.conversion" not in sys.modules:
    import dropout_lib.conversion  # noqa: E402, F401
