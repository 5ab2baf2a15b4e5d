"""Producer-side maps: residual branches and dropout on attention probabilities.

Notation: ``keep_prob`` is the paper's ``p``, the probability that a unit is
kept; Keras's ``rate`` is the DROP probability ``1 - p``. Every model builder
here takes Keras's ``rate``, as ``keras.layers.Dropout`` does.

The consumer-side map of the book (``W -> W / p`` on the kernels that read a
dropped tensor, biases unchanged) needs every reader of the dropped tensor to
be a linear map that reads nothing else. Two layers that every Transformer has
break that hypothesis:

* a residual branch ``y = x + d(F(x))``: the reader of ``d(F(x))`` is the
  addition, which also reads the undropped ``x``;
* dropout on attention probabilities (``MultiHeadAttention(dropout=...)``):
  the dropped probabilities ``d(S)`` are multiplied by the values ``V``.

The factor can be absorbed on the other side of the dropout instead. If the
dropped tensor is produced by an affine map whose parameters nothing else
uses, ``h = u A + a``, then in the standard net ``(A, a) -> (A / p, a / p)``
gives ``m * h / p``, the inverted net's training output, and ``p * h / p = h``,
its inference output. For attention, the values ``V = x W_v + b_v`` are such a
map (``d(S) V`` is linear in ``V``), and so is the output projection
``W_o`` that reads ``d(S) V`` (a consumer-side map: kernel only).

Helpers:

* :func:`residual_model` and :func:`attention_model` build the two
  architectures with either variant (:class:`StandardDropoutAttention` is
  ``MultiHeadAttention`` with the paper's dropout, mask for mask);
* :func:`absorbing` names the variables that absorb a dropout's factor
  (``{path: p}``), :func:`combine` merges several (a variable that absorbs
  two dropouts takes the product of their ``p``);
* :func:`copy_scaled` copies the inverted model's weights into the standard
  one, dividing each absorbing variable by its ``p``;
* :func:`mapped_optimizer` gives those variables the mapped optimizer
  (:func:`dropout_lib.mapping.to_standard`) and every other variable the
  original;
* :func:`scaled_gaps` compares two recorded trajectories in the inverted
  model's coordinates;
* :func:`twin_models`, :func:`function_gaps` and :func:`trajectory_gaps`
  put these together: a model and its standard twin, how far apart their
  outputs are, and how far apart their training runs are.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import keras
import numpy as np
from numpy.typing import NDArray

from dropout_lib.layers import StandardDropout
from dropout_lib.mapping import clone_optimizer, to_standard

Variant = Literal["inverted", "standard"]

# Biases start away from 0 (Keras starts them at 0), so that a map that forgets
# to scale a bias fails from the first step instead of after training moves it.
_BIAS = "random_normal"

__all__ = [
    "StandardDropoutAttention",
    "absorbing",
    "attention_model",
    "combine",
    "copy_scaled",
    "function_gaps",
    "mapped_optimizer",
    "residual_model",
    "scaled_gaps",
    "scales_for",
    "trajectory_gaps",
    "transformer_block_model",
    "twin_models",
]


def _dropout(variant: Variant, rate: float, seed: int, name: str) -> keras.layers.Layer:
    if variant == "inverted":
        return keras.layers.Dropout(rate, seed=seed, name=name)
    if variant == "standard":
        return StandardDropout(rate, seed=seed, name=name)
    raise ValueError(
        f"variant must be 'inverted' (Keras's Dropout) or 'standard' (the paper's); got {variant!r}."
    )


def residual_model(
    variant: Variant, *, features: int, hidden: int, outputs: int, rate: float, seed: int
) -> keras.Model:
    """``x -> head(x + d(ffn_out(relu(ffn_in(x)))))``: a Transformer-style residual branch.

    ``d`` is ``keras.layers.Dropout(rate, seed)`` (``variant='inverted'``) or
    :class:`dropout_lib.layers.StandardDropout` (``'standard'``): the same
    masks for the same ``seed``. Layer names ``ffn_in``, ``ffn_out``,
    ``drop``, ``head`` are fixed, so both variants have the same variable
    paths. Kernels are drawn by Keras's default initialiser, biases from
    ``random_normal`` (not 0, so that a map that forgets a bias fails at once),
    both from the global seed: copy weights between the two with
    :func:`copy_scaled`.
    """
    x = keras.Input((features,), name="x")
    h = keras.layers.Dense(hidden, activation="relu", bias_initializer=_BIAS, name="ffn_in")(x)
    f = keras.layers.Dense(features, bias_initializer=_BIAS, name="ffn_out")(h)
    f = _dropout(variant, rate, seed, "drop")(f)
    y = keras.layers.Add(name="residual")([x, f])
    head = keras.layers.Dense(outputs, bias_initializer=_BIAS, name="head")
    return keras.Model(x, head(y), name=f"residual_{variant}")


class StandardDropoutAttention(keras.layers.MultiHeadAttention):
    """``keras.layers.MultiHeadAttention`` with the paper's dropout on the attention probabilities.

    Keras's layer applies ``keras.layers.Dropout(dropout, seed=seed)`` to the
    softmax output ``S`` before multiplying by the values: ``(m * S / p) V``
    in training, ``S V`` at inference (``p = 1 - dropout``). This subclass
    uses :class:`dropout_lib.layers.StandardDropout` with the same rate and
    seed instead, so it draws the same masks: ``(m * S) V`` in training,
    ``(p S) V`` at inference. Everything else is Keras's code.
    """

    def _build_attention(self, rank: int) -> None:
        super()._build_attention(rank)
        self._dropout_layer = StandardDropout(rate=self._dropout, dtype=self.dtype_policy, seed=self.seed)


def attention_model(
    variant: Variant,
    *,
    steps: int,
    features: int,
    heads: int,
    key_dim: int,
    outputs: int,
    rate: float,
    seed: int,
) -> keras.Model:
    """``x -> head(flatten(MHA(x, x)))`` with dropout ``rate`` on the attention probabilities.

    ``variant='inverted'`` uses ``keras.layers.MultiHeadAttention(dropout=rate,
    seed=seed)``, ``'standard'`` :class:`StandardDropoutAttention`; the layer
    is named ``mha`` (variables ``mha/query/...``, ``mha/key/...``,
    ``mha/value/kernel``, ``mha/value/bias``, ``mha/attention_output/...``).
    """
    if variant not in ("inverted", "standard"):
        raise ValueError(f"variant must be 'inverted' or 'standard'; got {variant!r}.")
    cls = keras.layers.MultiHeadAttention if variant == "inverted" else StandardDropoutAttention
    x = keras.Input((steps, features), name="x")
    mha = cls(num_heads=heads, key_dim=key_dim, dropout=rate, seed=seed, bias_initializer=_BIAS, name="mha")
    flat = keras.layers.Flatten(name="flat")(mha(x, x))
    y = keras.layers.Dense(outputs, bias_initializer=_BIAS, name="head")(flat)
    return keras.Model(x, y, name=f"attention_{variant}")


def transformer_block_model(
    variant: Variant,
    *,
    steps: int,
    features: int,
    heads: int,
    key_dim: int,
    outputs: int,
    attention_rate: float,
    residual_rate: float,
    seed: int,
) -> keras.Model:
    """``x -> head(flatten(x + d_res(MHA(x, x))))``: attention dropout and residual dropout in one block.

    The attention layer ``mha`` drops its probabilities with
    ``attention_rate`` (seed ``seed``), the residual dropout ``drop`` drops
    its output with ``residual_rate`` (seed ``seed + 1``); both Keras rates
    (drop probabilities), of Keras's variant or the paper's. The output
    projection ``mha/attention_output`` is the consumer of the first dropout
    and the producer of the second.
    """
    if variant not in ("inverted", "standard"):
        raise ValueError(f"variant must be 'inverted' or 'standard'; got {variant!r}.")
    cls = keras.layers.MultiHeadAttention if variant == "inverted" else StandardDropoutAttention
    x = keras.Input((steps, features), name="x")
    mha = cls(
        num_heads=heads,
        key_dim=key_dim,
        dropout=attention_rate,
        seed=seed,
        bias_initializer=_BIAS,
        name="mha",
    )
    y = keras.layers.Add(name="residual")([x, _dropout(variant, residual_rate, seed + 1, "drop")(mha(x, x))])
    out = keras.layers.Dense(outputs, bias_initializer=_BIAS, name="head")(
        keras.layers.Flatten(name="flat")(y)
    )
    return keras.Model(x, out, name=f"block_{variant}")


def absorbing(model: keras.Model, pattern: str, keep_prob: float) -> dict[str, float]:
    """``{path: keep_prob}`` for the trainable variables of ``model`` whose path fully matches ``pattern``.

    ``keep_prob`` is ``p`` (Keras's ``rate`` is ``1 - p``): the factor by which
    the standard twin divides those variables. Merge the dicts of several
    dropouts with :func:`combine`. Raises ``ValueError`` when no variable
    matches (a misspelt layer name would otherwise map nothing, silently).
    """
    paths = [v.path for v in model.trainable_variables if re.fullmatch(pattern, v.path)]
    if not paths:
        known = ", ".join(v.path for v in model.trainable_variables)
        raise ValueError(f"no trainable variable of {model.name!r} matches {pattern!r}; it has: {known}.")
    if not 0 < keep_prob <= 1:
        raise ValueError(f"keep_prob must be in (0, 1]; got {keep_prob!r}. Keras's rate is 1 - keep_prob.")
    return {path: float(keep_prob) for path in paths}


def combine(*absorbs: Mapping[str, float]) -> dict[str, float]:
    """Merge ``{path: keep_prob}`` dicts; a variable that absorbs several dropouts takes the product.

    By the absorption theorem of chapter 8, applied once per dropout, a
    projection that absorbs the factors of two dropouts is divided by both.
    """
    out: dict[str, float] = {}
    for absorb in absorbs:
        for path, keep_prob in absorb.items():
            out[path] = out.get(path, 1.0) * keep_prob
    return out


def _check_paths(model: keras.Model, absorb: Mapping[str, float]) -> None:
    unknown = set(absorb) - {v.path for v in model.trainable_variables}
    if unknown:
        raise ValueError(f"not trainable variables of {model.name!r}: {sorted(unknown)}.")


def copy_scaled(source: keras.Model, target: keras.Model, absorb: Mapping[str, float]) -> None:
    """Set ``target``'s weights to ``source``'s, dividing each variable in ``absorb`` by its keep probability.

    ``absorb`` maps variable paths to ``p`` (:func:`absorbing`); the result is
    the standard twin's starting point ``theta_S / p``. The two models must
    have the same variables in the same order (the builders here guarantee it).
    """
    src, dst = source.trainable_variables, target.trainable_variables
    if [v.path for v in src] != [v.path for v in dst]:
        raise ValueError("source and target must have the same variables in the same order.")
    _check_paths(source, absorb)
    for s, d in zip(src, dst):
        value = keras.ops.convert_to_numpy(s.value)
        d.assign(value / absorb[s.path] if s.path in absorb else value)


def mapped_optimizer(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, absorb: Mapping[str, float]
) -> keras.optimizers.Optimizer:
    """A ``MultiOptimizer`` for the standard twin: mapped optimizers on ``absorb``, a copy elsewhere.

    A variable at a path of ``absorb`` is the inverted net's divided by its
    ``p`` (Keras's ``rate`` is ``1 - p``) and receives ``p`` times its
    gradient (the corollary of chapter 8), as a consuming kernel
    does, so it takes :func:`dropout_lib.mapping.to_standard` ``(optimizer, p)``;
    every other variable takes a fresh copy of ``optimizer``. Needs
    ``keras.optimizers.MultiOptimizer`` (Keras 3.15 has it).
    """
    _check_paths(model, absorb)
    opt_map = keras.optimizers.OptimizerMap(default_optimizer=clone_optimizer(optimizer))
    by_keep_prob: dict[float, keras.optimizers.Optimizer] = {}
    for path, keep_prob in absorb.items():
        if keep_prob not in by_keep_prob:
            by_keep_prob[keep_prob] = to_standard(optimizer, keep_prob)
        opt_map[re.escape(path)] = by_keep_prob[keep_prob]
    return keras.optimizers.MultiOptimizer(opt_map)


def scaled_gaps(
    reference: Sequence[Sequence[NDArray]],
    other: Sequence[Sequence[NDArray]],
    scales: Sequence[float],
) -> NDArray[np.float64]:
    """``gaps[t] = || S other[t] - reference[t] || / || reference[t] ||`` over all variables at once.

    ``reference`` and ``other`` are trajectories recorded by
    :func:`dropout_lib.book.keras_trajectories.fit_trajectory` (the trainable
    weights before the first step and after every step); ``S`` multiplies
    the other model's variable ``i`` by ``scales[i]`` (``p`` on the absorbing
    variables of a standard twin, 1 elsewhere), mapping it into the
    reference's coordinates. The norm is taken over all variables together
    (a relative gap per variable would divide by the norm of a variable that
    is 0 by design, such as attention's key bias, whose gradient is zero up
    to rounding). Computed in float64.
    """
    if len(reference) != len(other) or not reference:
        raise ValueError(f"trajectories of {len(reference)} and {len(other)} snapshots; record equally many.")
    gaps = np.empty(len(reference))
    for t, (ref, oth) in enumerate(zip(reference, other)):
        if not (len(ref) == len(oth) == len(scales)):
            raise ValueError(f"snapshot {t}: {len(ref)}, {len(oth)} variables and {len(scales)} scales.")
        diff = np.concatenate(
            [
                (s * np.asarray(o, np.float64) - np.asarray(r, np.float64)).ravel()
                for r, o, s in zip(ref, oth, scales)
            ]
        )
        size = np.concatenate([np.asarray(r, np.float64).ravel() for r in ref])
        gaps[t] = float(np.linalg.norm(diff) / np.linalg.norm(size))
    return gaps


def scales_for(model: keras.Model, absorb: Mapping[str, float]) -> list[float]:
    """Per trainable variable of ``model``: its ``p`` if it is in ``absorb``, else 1.0.

    These map the standard twin's variables back into the inverted net's
    coordinates, for :func:`scaled_gaps`.
    """
    return [absorb.get(v.path, 1.0) for v in model.trainable_variables]


Absorb = str | Mapping[str, float]
"""A regex over variable paths (each match absorbs ``keep_prob``), or ``{path: p}``."""


def _absorb(model: keras.Model, absorb: Absorb, keep_prob: float) -> dict[str, float]:
    return absorbing(model, absorb, keep_prob) if isinstance(absorb, str) else dict(absorb)


def _standard_twin(
    build: Callable[..., keras.Model],
    arch: Mapping[str, Any],
    inverted: keras.Model,
    absorb: Absorb,
    keep_prob: float,
) -> tuple[keras.Model, dict[str, float]]:
    """``build("standard", **arch)`` started at ``inverted``'s weights scaled by ``absorb``."""
    standard, absorb = build("standard", **arch), _absorb(inverted, absorb, keep_prob)
    copy_scaled(inverted, standard, absorb)
    return standard, absorb


def twin_models(
    build: Callable[..., keras.Model], arch: Mapping[str, Any], absorb: Absorb, keep_prob: float
) -> tuple[keras.Model, keras.Model, dict[str, float]]:
    """``(inverted, standard, absorb)``: a model built by ``build`` and its standard twin.

    Keras's global seed is set to 0, then ``build("inverted", **arch)`` and
    ``build("standard", **arch)`` are built (the dropout seeds in ``arch``
    give both the same masks); the twin starts at the inverted model's weights
    with each absorbing variable divided by its ``p`` (:func:`copy_scaled`).
    ``absorb`` is a pattern (every matching variable absorbs ``keep_prob``,
    Keras's ``rate`` being ``1 - keep_prob``) or a ``{path: p}`` dict.
    """
    keras.utils.set_random_seed(0)
    inverted = build("inverted", **arch)
    standard, absorb = _standard_twin(build, arch, inverted, absorb, keep_prob)
    return inverted, standard, absorb


def function_gaps(inverted: keras.Model, standard: keras.Model, x: NDArray) -> tuple[float, float]:
    """``(training, inference)``: ``max |f_inv(x) - f_std(x)| / max |f_inv(x)|`` in each mode.

    Both models draw their next masks in the training call; twins built by
    :func:`twin_models` draw the same ones.
    """
    scale = float(np.max(np.abs(inverted(x))))
    train = np.max(np.abs(np.asarray(inverted(x, training=True)) - np.asarray(standard(x, training=True))))
    test = np.max(np.abs(np.asarray(inverted(x)) - np.asarray(standard(x))))
    return float(train / scale), float(test / scale)


def trajectory_gaps(
    build: Callable[..., keras.Model],
    arch: Mapping[str, Any],
    optimizer: keras.optimizers.Optimizer,
    twins: Mapping[str, tuple[Absorb, bool]],
    x: NDArray,
    y: NDArray,
    *,
    keep_prob: float,
    steps: int,
    min_moved: float,
) -> dict[str, float]:
    """Train a model and its standard twins full batch; return each twin's largest :func:`scaled_gaps`.

    ``twins`` is ``{name: (absorb, mapped)}``: each twin starts at the
    inverted model's weights scaled by its ``absorb`` (as in
    :func:`twin_models`; the same masks) and trains with
    :func:`mapped_optimizer` if ``mapped``, else with an unmapped copy of
    ``optimizer`` (a negative control). The inverted model is fitted once,
    with a copy of ``optimizer``, and serves every twin. ``steps`` steps of
    :func:`dropout_lib.book.keras_trajectories.fit_trajectory` on ``(x, y)``.

    Raises ``ValueError`` if the inverted model's weights moved by less than
    ``min_moved`` (``|theta_0 - theta_T| / |theta_T|``): a small gap would then
    prove little.
    """
    from dropout_lib.book.keras_trajectories import fit_trajectory

    keras.utils.set_random_seed(0)
    inverted, fits = build("inverted", **arch), {}
    for name, (absorb, mapped) in twins.items():
        standard, absorb = _standard_twin(build, arch, inverted, absorb, keep_prob)
        twin_optimizer = (
            mapped_optimizer(standard, optimizer, absorb) if mapped else clone_optimizer(optimizer)
        )
        fits[name] = standard, absorb, twin_optimizer
    reference = fit_trajectory(inverted, clone_optimizer(optimizer), x, y, steps=steps)
    moved = scaled_gaps(reference[-1:], reference[:1], [1.0] * len(reference[0]))[0]
    if moved < min_moved:
        raise ValueError(
            f"the inverted model moved its weights by {moved:.2g} (relative), less than "
            f"min_moved={min_moved}: a small gap would prove little; train longer or faster."
        )
    return {
        name: float(
            scaled_gaps(reference, fit_trajectory(std, opt, x, y, steps=steps), scales_for(std, absorb)).max()
        )
        for name, (std, absorb, opt) in fits.items()
    }
