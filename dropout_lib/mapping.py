"""Map a Keras optimizer between inverted and standard dropout, exactly.

Notation: ``keep_prob`` is the paper's ``p`` (probability of KEEPING a unit);
Keras's ``rate`` is ``1 - p``. Every function here takes ``keep_prob``.

The reparameterisation
----------------------
Let a layer consume dropped units, ``z = W d(h) + b``. Inverted dropout
(Keras) feeds it ``m*h/p``, standard dropout (the paper's) ``m*h``. With the
same masks both nets compute the same function when the consuming kernel is
rescaled, ``W_std = W_inv / p``, and everything else (biases included) is
equal. Write ``W_tgt = s * W_src`` for the net we map TO:

* ``direction="to_standard"`` (inverted -> standard): ``s = 1/p``;
* ``direction="to_inverted"`` (standard -> inverted): ``s = p``.

The chain rule then gives ``g_tgt = g_src / s`` for the consuming kernel and
identical gradients everywhere else. So an optimizer applied to the target's
consuming kernel reproduces the source trajectory iff, fed ``g/s`` and
``s*W`` (and its state in the matching scale), its update is ``s`` times the
source update. Each built-in Keras optimizer was read line by line
(``keras/src/optimizers/*.py``, Keras 3.15.1) to find the hyperparameters
that make this hold. Induction over steps: if the state is in the matching
scale before a step, it is after it.

The table (``to_standard``, i.e. ``s = 1/p``; ``to_inverted`` is the inverse:
replace ``p`` by ``1/p``). ``q = -learning_rate_power`` for Ftrl.

=========================  ====================  =====================================
optimizer                  learning rate         other hyperparameters
=========================  ====================  =====================================
SGD, momentum, nesterov    ``lr / p**2``         none (the update is linear in ``g``)
Adam, AdamW, amsgrad       ``lr / p``            ``epsilon * p`` (outside the sqrt)
Adamax                     ``lr / p``            ``epsilon * p`` (added to ``u``)
Nadam                      ``lr / p``            ``epsilon * p`` (outside the sqrt)
RMSprop, centered,         ``lr / p``            ``epsilon * p**2`` (inside the sqrt)
momentum
Adagrad                    ``lr / p``            ``epsilon * p**2`` (inside the sqrt),
                                                 ``initial_accumulator_value * p**2``
Adadelta                   ``lr / p**2``         ``epsilon * p**2`` (both RMS terms)
Ftrl                       ``lr * p**(2q-2)``    ``initial_accumulator_value * p**2``,
                                                 ``l1 * p``, ``l2 * p**2``,
                                                 ``l2_shrinkage * p**2``,
                                                 ``beta * p**(2q)``
Lion                       ``lr / p``            none (``sign`` is scale-invariant)
Lamb                       ``lr`` (unchanged)    ``epsilon * p``; the trust ratio
                                                 ``||W|| / ||u||`` carries the ``1/p``
Adafactor                  ``lr`` (unchanged)    ``epsilon_1 * p**2``, ``epsilon_2 / p``
                                                 (its step is relative to ``RMS(W)``)
ScheduleFreeAdamW          ``lr / p``            ``epsilon * p`` (the state is linear)
Muon                       ``lr / p``            AdamW branch: ``epsilon * p``,
                                                 ``adam_weight_decay * p``; RAISES
                                                 on the Newton-Schulz branch
LossScaleOptimizer         inner mapped          ``initial_scale``,
                                                 ``dynamic_growth_steps`` unchanged
=========================  ====================  =====================================

Options of the base optimizer (all optimizers; ``k = lr_tgt / lr_src`` from
the table above):

===============================  ==============================================
option                           map
===============================  ==============================================
``LearningRateSchedule``         wrapped: ``k * schedule(step)``
callable learning rate           wrapped: ``k * f()``
``weight_decay``                 ``wd / k`` (Keras decays ``W -= W*wd*lr``, so
                                 ``wd*lr`` must be unchanged): SGD, Adadelta
                                 ``wd * p**2``; Adam-like, Lion, ScheduleFree,
                                 Muon ``wd * p``; Lamb, Adafactor unchanged;
                                 Ftrl ``wd * p**(2-2q)``
``clipnorm`` (per tensor)        ``clipnorm * p``
``clipvalue`` (per element)      ``clipvalue * p``
``global_clipnorm``              RAISES: the global norm mixes rescaled and
                                 unrescaled gradients
``use_ema``, ``ema_momentum``,   unchanged (the average is linear in ``W``)
``ema_overwrite_frequency``
``gradient_accumulation_steps``  unchanged (the mean is linear in ``g``)
``loss_scale_factor``            unchanged (both nets have the same loss)
===============================  ==============================================

No exact map exists for ``global_clipnorm`` and for Muon's Newton-Schulz step
(its normalisation ``M / (||M||_F + 1e-7)`` hard-codes an epsilon that no
hyperparameter reaches); those raise :class:`NoExactMapError` rather than
return an approximation. So do optimizer classes whose source was not read
(subclasses included: they may override the update).

Float64 exactness
-----------------
Keras casts some hyperparameters with ``ops.cast(value, variable.dtype)``,
which sends a Python float through float32 (``weight_decay``; Adagrad's and
Ftrl's ``initial_accumulator_value`` via ``initializers.Constant``;
ScheduleFreeAdamW's ``epsilon``; Adafactor's ``epsilon_2``). The map reads the
value Keras actually uses and stores the mapped one as ``numpy.float64``,
which the cast keeps. The learning rate lives in a variable of
``keras.config.floatx()``: for float64 exactness set ``floatx`` to
``"float64"`` before creating the optimizers.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from dropout_lib.conversion import (
    KEEP_THE_VARIANT,
    KERNEL_KINDS,
    NotConvertibleError,
    _keras_scalar,
    consumer_kernels,
    dropout_consumers,
    kernel_scale,
)
from dropout_lib.validation import (
    DIRECTIONS,
    Direction,
    NoExactMapError,
    check_direction,
    check_keep_prob,
)

__all__ = [
    "DIRECTIONS",
    "Direction",
    "NoExactMapError",
    "ScaledLearningRateSchedule",
    "kernel_scale",
    "map_optimizer",
    "to_standard",
    "to_inverted",
    "check_untrained",
    "clone_optimizer",
    "mapped_multi_optimizer",
    "unmapped_optimizer",
    "FollowingLearningRate",
]

_O = keras.optimizers


# ----------------------------------------------------------------- helpers


def _scaled_cast(value: Any, factor: float) -> Any:
    """Map a hyperparameter Keras reads through ``ops.cast``: keep it float64."""
    if value is None:
        return None
    return np.float64(_keras_scalar(value) * factor)


def _scaled(value: Any, factor: float) -> Any:
    """Map a hyperparameter Keras uses as a Python scalar (exact in float64)."""
    if value is None:
        return None
    return float(value) * factor


@keras.saving.register_keras_serializable(package="dropout_lib")
class ScaledLearningRateSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``factor * schedule(step)``, computed in float64.

    Parameters
    ----------
    schedule
        Any ``keras.optimizers.schedules.LearningRateSchedule``.
    factor
        Positive multiplier (e.g. ``1/p**2`` for SGD, ``1/p`` for Adam).

    Keras's built-in schedules return float32 (they convert a Python float
    ``initial_learning_rate`` to a float32 tensor); multiplying in float64
    keeps ``factor * schedule(step)`` exact relative to what the source
    optimizer uses.

    Examples
    --------
    >>> import keras
    >>> decay = keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=1, decay_rate=0.5)
    >>> float(ScaledLearningRateSchedule(decay, 4.0)(1))     # 4 * 0.5 * 0.5
    1.0
    """

    def __init__(
        self,
        schedule: keras.optimizers.schedules.LearningRateSchedule,
        factor: float,
    ) -> None:
        if isinstance(schedule, dict):  # from_config
            schedule = keras.optimizers.schedules.deserialize(schedule)
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            raise TypeError(f"schedule must be a keras LearningRateSchedule; got {schedule!r}.")
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise ValueError(f"factor must be a positive finite number; got {factor!r}.")
        self.schedule = schedule
        self.factor = float(factor)

    def __call__(self, step: Any) -> Any:
        return ops.multiply(ops.cast(self.schedule(step), "float64"), self.factor)

    def get_config(self) -> dict[str, Any]:
        return {
            "schedule": keras.optimizers.schedules.serialize(self.schedule),
            "factor": self.factor,
        }


class _ScaledCallable:
    """``factor * fn()`` for a no-argument learning-rate callable."""

    def __init__(self, fn: Callable[[], Any], factor: float) -> None:
        self.fn = fn
        self.factor = float(factor)

    def __call__(self) -> Any:
        return ops.multiply(ops.cast(self.fn(), "float64"), self.factor)

    def __repr__(self) -> str:
        return f"_ScaledCallable({self.fn!r}, factor={self.factor!r})"


class FollowingLearningRate:
    """A mapped sub-optimizer's learning rate: ``factor`` times the leading optimizer's, at every step.

    :func:`mapped_multi_optimizer` gives the optimizer of the consuming
    kernels this learning rate, with the default sub-optimizer (the source's
    optimizer, cloned) as ``leader`` and ``factor = k = lr_tgt / lr_src``
    from the module table (SGD ``1/p**2`` to standard, Adam ``1/p``, ...).
    Keras's learning-rate callbacks (``LearningRateScheduler``,
    ``ReduceLROnPlateau``) set the learning rate of every sub-optimizer of a
    ``MultiOptimizer`` to what they compute from that sub-optimizer's own
    value; an absolute value (``lr = 0.01``, ``min_lr``) set on the consuming
    kernels would lose the factor ``k``. So :meth:`assign` does nothing: the
    leader receives exactly what the source's optimizer receives (the same
    callback, the same value), and this learning rate stays ``k`` times it.
    Setting the learning rate of the consuming kernels' sub-optimizer by hand
    therefore has no effect: set the default sub-optimizer's.

    Examples
    --------
    >>> import keras
    >>> leader = keras.optimizers.SGD(0.5)
    >>> follower = keras.optimizers.SGD(0.0)
    >>> follower.learning_rate = FollowingLearningRate(leader, 4.0)
    >>> leader.learning_rate = 0.25                 # e.g. by ReduceLROnPlateau
    >>> follower.learning_rate = 0.25               # the callback sets it too: ignored
    >>> float(follower.learning_rate)               # 4 * 0.25
    1.0
    """

    def __init__(self, leader: keras.optimizers.Optimizer, factor: float) -> None:
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise ValueError(f"factor must be a positive finite number; got {factor!r}.")
        self.leader = leader
        self.factor = float(factor)

    def __call__(self) -> Any:
        return ops.multiply(ops.cast(self.leader.learning_rate, "float64"), self.factor)

    def assign(self, value: Any) -> None:
        """Ignore a value set on the follower (see the class docstring)."""

    def get_config(self) -> dict[str, Any]:
        """The leader by name (an optimizer holding it cannot be restored from a file)."""
        return {"leader": self.leader.name, "factor": self.factor}

    def __repr__(self) -> str:
        return f"FollowingLearningRate({self.leader.name!r}, factor={self.factor!r})"


def _scaled_learning_rate(optimizer: keras.optimizers.Optimizer, factor: float) -> Any:
    """The source learning rate times ``factor``, in the source's form."""
    lr = optimizer._learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return lr if factor == 1.0 else ScaledLearningRateSchedule(lr, factor)
    if isinstance(lr, keras.Variable):
        # The value the source uses (float32 if floatx was float32 at creation).
        return float(lr.numpy()) * factor
    if callable(lr):
        return lr if factor == 1.0 else _ScaledCallable(lr, factor)
    raise TypeError(f"unsupported learning rate {lr!r} on {optimizer.name}.")


def _base_config(optimizer: keras.optimizers.Optimizer) -> dict[str, Any]:
    """The optimizer's constructor arguments (learning rate as an object, no name)."""
    with warnings.catch_warnings():
        # get_config serialises a lambda learning rate (and warns); it is
        # replaced by the object itself below.
        warnings.filterwarnings("ignore", message="The object being serialized includes")
        config = optimizer.get_config()
    config.pop("name", None)
    config["learning_rate"] = _scaled_learning_rate(optimizer, 1.0)
    return config


def _check_weight_decay_exclusions(optimizer: keras.optimizers.Optimizer) -> None:
    if getattr(optimizer, "_exclude_from_weight_decay", None):
        raise ValueError(
            f"{type(optimizer).__name__} excludes variables from weight decay by "
            "object (exclude_from_weight_decay(var_list=...)); those are the source "
            "model's variables and cannot be carried over to another model. Use "
            "exclude_from_weight_decay(var_names=[...]) instead, which is copied."
        )


def _copy_weight_decay_exclusions(src: Any, dst: Any) -> None:
    pattern = getattr(src, "_exclude_from_weight_decay_pattern", None)
    if pattern is not None:  # one "name" that is the whole compiled regex
        dst.exclude_from_weight_decay(var_names=[pattern.pattern])


def _rebuild(optimizer: keras.optimizers.Optimizer, config: dict[str, Any]) -> Any:
    new = type(optimizer)(**config)
    _copy_weight_decay_exclusions(optimizer, new)
    return new


def _check_optimizer_instance(optimizer: Any) -> None:
    """Refuse anything but an optimizer instance, saying what to pass instead."""
    if isinstance(optimizer, keras.Model):
        raise TypeError(
            "got a model where an optimizer was expected; to convert a model, use "
            "dropout_lib.convert_model(model, to=..., optimizer=...)."
        )
    if isinstance(optimizer, type):
        raise TypeError(
            f"got the class {optimizer.__name__}, not an optimizer: pass an instance, "
            f"e.g. {optimizer.__name__}(learning_rate=...)."
        )
    if not isinstance(optimizer, _O.Optimizer):
        raise TypeError(
            f"optimizer must be a keras.optimizers.Optimizer instance; got {optimizer!r}. "
            "For a name such as 'adam', pass keras.optimizers.get('adam')."
        )


def check_untrained(optimizer: keras.optimizers.Optimizer) -> None:
    """Refuse an optimizer that has taken steps: a map starts from a fresh state.

    The mapped optimizer is new and unbuilt; the source's state (moments,
    accumulators, the step count a learning-rate schedule reads) is not carried
    over, so mapping a trained optimizer would restart the target's training
    while the source continues. Raises ``TypeError`` for anything but an
    optimizer instance and ``ValueError`` for one with ``iterations > 0``.

    >>> import keras
    >>> check_untrained(keras.optimizers.SGD(0.1))      # fresh: nothing to say
    """
    _check_optimizer_instance(optimizer)
    steps = int(optimizer.iterations)
    if steps > 0:
        raise ValueError(
            f"{type(optimizer).__name__} has already taken {steps} steps; its state "
            "(moments, accumulators, the step count a learning-rate schedule reads) "
            "would not be carried over, so the mapped run would start afresh while "
            "the source's continues. Map a fresh optimizer with the same "
            "hyperparameters (clone_optimizer(optimizer) is one) before either net "
            "trains."
        )


def clone_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """A fresh, unbuilt optimizer with the same class and hyperparameters.

    A built optimizer is tied to one model's variables; this gives the twin
    net its own copy (learning-rate schedules are shared: they are stateless).
    ``LossScaleOptimizer`` is cloned with a cloned inner optimizer.

    Examples
    --------
    >>> import keras
    >>> sgd = keras.optimizers.SGD(0.1, momentum=0.9)
    >>> copy = clone_optimizer(sgd)
    >>> copy is not sgd, copy.momentum
    (True, 0.9)
    """
    _check_optimizer_instance(optimizer)
    if isinstance(optimizer, _O.MultiOptimizer):
        raise TypeError("clone_optimizer does not clone a MultiOptimizer; clone its parts.")
    if isinstance(optimizer, _O.LossScaleOptimizer):
        return _O.LossScaleOptimizer(
            clone_optimizer(optimizer.inner_optimizer),
            initial_scale=optimizer.initial_scale,
            dynamic_growth_steps=optimizer.dynamic_growth_steps,
        )
    _check_weight_decay_exclusions(optimizer)
    return _rebuild(optimizer, _base_config(optimizer))


# ------------------------------------------------ per-optimizer derivations
#
# Each function gets the source optimizer, its config (a copy to edit) and
# ``s`` (W_tgt = s * W_src, g_tgt = g_src / s), edits the config in place and
# returns ``k = lr_tgt / lr_src``. The comments name the Keras lines.


def _sgd(opt: Any, cfg: dict[str, Any], s: float) -> float:
    # update_step: m <- momentum*m - lr*g; W += m (or the Nesterov form), or
    # W -= lr*g. All linear in g: with lr' = s^2 lr, m' = s m and every
    # increment is s times the source's.
    return s**2


def _adam(opt: Any, cfg: dict[str, Any], s: float) -> float:
    # m <- m + (g - m)(1 - beta_1), v <- v + (g^2 - v)(1 - beta_2):
    # m' = m/s, v' = v/s^2 (amsgrad: v_hat' = v_hat/s^2, the max commutes).
    # W -= alpha*m / (sqrt(v) + eps): alpha' m/s / (sqrt(v)/s + eps')
    #    = alpha' m / (sqrt(v) + s eps'), so eps' = eps/s and alpha' = s alpha.
    # (AdamW is Adam plus the base optimizer's decoupled decay.)
    cfg["epsilon"] = _scaled(opt.epsilon, 1.0 / s)
    return s


def _adamax(opt: Any, cfg: dict[str, Any], s: float) -> float:
    # u <- max(beta_2 u, |g|): u' = u/s. W -= lr m / ((1 - b1^t)(u + eps)):
    # eps' = eps/s, lr' = s lr.
    cfg["epsilon"] = _scaled(opt.epsilon, 1.0 / s)
    return s


def _nadam(opt: Any, cfg: dict[str, Any], s: float) -> float:
    # m_hat is linear in (m, g) -> 1/s; v_hat = v/(1 - b2^t) -> 1/s^2;
    # W -= m_hat lr / (sqrt(v_hat) + eps): as Adam. u_product is g-free.
    cfg["epsilon"] = _scaled(opt.epsilon, 1.0 / s)
    return s


def _rmsprop(opt: Any, cfg: dict[str, Any], s: float) -> float:
    # v <- rho v + (1-rho) g^2 -> v/s^2; centered: a <- rho a + (1-rho) g -> a/s.
    # increment = lr g / sqrt(v [- a^2] + eps): EPSILON INSIDE THE SQRT,
    # lr' (g/s) / sqrt((v - a^2)/s^2 + eps') = lr' g / sqrt(v - a^2 + s^2 eps'),
    # so eps' = eps/s^2, lr' = s lr. Momentum accumulates increments: linear.
    cfg["epsilon"] = _scaled(opt.epsilon, 1.0 / s**2)
    return s


def _adagrad(opt: Any, cfg: dict[str, Any], s: float) -> float:
    # acc = a0 + sum g^2; W -= lr g / sqrt(acc + eps) (eps inside the sqrt):
    # lr' (g/s) / sqrt(a0' + sum g^2/s^2 + eps')
    #   = lr' g / sqrt(s^2 a0' + sum g^2 + s^2 eps'),
    # so a0' = a0/s^2, eps' = eps/s^2, lr' = s lr. a0 enters through
    # initializers.Constant, which casts through float32: keep float64.
    cfg["epsilon"] = _scaled(opt.epsilon, 1.0 / s**2)
    cfg["initial_accumulator_value"] = _scaled_cast(opt.initial_accumulator_value, 1.0 / s**2)
    return s


def _adadelta(opt: Any, cfg: dict[str, Any], s: float) -> float:
    # Eg <- rho Eg + (1-rho) g^2; delta = -sqrt(Ed + eps) g / sqrt(Eg + eps);
    # Ed <- rho Ed + (1-rho) delta^2; W += lr delta. One eps in both RMS terms.
    # With eps' = eps/s^2: Eg' = Eg/s^2, and if Ed' = Ed/s^2 then
    # delta' = (sqrt(Ed + eps)/s)(g/s) / (sqrt(Eg + eps)/s) = delta/s, which
    # keeps Ed' = Ed/s^2. W' must move s*delta = s^2 delta': lr' = s^2 lr.
    cfg["epsilon"] = _scaled(opt.epsilon, 1.0 / s**2)
    return s**2


def _ftrl(opt: Any, cfg: dict[str, Any], s: float) -> float:
    # q = -learning_rate_power >= 0, n the accumulator, z the linear term:
    #   z += g + 2 l2s W - ((n + g^2)^q - n^q)/lr * W;  n += g^2
    #   W = (clip(z, -l1, l1) - z) / (n^q/lr + 2 l2 + beta/lr)
    # With n0' = n0/s^2 (so n' = n/s^2), lr' = s^(2-2q) lr, l2s' = l2s/s^2:
    # every term of z' is z/s. clip(z/s, +-l1/s) - z/s = (clip(z, +-l1) - z)/s
    # with l1' = l1/s. W' = s W needs the denominator / s^2:
    # n^q s^-2q / (s^(2-2q) lr) = n^q/(s^2 lr); 2 l2' = 2 l2/s^2;
    # beta'/(s^(2-2q) lr) = beta/(s^2 lr) -> beta' = beta s^(-2q).
    q = -float(opt.learning_rate_power)
    cfg["initial_accumulator_value"] = _scaled_cast(opt.initial_accumulator_value, 1.0 / s**2)
    cfg["l1_regularization_strength"] = _scaled(opt.l1_regularization_strength, 1.0 / s)
    cfg["l2_regularization_strength"] = _scaled(opt.l2_regularization_strength, 1.0 / s**2)
    cfg["l2_shrinkage_regularization_strength"] = _scaled(
        opt.l2_shrinkage_regularization_strength, 1.0 / s**2
    )
    cfg["beta"] = _scaled(opt.beta, s ** (-2.0 * q))
    return s ** (2.0 - 2.0 * q)


def _lion(opt: Any, cfg: dict[str, Any], s: float) -> float:
    # W -= lr sign(beta_1 m + (1 - beta_1) g); m <- beta_2 m + (1 - beta_2) g:
    # m' = m/s, the sign is unchanged (s > 0), so lr' = s lr.
    return s


def _lamb(opt: Any, cfg: dict[str, Any], s: float) -> float:
    # u = m_hat / (sqrt(v_hat) + eps): with eps' = eps/s, u' = u (invariant).
    # W -= (||W|| / ||u||) lr u: the trust ratio becomes s times larger by
    # itself, so lr' = lr. (Exact while ||W|| > 0: a kernel that is exactly
    # zero makes Keras use ratio 1 in both nets.)
    cfg["epsilon"] = _scaled(opt.epsilon, 1.0 / s)
    return 1.0


def _adafactor(opt: Any, cfg: dict[str, Any], s: float) -> float:
    # g^2 + eps_1 -> (g^2 + s^2 eps_1')/s^2: eps_1' = eps_1/s^2 makes r, c, v
    # all 1/s^2 (r/mean(r) is scale-free), u = g/sqrt(v) and its RMS clipping
    # invariant. Step alpha = max(eps_2, RMS(W)) * min(lr, 1/sqrt(t)):
    # eps_2' = s eps_2 makes alpha' = s alpha with lr' = lr (the relative-step
    # clamp is then identical too). eps_2 is read through ops.cast: float64.
    cfg["epsilon_1"] = _scaled(opt.epsilon_1, 1.0 / s**2)
    cfg["epsilon_2"] = _scaled_cast(opt.epsilon_2, s)
    return 1.0


def _schedule_free_adamw(opt: Any, cfg: dict[str, Any], s: float) -> float:
    # z ("momentum") starts at W and z -= lr g / (sqrt(v/bc2) + eps); eps is
    # outside the sqrt: eps' = eps/s, lr' = s lr gives z' = s z. x and y are
    # linear in (y, z): y' = s y. eps is read through ops.cast: float64.
    cfg["epsilon"] = _scaled_cast(opt.epsilon, 1.0 / s)
    return s


def _muon(opt: Any, cfg: dict[str, Any], s: float) -> float:
    # AdamW branch (_adamw_update_step): as Adam, lr' = s lr, eps' = eps/s;
    # its decay uses adam_weight_decay * lr: adam_weight_decay' = awd/s.
    # Newton-Schulz branch: no exact map (checked in map_optimizer).
    cfg["epsilon"] = _scaled(opt.epsilon, 1.0 / s)
    cfg["adam_weight_decay"] = _scaled_cast(opt.adam_weight_decay, 1.0 / s)
    return s


_DERIVATIONS: dict[type, Callable[[Any, dict[str, Any], float], float]] = {
    _O.SGD: _sgd,
    _O.Adam: _adam,
    _O.AdamW: _adam,
    _O.Adamax: _adamax,
    _O.Nadam: _nadam,
    _O.RMSprop: _rmsprop,
    _O.Adagrad: _adagrad,
    _O.Adadelta: _adadelta,
    _O.Ftrl: _ftrl,
    _O.Lion: _lion,
    _O.Lamb: _lamb,
    _O.Adafactor: _adafactor,
    _O.ScheduleFreeAdamW: _schedule_free_adamw,
    _O.Muon: _muon,
}


def _derivation(optimizer: Any) -> Callable[[Any, dict[str, Any], float], float] | None:
    """The derivation for ``optimizer``'s class, or for the public class Keras's backend implements.

    On the torch (and other) backends Keras builds its own subclass for some
    optimizers (``keras.optimizers.SGD(...)`` is a
    ``keras.src.backend.torch.optimizers.torch_sgd.SGD`` there): the same
    update rule, written in the backend's ops. Such a class, defined in
    ``keras.src.backend``, maps like the public optimizer it subclasses;
    any other subclass has no derivation (it may override the update).

    >>> import keras
    >>> _derivation(keras.optimizers.SGD(0.1)) is _sgd
    True
    """
    kind = type(optimizer)
    if kind in _DERIVATIONS:
        return _DERIVATIONS[kind]
    if kind.__module__.startswith("keras.src.backend."):
        for base in kind.__mro__[1:]:
            if base in _DERIVATIONS:
                return _DERIVATIONS[base]
    return None


def _check_muon_variables(optimizer: Any, variables: Iterable[Any] | None) -> None:
    why = (
        "Muon's Newton-Schulz step orthogonalises M / (||M||_F + 1e-7), with the "
        "1e-7 hard-coded in keras/src/optimizers/muon.py "
        "(zeropower_via_newtonschulz5), not a hyperparameter: the step is "
        "invariant to the gradient scale only up to that constant, so no "
        "hyperparameters reproduce the other variant exactly."
    )
    fix = (
        " Put the consuming layers on Muon's AdamW branch (exclude_layers=[their "
        "names], or give them non-2-D kernels), for which the map is exact, or "
        "use another optimizer for them."
    )
    if variables is None:
        raise NoExactMapError(
            why + " Pass variables=[the consuming kernels] so the map can check that "
            "none of them takes that branch (mapped_multi_optimizer does)." + fix
        )
    muon_branch = [v.path for v in variables if not optimizer._should_use_adamw(v)]
    if muon_branch:
        raise NoExactMapError(f"{why} These variables take that branch: {muon_branch}.{fix}")


def map_optimizer(
    optimizer: keras.optimizers.Optimizer,
    keep_prob: float,
    direction: Direction,
    *,
    variables: Iterable[Any] | None = None,
) -> keras.optimizers.Optimizer:
    """Return a new optimizer for the consuming kernels of the other variant.

    Parameters
    ----------
    optimizer
        The optimizer that trains the SOURCE net (it is not modified). A
        built-in Keras optimizer (exact class), or a ``LossScaleOptimizer``
        wrapping one.
    keep_prob
        The keep probability ``p`` of the dropout feeding the kernels (Keras's
        ``rate`` is ``1 - p``). For kernels behind several dropouts in a row,
        the product of their keep probabilities.
    direction
        ``'to_standard'``: the source uses ``keras.layers.Dropout`` (inverted),
        the target the paper's dropout (``W_tgt = W_src / p``).
        ``'to_inverted'``: the reverse (``W_tgt = p * W_src``).
    variables
        The target variables the result will update. Needed only for Muon,
        whose update depends on the variable.

    Returns
    -------
    keras.optimizers.Optimizer
        Same class, unbuilt; with ``W_tgt = s * W_src`` and the same masks, its
        updates are ``s`` times the source's, step for step (module table).
        Map before training: the source's state (moments, accumulators) is
        not carried over.

    Raises
    ------
    NoExactMapError
        For ``global_clipnorm``, Muon's Newton-Schulz branch and optimizer
        classes without a derived map.

    Examples
    --------
    >>> import keras
    >>> adam = map_optimizer(keras.optimizers.Adam(1e-3, epsilon=1e-7), 0.8, "to_inverted")
    >>> round(float(adam.learning_rate), 7), adam.epsilon      # lr * p, epsilon / p
    (0.0008, 1.25e-07)
    >>> map_optimizer(keras.optimizers.SGD(0.1, global_clipnorm=1.0), 0.8, "to_inverted")
    Traceback (most recent call last):
    ...
    dropout_lib.validation.NoExactMapError: global_clipnorm=1.0 clips every gradient by the global norm ...
    """
    s = kernel_scale(keep_prob, direction)
    check_untrained(optimizer)
    variables = None if variables is None else list(variables)
    if isinstance(optimizer, _O.MultiOptimizer):
        raise TypeError(
            "map_optimizer maps one optimizer, not a MultiOptimizer: map each of "
            "its sub-optimizers (mapped_multi_optimizer builds the MultiOptimizer)."
        )
    if isinstance(optimizer, _O.LossScaleOptimizer):
        # The dynamic scale multiplies the loss, identical in both nets, and
        # divides the gradients again: only the inner optimizer sees s.
        return _O.LossScaleOptimizer(
            map_optimizer(optimizer.inner_optimizer, keep_prob, direction, variables=variables),
            initial_scale=optimizer.initial_scale,
            dynamic_growth_steps=optimizer.dynamic_growth_steps,
        )
    derive = _derivation(optimizer)
    if derive is None:
        raise NoExactMapError(
            f"no map derived for {type(optimizer).__module__}."
            f"{type(optimizer).__qualname__}: the map depends on where the gradient "
            "scale enters the update (epsilon inside or outside a square root, "
            "trust ratios, sign, ...), so it must be derived from the update_step "
            "source. Supported: "
            + ", ".join(sorted(c.__name__ for c in _DERIVATIONS))
            + ", and LossScaleOptimizer wrapping one of them (exact classes, not "
            "subclasses)."
        )
    if optimizer.global_clipnorm:
        raise NoExactMapError(
            f"global_clipnorm={optimizer.global_clipnorm} clips every gradient by "
            "the global norm sqrt(sum_i ||g_i||^2) over all variables. In the other "
            "variant the consuming kernels' gradients are rescaled (by "
            f"{1 / s:.6g}) and the others are not, so the global norm, hence the "
            "clip factor, differs, and it is shared by all variables: no "
            f"hyperparameters reproduce it exactly. To keep global_clipnorm, {KEEP_THE_VARIANT}. "
            "clipnorm (per tensor; it maps to clipnorm*p to standard, clipnorm/p to "
            "inverted), clipvalue (likewise) or no clipping each train a different model."
        )
    _check_weight_decay_exclusions(optimizer)
    if isinstance(optimizer, _O.Muon):
        _check_muon_variables(optimizer, variables)

    cfg = _base_config(optimizer)
    k = derive(optimizer, cfg, s)
    cfg["learning_rate"] = _scaled_learning_rate(optimizer, k)
    # Decoupled decay W -= W * wd * lr (base _apply_weight_decay): W' = s W
    # needs wd' lr' = wd lr. Muon's weight_decay belongs to its Newton-Schulz
    # branch, mapped alike for completeness.
    cfg["weight_decay"] = _scaled_cast(optimizer.weight_decay, 1.0 / k)
    # Per-tensor clipping g c / max(||g||, c): (g/s) c' / max(||g||/s, c')
    # equals (g c / max(||g||, c)) / s iff c' = c/s. Per element likewise.
    cfg["clipnorm"] = _scaled(optimizer.clipnorm, 1.0 / s)
    cfg["clipvalue"] = _scaled(optimizer.clipvalue, 1.0 / s)
    # use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor and
    # gradient_accumulation_steps are linear in W or g, or act on the loss:
    # unchanged (they stay in cfg as they are).
    return _rebuild(optimizer, cfg)


def _lr_factor(optimizer: keras.optimizers.Optimizer, keep_prob: float, direction: Direction) -> float:
    """``k = lr_tgt / lr_src`` of the map (the module table's learning-rate column)."""
    derive = _derivation(optimizer)
    assert derive is not None  # map_optimizer has refused the others
    return float(derive(optimizer, _base_config(optimizer), kernel_scale(keep_prob, direction)))


_OTHER: dict[str, Direction] = {"to_standard": "to_inverted", "to_inverted": "to_standard"}


def _same_hyperparameters(a: keras.optimizers.Optimizer, b: keras.optimizers.Optimizer) -> bool:
    if _derivation(a) is not _derivation(b) or type(a) is not type(b):
        return False
    ca, cb = _base_config(a), _base_config(b)
    for config in (ca, cb):
        config.pop("learning_rate")
    if set(ca) != set(cb):
        return False
    for key, va in ca.items():
        vb = cb[key]
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool):
            if not math.isclose(float(va), float(vb), rel_tol=1e-12, abs_tol=0.0):
                return False
        elif va != vb:
            return False
    lr_a = float(ops.convert_to_numpy(a.learning_rate))
    lr_b = float(ops.convert_to_numpy(b.learning_rate))
    # ``b`` is a fresh map_optimizer: Keras stores its learning rate in a variable of
    # floatx, one rounding (relative u = eps/2) of the float64 value a
    # FollowingLearningRate computes; 2 eps of that dtype covers it (float32: 2.4e-7,
    # while another keep_prob moves the rate by a relative 1e-2 or more).
    stored = getattr(b._learning_rate, "dtype", None)
    dtype = stored if isinstance(b._learning_rate, keras.Variable) else "float64"
    rel_tol = max(1e-12, 2 * float(np.finfo(np.dtype(dtype)).eps))
    return math.isclose(lr_a, lr_b, rel_tol=rel_tol, abs_tol=0.0)


def unmapped_optimizer(
    optimizer: keras.optimizers.Optimizer,
    model: keras.Model,
    direction: Direction,
) -> keras.optimizers.Optimizer:
    """The one optimizer a ``MultiOptimizer`` from :func:`mapped_multi_optimizer` was mapped from.

    ``optimizer`` trains ``model``, whose consuming kernels (keep probability
    ``p``) it trains with ``map_optimizer(D, p, other)`` and every other
    variable with its default sub-optimizer ``D``, ``other`` being the
    direction opposite to ``direction``: ``model`` is then itself the
    conversion of a model trained with ``D``, and converting it back in
    ``direction`` needs ``D`` on every variable (the maps are inverse:
    ``k(p, 'to_standard') k(p, 'to_inverted') = 1``). Returns ``D``, the
    original hyperparameters, not the twice-rounded map of a map. The
    consuming kernels' learning rate is compared to ``2 eps`` of the dtype
    Keras stores it in (floatx: float32 by default, where the mapped rate of
    ``keep_prob = 0.8`` is not a float32 number); every other hyperparameter
    to a relative ``1e-12``.

    Raises
    ------
    TypeError
        If ``optimizer`` is a ``MultiOptimizer`` of another form (a callable
        selector, consuming kernels on anything but the inverse map of the
        default, other variables on other optimizers): pass the one optimizer
        that trains the source model.
    """
    _check_optimizer_instance(optimizer)
    check_untrained(optimizer)
    other = _OTHER[check_direction(direction)]
    selector = optimizer._optimizer_map
    default = getattr(selector, "default_optimizer", None)
    shape = (
        "convert_model maps ONE optimizer; it takes a MultiOptimizer only in the form "
        "convert_model returns (a keras.optimizers.OptimizerMap whose default optimizer "
        "trains every variable except the consuming kernels, which are on its map "
        f"in the direction {other!r}), to convert back. Pass the optimizer that "
        "trains the source model instead."
    )
    if default is None or not isinstance(selector, _O.OptimizerMap):
        raise TypeError(f"{optimizer.name} has no OptimizerMap with a default optimizer. {shape}")
    kernels = {
        id(v): c.keep_prob for c in dropout_consumers(model) if c.kind in KERNEL_KINDS for v in c.variables
    }
    for variable in model.trainable_variables:
        sub = selector(variable)
        if id(variable) not in kernels:
            if sub is not default:
                raise TypeError(f"variable {variable.path!r} is not on the default optimizer. {shape}")
            continue
        expected = map_optimizer(default, kernels[id(variable)], other)
        if not _same_hyperparameters(sub, expected):
            raise TypeError(
                f"the consuming kernel {variable.path!r} is on {sub.name}, which is not the "
                f"map of the default optimizer ({default.name}) with keep_prob "
                f"{kernels[id(variable)]}. {shape}"
            )
    return default


def to_standard(
    optimizer: keras.optimizers.Optimizer,
    keep_prob: float,
    *,
    variables: Iterable[Any] | None = None,
) -> keras.optimizers.Optimizer:
    """The optimizer for the CONSUMING KERNELS ONLY of the standard (paper's) net, from an inverted net's.

    ``keep_prob`` is ``p`` (Keras's ``rate = 1 - p``); the consuming kernels
    are the ones that read a dropout's output, rescaled ``W_std = W_inv / p``.
    See :func:`map_optimizer` and the module table (e.g. SGD ``lr / p**2``,
    Adam ``lr / p`` and ``epsilon * p``).

    .. warning::
       Do not compile a whole model with the result: it would apply, e.g.,
       ``lr / p**2`` to every variable, biases and undropped layers included,
       which is NOT the map (those keep the original optimizer). Use
       :func:`dropout_lib.twins.convert_model` (``dl.convert_model``), which
       returns the model and a per-variable optimizer, or
       :func:`mapped_multi_optimizer` for a model you built yourself.

    Examples
    --------
    >>> import keras
    >>> mapped = to_standard(keras.optimizers.SGD(0.1, momentum=0.9), keep_prob=0.5)
    >>> round(float(mapped.learning_rate), 6), mapped.momentum   # lr / p**2
    (0.4, 0.9)
    >>> adam = to_standard(keras.optimizers.Adam(1e-3, epsilon=1e-7), keep_prob=0.5)
    >>> round(float(adam.learning_rate), 6), adam.epsilon        # lr / p, epsilon * p
    (0.002, 5e-08)
    """
    return map_optimizer(optimizer, keep_prob, "to_standard", variables=variables)


def to_inverted(
    optimizer: keras.optimizers.Optimizer,
    keep_prob: float,
    *,
    variables: Iterable[Any] | None = None,
) -> keras.optimizers.Optimizer:
    """The optimizer for the CONSUMING KERNELS ONLY of the inverted (Keras) net, from a standard net's.

    ``keep_prob`` is ``p`` (Keras's ``rate = 1 - p``); the consuming kernels
    are rescaled ``W_inv = p * W_std``. The inverse of :func:`to_standard`
    (``p`` replaced by ``1/p`` in the module table): this is the direction a
    practitioner with the paper's recipe needs.

    .. warning::
       Do not compile a whole model with the result: it would apply, e.g.,
       ``lr * p**2`` to every variable, which is NOT the map. Use
       :func:`dropout_lib.twins.convert_model` (``dl.convert_model``) or
       :func:`mapped_multi_optimizer`.

    Examples
    --------
    The paper's SGD recipe (learning rate 0.1, p = 0.5) on the kernels that
    read a dropout's output, in Keras's dropout:

    >>> import keras
    >>> mapped = to_inverted(keras.optimizers.SGD(0.1, momentum=0.9), keep_prob=0.5)
    >>> round(float(mapped.learning_rate), 6)   # lr * p**2
    0.025
    """
    return map_optimizer(optimizer, keep_prob, "to_inverted", variables=variables)


# ------------------------------------------------------ whole-model helper


def _resolve_layers(model: keras.Model, layers: Sequence[Any]) -> list[keras.layers.Layer]:
    resolved = []
    for layer in layers:
        if isinstance(layer, str):
            layer = model.get_layer(layer)
        elif not isinstance(layer, keras.layers.Layer):
            raise TypeError(f"consuming_layers must hold layers or layer names; got {layer!r}.")
        resolved.append(layer)
    return resolved


def _check_against_graph(model: keras.Model, keep_prob: float, layers: Sequence[Any]) -> None:
    """Where the graph can be walked, the given consumers and ``keep_prob`` must be its own."""
    try:
        found = dropout_consumers(model)
    except (NotConvertibleError, TypeError):  # TypeError: a subclassed model, no graph to read
        return  # the walk refuses: the caller's word stands
    graph = {(c.layer.name, c.keep_prob) for c in found}
    given = {(layer.name, float(keep_prob)) for layer in layers}
    if given != graph:
        raise ValueError(
            f"the model's graph has the consuming layers and keep probabilities "
            f"{sorted(graph)}, but keep_prob={keep_prob} and consuming_layers="
            f"{sorted(n for n, _ in given)} were given (keep_prob is p, the keep "
            "probability; Keras's rate is 1 - p). Omit keep_prob and consuming_layers "
            "to use the graph's."
        )


def mapped_multi_optimizer(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    direction: Direction,
    *,
    keep_prob: float | None = None,
    consuming_layers: Sequence[Any] | None = None,
) -> keras.optimizers.Optimizer:
    """The optimizer for the TARGET ``model`` that reproduces the source's trajectory.

    Every variable gets a fresh copy of ``optimizer``, except the kernels that
    consume dropped units, which get ``map_optimizer(optimizer, p, direction)``
    (biases keep the original). Compile ``model`` with the result and train the
    source twin with ``optimizer``; with ``W_tgt = s W_src`` at the start and
    the same masks, both follow the same trajectory.

    Parameters
    ----------
    model
        The target net (built): for ``'to_standard'`` the one with the paper's
        dropout (``dropout_lib.layers.StandardDropout``).
    optimizer
        The source net's optimizer (not modified, not shared).
    direction
        ``'to_standard'`` or ``'to_inverted'`` (see :func:`map_optimizer`).
    keep_prob, consuming_layers
        Either both None: the consumers and their keep probabilities are found
        by walking the model graph (:func:`dropout_lib.conversion.dropout_consumers`).
        Or both given: ``keep_prob`` = ``p`` (not Keras's ``rate``) for all of
        ``consuming_layers`` (layers or names).

    Returns
    -------
    keras.optimizers.Optimizer
        A ``MultiOptimizer`` keyed by variable path; for a
        ``LossScaleOptimizer`` source, a ``LossScaleOptimizer`` wrapping the
        ``MultiOptimizer`` (Keras forbids the reverse nesting).

    Notes
    -----
    Keras 3.15.1 saves a model compiled with any ``MultiOptimizer`` but
    ``keras.saving.load_model`` fails to restore the optimizer state (also
    without this module): save weights, or load with ``compile=False``.

    Examples
    --------
    >>> import keras
    >>> from dropout_lib.layers import StandardDropout
    >>> paper = keras.Sequential([keras.Input((3,)), StandardDropout(0.5), keras.layers.Dense(2)])
    >>> opt = mapped_multi_optimizer(paper, keras.optimizers.SGD(0.1), "to_standard")
    >>> type(opt).__name__
    'MultiOptimizer'
    """
    check_direction(direction)
    check_untrained(optimizer)
    if (keep_prob is None) != (consuming_layers is None):
        raise ValueError(
            "give keep_prob and consuming_layers together (keep_prob is p, the keep "
            "probability; Keras's rate is 1 - p), or neither to find the consumers "
            "by walking the model."
        )
    if consuming_layers is None:
        # normalisations absorb their factor without a change of optimizer
        groups = [(c.keep_prob, c.variables) for c in dropout_consumers(model) if c.kind in KERNEL_KINDS]
    else:
        check_keep_prob(keep_prob)
        layers = _resolve_layers(model, consuming_layers)
        _check_against_graph(model, keep_prob, layers)
        groups = [(keep_prob, consumer_kernels(layer)) for layer in layers]

    if isinstance(optimizer, _O.LossScaleOptimizer):
        inner = mapped_multi_optimizer(
            model,
            optimizer.inner_optimizer,
            direction,
            keep_prob=keep_prob,
            consuming_layers=consuming_layers,
        )
        return _O.LossScaleOptimizer(
            inner,
            initial_scale=optimizer.initial_scale,
            dynamic_growth_steps=optimizer.dynamic_growth_steps,
        )

    default = clone_optimizer(optimizer)
    by_keep_prob: dict[float, keras.optimizers.Optimizer] = {}
    optimizer_for: dict[int, keras.optimizers.Optimizer] = {}
    opt_map = _O.OptimizerMap(default_optimizer=default)
    for p, variables in groups:
        trainable = [v for v in variables if v.trainable]
        if not trainable:
            continue
        if p not in by_keep_prob:
            all_vars = [v for q, vs in groups if q == p for v in vs if v.trainable]
            mapped = map_optimizer(optimizer, p, direction, variables=all_vars)
            if isinstance(default._learning_rate, keras.Variable):
                # Keras's callbacks set every sub-optimizer: follow the default's.
                mapped.learning_rate = FollowingLearningRate(default, _lr_factor(optimizer, p, direction))
            by_keep_prob[p] = mapped
        for v in trainable:
            if id(v) in optimizer_for:
                continue
            optimizer_for[id(v)] = by_keep_prob[p]
            opt_map[re.escape(v.path)] = by_keep_prob[p]
    multi = _O.MultiOptimizer(opt_map, loss_scale_factor=optimizer.loss_scale_factor)
    # Paths are the keys: make sure each variable resolves to its optimizer.
    for v in model.trainable_variables:
        expected = optimizer_for.get(id(v), default)
        if opt_map[v.path] is not expected:
            raise ValueError(
                f"variable path {v.path!r} does not resolve to its own optimizer "
                "(two variables share a path?): give the layers unique names."
            )
    return multi
