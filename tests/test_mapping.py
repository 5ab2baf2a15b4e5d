"""Tests of dropout_lib.mapping: every built-in Keras optimizer, mapped between dropout variants.

A net with ``keras.layers.Dropout(rate)`` (inverted) and its twin with
``StandardDropout(rate, seed=same)`` (the paper's), whose consuming kernel is
``W / p``, are trained in float64 on the same data and the same masks; the
twin uses ``mapped_multi_optimizer``. At the end ``p * W_std`` must equal
``W_inv`` (and every other weight must be equal), or the map is wrong.
``keep_prob`` is ``p``; Keras's ``rate`` is ``1 - p`` (so ``rate=1 - P``
below).

Most cases call ``optimizer.apply_gradients`` in an eager loop (each net
computes its own gradients on its own forward pass: Keras's ``fit`` would
trace a graph per model, about 1 s of CPU each); a few run real ``model.fit``.

How many steps. The map is exact step by step: if the mapped state equals the
source's after step t, it does after step t + 1. So a run checks the map as
well in a few steps as in many, provided every step-dependent path of the
optimizer is taken. :func:`steps_for` gives each optimizer the fewest steps
that take them all (at least ``MIN_STEPS``, so that optimizer state is carried
through several updates; past the warm-up of a schedule, past an EMA
overwrite, two applied updates under gradient accumulation), and
:func:`assert_paths_taken` checks that gradient clipping, where it is set,
actually clips a consuming kernel's gradient (and that AMSGrad's maximum acts).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from keras import ops  # noqa: E402

from dropout_lib import conversion, mapping  # noqa: E402
from dropout_lib.layers import StandardDropout  # noqa: E402
from dropout_lib.mapping import NoExactMapError  # noqa: E402

O = keras.optimizers
P = 0.7  # keep probability; not a power of 2, so nothing is exact by luck
MIN_STEPS = 3  # optimizer state (momenta, moments, accumulators) carried through 2 updates

# Both runs follow the same real-number trajectory; in float64 they differ only
# by rounding: a few eps_64 = 1.1e-16 per operation, ~10 operations per weight
# per step, not amplified by these short, stable runs. Observed <= 3e-15
# (largest: Ftrl with every option) in the 3 to 7 steps run here, as over 12
# steps and over 60 random-hyperparameter runs of 8 steps. 1e-12
# leaves a margin of >300x, is 4 orders of magnitude below the float32 level
# (6e-8, what a hyperparameter rounded through float32 costs), and every wrong
# map in the negative controls is off by >= 3e-3 in its few steps (threshold 1e-5).
TOL = 1e-12
WRONG = 1e-5

# Keras's convert_to_numpy calls np.array(x) on TF tensors (numpy 2 warns).
pytestmark = [
    pytest.mark.usefixtures("keras_float64"),  # tests/conftest.py
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]
_rng = np.random.default_rng(2014)
X = _rng.normal(size=(16, 6))
Y = _rng.normal(size=(16, 3))


# ------------------------------------------------------------------ helpers


def mlp(variant: str, keep_prob: float, *, seed: int = 7, **out_kwargs) -> keras.Model:
    """6-8-3 ReLU net, dropout on the hidden layer; ``out`` consumes it."""
    rate = 1.0 - keep_prob  # Keras's rate is the DROP probability
    drop = (keras.layers.Dropout if variant == "inverted" else StandardDropout)(rate, seed=seed)
    out_kwargs.setdefault("kernel_initializer", keras.initializers.GlorotUniform(seed=3))
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(
                8,
                activation="relu",
                name="hidden",
                kernel_initializer=keras.initializers.GlorotUniform(seed=1),
                bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=2),
            ),
            drop,
            keras.layers.Dense(
                3,
                name="out",
                bias_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=4),
                **out_kwargs,
            ),
        ]
    )


def two_dropout_net(variant: str, keep_prob: float) -> keras.Model:
    """Functional net with two dropouts of different rates and two consumers."""
    D = keras.layers.Dropout if variant == "inverted" else StandardDropout
    init = keras.initializers.GlorotUniform
    x = keras.Input((6,))
    a = D(1.0 - 0.8, seed=11)(x)  # input dropout, p = 0.8
    h = keras.layers.Dense(8, activation="relu", name="h1", kernel_initializer=init(5))(a)
    h = D(1.0 - keep_prob, seed=12)(h)
    h = keras.layers.Reshape((8, 1))(h)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(3, name="out", kernel_initializer=init(6))(h)
    return keras.Model(x, out)


def variants(direction: str) -> tuple[str, str]:
    return ("inverted", "standard") if direction == "to_standard" else ("standard", "inverted")


def twins(direction: str, keep_prob: float = P, build: Callable = mlp, **kw):
    src_variant, dst_variant = variants(direction)
    src, dst = build(src_variant, keep_prob, **kw), build(dst_variant, keep_prob, **kw)
    conversion.convert_weights(src, dst, direction)
    return src, dst


def steps_for(optimizer) -> int:
    """The fewest full-batch steps that take every step-dependent path of ``optimizer``.

    At least ``MIN_STEPS``; with gradient accumulation over ``k`` steps, at least
    two applied updates (``2 k`` steps); with an EMA overwritten every ``f``
    updates, one update after the first overwrite (``f + 1``); with a warm-up of
    ``w`` updates (a learning-rate schedule's or ScheduleFreeAdamW's), two
    updates after it (``w + 2``). Keras counts updates, not steps, under
    accumulation.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    every = inner.gradient_accumulation_steps or 1
    updates = 2 if every > 1 else 1
    if inner.use_ema and inner.ema_overwrite_frequency:
        updates = max(updates, inner.ema_overwrite_frequency + 1)
    for warm_up in (getattr(inner, "warmup_steps", 0), getattr(inner._learning_rate, "warmup_steps", 0)):
        updates = max(updates, (warm_up or 0) + 2)
    return max(MIN_STEPS, updates * every)


def train_eager(model: keras.Model, optimizer, steps: int) -> dict[str, tuple[float, float]]:
    """Full-batch steps as ``fit``'s train_step does them: scale_loss, gradient, apply.

    Returns, per variable path, the largest norm and the largest absolute entry
    of its (unscaled) gradient over the steps: what clipping acts on.
    """
    seen: dict[str, tuple[float, float]] = {}
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = ops.mean((model(X, training=True) - Y) ** 2) + sum(model.losses)
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        factor = float(scaled) / float(loss)  # the loss scale (1 without one)
        for g, v in zip(grads, model.trainable_variables):
            g = np.asarray(g) / factor
            norm, top = seen.get(v.path, (0.0, 0.0))
            seen[v.path] = (max(norm, float(np.linalg.norm(g))), max(top, float(np.max(np.abs(g)))))
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    optimizer.finalize_variable_values(model.trainable_variables)  # EMA, as fit does
    return seen


def assert_paths_taken(optimizer, model: keras.Model, grads: dict[str, tuple[float, float]]) -> None:
    """The paths of ``optimizer`` that act only on some values were taken on a consuming kernel.

    Clipping (``clipnorm``, ``clipvalue``) clipped a consuming kernel's gradient
    at some step: the map changes the thresholds there (``c -> c p``), and a
    threshold never reached would leave that part of the map unchecked. AMSGrad's
    maximum kept an earlier second moment (``v_hat > v`` at the end) somewhere.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    kernels = [v.path for c in conversion.dropout_consumers(model) for v in c.variables]
    if inner.clipnorm:
        largest = max(grads[k][0] for k in kernels)
        assert largest > inner.clipnorm, f"clipnorm {inner.clipnorm} never binds (norm <= {largest:.3g})"
    if inner.clipvalue:
        largest = max(grads[k][1] for k in kernels)
        assert largest > inner.clipvalue, f"clipvalue {inner.clipvalue} never binds (|g| <= {largest:.3g})"
    if getattr(inner, "amsgrad", False):  # Keras's Adam keeps v and v_hat per variable
        assert any(
            np.any(np.asarray(v_hat) > np.asarray(v))
            for v_hat, v in zip(inner._velocity_hats, inner._velocities)
        ), "AMSGrad's maximum never kept an earlier second moment"


def mismatch(src: keras.Model, dst: keras.Model, direction: str) -> float:
    """max over tensors of max|W_dst - s W_src| / max|s W_src|."""
    expected = conversion.converted_weights(src, direction)
    return max(float(np.max(np.abs(e - a)) / np.max(np.abs(e))) for e, a in zip(expected, dst.get_weights()))


def moved(model: keras.Model, before: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(model.get_weights(), before))


def run_pair(
    make_opt: Callable,
    direction: str = "to_standard",
    build: Callable = mlp,
    dst_optimizer: Callable | None = None,
    **kw,
) -> tuple[float, float]:
    """Train the twins for ``steps_for`` steps; return (mismatch, how far the source moved)."""
    src, dst = twins(direction, build=build, **kw)
    w0 = src.get_weights()
    opt = make_opt()
    if dst_optimizer is None:
        opt_dst = mapping.mapped_multi_optimizer(dst, opt, direction)
    else:
        opt_dst = dst_optimizer(dst, opt)
    steps = steps_for(opt)
    assert_paths_taken(opt, src, train_eager(src, opt, steps))
    train_eager(dst, opt_dst, steps)
    return mismatch(src, dst, direction), moved(src, w0)


def multi_with(dst: keras.Model, default, consumer_opt):
    """A MultiOptimizer with a hand-made optimizer on the consuming kernels."""
    opt_map = O.OptimizerMap(default_optimizer=default)
    for c in conversion.dropout_consumers(dst):
        for v in c.variables:
            opt_map[re.escape(v.path)] = consumer_opt
    return O.MultiOptimizer(opt_map)


# ------------------------------------------------- every optimizer, exact

EXP = O.schedules.ExponentialDecay(0.1, decay_steps=5, decay_rate=0.5)
COS = O.schedules.CosineDecay(0.02, decay_steps=12, warmup_target=0.03, warmup_steps=4)

CASES = [
    # Every optimizer; every base option rides on one of them (each case's id
    # names its options). Epsilons are large enough that a wrong epsilon map
    # shows (see the negative controls).
    ("SGD + clipvalue", lambda: O.SGD(0.1, clipvalue=0.02)),
    ("SGD momentum + weight_decay", lambda: O.SGD(0.05, momentum=0.9, weight_decay=0.3)),
    ("SGD nesterov", lambda: O.SGD(0.05, momentum=0.9, nesterov=True)),
    ("SGD + schedule + loss_scale_factor", lambda: O.SGD(EXP, momentum=0.5, loss_scale_factor=100.0)),
    ("Adam", lambda: O.Adam(0.01, epsilon=1e-3)),
    ("Adam amsgrad + clipnorm", lambda: O.Adam(0.01, epsilon=1e-3, amsgrad=True, clipnorm=0.05)),
    (
        "Adam + callable lr + EMA",
        lambda: O.Adam(lambda: 0.01, epsilon=1e-3, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=5),
    ),
    ("AdamW + schedule", lambda: O.AdamW(COS, weight_decay=0.1, epsilon=1e-3)),
    ("Adamax", lambda: O.Adamax(0.01, epsilon=1e-3)),
    ("Nadam", lambda: O.Nadam(0.01, epsilon=1e-3)),
    ("RMSprop + gradient accumulation", lambda: O.RMSprop(0.01, epsilon=1e-3, gradient_accumulation_steps=3)),
    ("RMSprop centered momentum", lambda: O.RMSprop(0.01, momentum=0.5, centered=True, epsilon=1e-3)),
    ("Adagrad", lambda: O.Adagrad(0.1, initial_accumulator_value=0.2, epsilon=1e-3)),
    ("Adadelta + weight_decay", lambda: O.Adadelta(1.0, epsilon=1e-3, weight_decay=0.3)),
    ("Ftrl", lambda: O.Ftrl(0.1)),
    (
        "Ftrl l1 l2 shrinkage beta power + weight_decay",
        lambda: O.Ftrl(
            0.1,
            learning_rate_power=-0.7,
            initial_accumulator_value=0.2,
            l1_regularization_strength=0.01,
            l2_regularization_strength=0.1,
            l2_shrinkage_regularization_strength=0.05,
            beta=0.3,
            weight_decay=0.3,
        ),
    ),
    ("Ftrl power 0", lambda: O.Ftrl(0.05, learning_rate_power=0.0, beta=0.2)),
    ("Lion + weight_decay", lambda: O.Lion(0.003, weight_decay=0.3)),
    ("Lamb + weight_decay", lambda: O.Lamb(0.01, epsilon=1e-3, weight_decay=0.3)),
    ("Adafactor relative step", lambda: O.Adafactor(0.05, epsilon_2=0.5)),
    (
        "Adafactor + schedule + weight_decay",
        lambda: O.Adafactor(COS, epsilon_1=1e-3, clip_threshold=0.5, weight_decay=0.3),
    ),
    (
        "ScheduleFreeAdamW + weight_decay",
        lambda: O.ScheduleFreeAdamW(0.01, warmup_steps=5, weight_decay=0.1, epsilon=1e-3),
    ),
    ("Muon AdamW branch", lambda: O.Muon(0.01, epsilon=1e-3, exclude_layers=["out"])),
    ("LossScaleOptimizer", lambda: O.LossScaleOptimizer(O.Adam(0.01, epsilon=1e-3))),
]


@pytest.mark.parametrize("make_opt", [pytest.param(f, id=i) for i, f in CASES])
def test_mapped_optimizer_reproduces_the_trajectory(make_opt):
    err, how_far = run_pair(make_opt)
    assert how_far > 1e-3, "the net hardly moved: the comparison would prove nothing"
    assert err < TOL, f"mapped trajectory off by {err:.2e} (relative)"


@pytest.mark.parametrize(
    "make_opt",
    [
        pytest.param(f, id=i)
        for i, f in CASES
        if i
        in {"SGD nesterov", "RMSprop centered momentum", "Ftrl l1 l2 shrinkage beta power + weight_decay"}
    ],
)
def test_to_inverted_reproduces_the_trajectory(make_opt):
    err, how_far = run_pair(make_opt, direction="to_inverted")
    assert how_far > 1e-3
    assert err < TOL, f"mapped trajectory off by {err:.2e} (relative)"


def test_two_dropouts_two_keep_probs_chained():
    """Consumers behind p = 0.8 and behind p = 0.7 get different mapped optimizers."""
    src, dst = twins("to_standard", build=two_dropout_net)
    consumers = conversion.dropout_consumers(dst)
    assert [(c.layer.name, c.keep_prob) for c in consumers] == [("h1", 0.8), ("out", P)]
    opt = O.Adam(0.01, epsilon=1e-3)
    opt_dst = mapping.mapped_multi_optimizer(dst, opt, "to_standard")
    assert len({id(o) for o in opt_dst.optimizers}) == 3  # default + one per keep_prob
    train_eager(src, opt, steps_for(opt))
    train_eager(dst, opt_dst, steps_for(opt))
    assert mismatch(src, dst, "to_standard") < TOL


# ----------------------------------------- negative controls: maps needed


def _clone(opt, p):
    return mapping.clone_optimizer(opt)


CONTROLS = [
    ("SGD, same lr", lambda: O.SGD(0.1), _clone),
    ("SGD, lr/p (gradient-scale intuition)", lambda: O.SGD(0.1), lambda o, p: O.SGD(0.1 / p)),
    (
        "Adam, lr/p, epsilon unmapped",
        lambda: O.Adam(0.01, epsilon=1e-3),
        lambda o, p: O.Adam(0.01 / p, epsilon=1e-3),
    ),
    (
        "RMSprop, epsilon*p (outside-sqrt map)",
        lambda: O.RMSprop(0.01, epsilon=1e-3),
        lambda o, p: O.RMSprop(0.01 / p, epsilon=1e-3 * p),
    ),
    (
        "Lamb, Adam's map lr/p",
        lambda: O.Lamb(0.01, epsilon=1e-3),
        lambda o, p: O.Lamb(0.01 / p, epsilon=1e-3 * p),
    ),
    (
        "SGD, weight_decay unmapped",
        lambda: O.SGD(0.1, weight_decay=0.3),
        lambda o, p: O.SGD(0.1 / p**2, weight_decay=0.3),
    ),
    (
        "Adam, clipnorm unmapped",
        lambda: O.Adam(0.01, epsilon=1e-3, clipnorm=0.05),
        lambda o, p: O.Adam(0.01 / p, epsilon=1e-3 * p, clipnorm=0.05),
    ),
]


@pytest.mark.parametrize("make_opt, wrong", [pytest.param(f, w, id=i) for i, f, w in CONTROLS])
def test_wrong_maps_diverge(make_opt, wrong):
    def dst_opt(dst, opt):
        return multi_with(dst, mapping.clone_optimizer(opt), wrong(opt, P))

    err, _ = run_pair(make_opt, dst_optimizer=dst_opt)
    assert err > WRONG, f"a wrong map matched to {err:.1e}: the test cannot tell maps apart"


def test_keras_max_norm_is_not_exactly_mappable():
    """Keras's MaxNorm epsilon breaks the c -> c/p map; EquivariantMaxNorm does not."""
    errs = {}
    kinds = (("keras", keras.constraints.MaxNorm), ("equivariant", conversion.EquivariantMaxNorm))
    for name, C in kinds:
        src = mlp("inverted", P, kernel_constraint=C(0.5))
        dst = mlp("standard", P, kernel_constraint=C(0.5 / P))
        conversion.convert_weights(src, dst, "to_standard")
        opt = O.SGD(0.1)
        mapped = mapping.mapped_multi_optimizer(dst, opt, "to_standard")  # before opt trains
        train_eager(src, opt, steps_for(opt))
        train_eager(dst, mapped, steps_for(opt))
        errs[name] = mismatch(src, dst, "to_standard")
    assert errs["equivariant"] < TOL
    assert errs["keras"] > 1e-9, errs  # ~1e-7/||w|| per step


# ------------------------------------------------------ real model.fit


def fit(model: keras.Model, optimizer, steps: int) -> None:
    """``steps`` full-batch steps of ``fit``: one epoch over X repeated (as ``steps`` epochs
    over X would do them, without Keras's per-epoch overhead)."""
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.tile(X, (steps, 1)), np.tile(Y, (steps, 1)), batch_size=len(X), shuffle=False, verbose=0)


FIT_CASES = [
    (
        "AdamW + schedule + clipnorm + EMA",
        lambda: O.AdamW(COS, weight_decay=0.2, epsilon=1e-3, clipnorm=0.05, use_ema=True, ema_momentum=0.8),
        "to_standard",
    ),
    (
        "LossScaleOptimizer(SGD nesterov)",
        lambda: O.LossScaleOptimizer(O.SGD(0.05, momentum=0.9, nesterov=True)),
        "to_inverted",
    ),
]


@pytest.mark.parametrize("make_opt, direction", [pytest.param(f, d, id=i) for i, f, d in FIT_CASES])
def test_fit_reproduces_the_trajectory(make_opt, direction):
    src, dst = twins(direction)
    w0 = src.get_weights()
    opt = make_opt()
    steps = steps_for(opt)
    # clipping binds at the first step: a fresh source draws the same weights and mask
    first, first_opt = twins(direction)[0], make_opt()
    assert_paths_taken(first_opt, first, train_eager(first, first_opt, 1))
    mapped = mapping.mapped_multi_optimizer(dst, opt, direction)  # before opt trains
    fit(src, opt, steps)
    fit(dst, mapped, steps)
    assert moved(src, w0) > 1e-3
    assert mismatch(src, dst, direction) < TOL


def test_fit_l2_max_norm_and_initializer_maps():
    """PLAN #5 and #7 in model.fit: l2 -> l2 p^2, c -> c/p, sigma -> sigma/p.

    No weight conversion: the standard net draws its consuming kernel from the
    mapped initializer (same seed), so it starts at W_inv / p by itself.
    """
    init = keras.initializers.GlorotUniform(seed=3)
    reg = keras.regularizers.L2(0.01)
    con = conversion.EquivariantMaxNorm(0.5)  # binds: the columns start at norm ~1.2
    src = mlp("inverted", P, kernel_initializer=init, kernel_regularizer=reg, kernel_constraint=con)
    dst = mlp(
        "standard",
        P,
        kernel_initializer=conversion.map_initializer(init, P, "to_standard"),
        kernel_regularizer=conversion.map_regularizer(reg, P, "to_standard"),
        kernel_constraint=conversion.map_constraint(con, P, "to_standard"),
    )
    assert mismatch(src, dst, "to_standard") < TOL  # the initial draws
    assert np.linalg.norm(src.get_layer("out").kernel.numpy(), axis=0).max() > 0.5  # the constraint binds
    opt = O.Adagrad(0.1, epsilon=1e-3)
    mapped = mapping.mapped_multi_optimizer(dst, opt, "to_standard")  # before opt trains
    fit(src, opt, steps_for(opt))
    fit(dst, mapped, steps_for(opt))
    assert mismatch(src, dst, "to_standard") < TOL


# ---------------------------------------------------------- properties

KINDS = ("sgd", "adam", "rmsprop", "adagrad", "ftrl")


@st.composite
def optimizer_specs(draw):
    kind = draw(st.sampled_from(KINDS))
    lr = draw(st.floats(1e-3, 0.05))
    eps = draw(st.floats(1e-6, 1e-2))
    wd = draw(st.one_of(st.none(), st.floats(0.0, 0.5)))
    if kind == "sgd":
        kw = dict(momentum=draw(st.floats(0.0, 0.95)), nesterov=draw(st.booleans()))
    elif kind == "adam":
        kw = dict(beta_1=draw(st.floats(0.0, 0.95)), epsilon=eps, amsgrad=draw(st.booleans()))
    elif kind == "rmsprop":
        kw = dict(
            rho=draw(st.floats(0.5, 0.99)),
            momentum=draw(st.floats(0.0, 0.9)),
            epsilon=eps,
            centered=draw(st.booleans()),
        )
    elif kind == "adagrad":
        kw = dict(initial_accumulator_value=draw(st.floats(0.0, 1.0)), epsilon=eps)
    else:
        kw = dict(
            learning_rate_power=-draw(st.floats(0.0, 1.0)),
            initial_accumulator_value=draw(st.floats(0.01, 1.0)),
            l1_regularization_strength=draw(st.floats(0.0, 0.1)),
            l2_regularization_strength=draw(st.floats(0.0, 0.1)),
            beta=draw(st.floats(0.0, 1.0)),
        )
    cls = dict(sgd=O.SGD, adam=O.Adam, rmsprop=O.RMSprop, adagrad=O.Adagrad, ftrl=O.Ftrl)[kind]
    return cls, dict(learning_rate=lr, weight_decay=wd, **kw)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=optimizer_specs(), keep_prob=st.floats(0.2, 1.0), direction=st.sampled_from(mapping.DIRECTIONS))
def test_random_hyperparameters_reproduce_the_trajectory(spec, keep_prob, direction):
    cls, kw = spec
    src, dst = twins(direction, keep_prob)
    opt = cls(**kw)
    mapped = mapping.mapped_multi_optimizer(dst, opt, direction)  # before opt trains
    train_eager(src, opt, steps_for(opt))
    train_eager(dst, mapped, steps_for(opt))
    assert mismatch(src, dst, direction) < TOL


CAST = {"weight_decay", "initial_accumulator_value"}  # Keras: ops.cast, via float32


def _numbers(opt) -> dict[str, float]:
    """The numbers the optimizer computes with."""
    cfg = mapping._base_config(opt)
    cfg["learning_rate"] = float(ops.convert_to_numpy(opt.learning_rate))
    return {
        k: mapping._keras_scalar(v) if k in CAST else float(v)
        for k, v in cfg.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


@settings(max_examples=40, deadline=None)
@given(spec=optimizer_specs(), keep_prob=st.floats(0.05, 1.0))
def test_to_inverted_undoes_to_standard(spec, keep_prob):
    cls, kw = spec
    opt = cls(**kw)
    back = mapping.to_inverted(mapping.to_standard(opt, keep_prob), keep_prob)
    a, b = _numbers(opt), _numbers(back)
    assert a.keys() == b.keys()
    for k in a:
        # two roundings (x * s, then / s): a few eps_64
        assert math.isclose(a[k], b[k], rel_tol=1e-14, abs_tol=1e-300), (k, a[k], b[k])


# ------------------------------------------------------- the table itself


def _lr(opt) -> float:
    return float(ops.convert_to_numpy(opt.learning_rate))


TABLE = [  # (optimizer factory, expected mapped values at p = 1/2)
    (lambda: O.SGD(0.1, weight_decay=0.25), dict(lr=0.4, weight_decay=0.0625)),
    (lambda: O.Adam(0.1, epsilon=0.01), dict(lr=0.2, epsilon=0.005)),
    (lambda: O.Adamax(0.1, epsilon=0.01), dict(lr=0.2, epsilon=0.005)),
    (lambda: O.Nadam(0.1, epsilon=0.01), dict(lr=0.2, epsilon=0.005)),
    (lambda: O.RMSprop(0.1, epsilon=0.01), dict(lr=0.2, epsilon=0.0025)),
    (
        lambda: O.Adagrad(0.1, epsilon=0.01, initial_accumulator_value=0.5),
        dict(lr=0.2, epsilon=0.0025, initial_accumulator_value=0.125),
    ),
    (lambda: O.Adadelta(0.1, epsilon=0.01), dict(lr=0.4, epsilon=0.0025)),
    (
        lambda: O.Ftrl(
            0.1,
            l1_regularization_strength=0.5,
            l2_regularization_strength=0.5,
            l2_shrinkage_regularization_strength=0.5,
            beta=0.5,
            initial_accumulator_value=0.5,
        ),
        dict(
            lr=0.2,
            l1_regularization_strength=0.25,
            l2_regularization_strength=0.125,
            l2_shrinkage_regularization_strength=0.125,
            beta=0.25,
            initial_accumulator_value=0.125,
        ),
    ),
    (lambda: O.Ftrl(0.1, learning_rate_power=0.0, beta=0.5), dict(lr=0.4, beta=0.5)),
    (lambda: O.Lion(0.1, weight_decay=0.5), dict(lr=0.2, weight_decay=0.25)),
    (lambda: O.Lamb(0.1, epsilon=0.01, weight_decay=0.5), dict(lr=0.1, epsilon=0.005, weight_decay=0.5)),
    (
        lambda: O.Adafactor(0.1, epsilon_1=0.01, epsilon_2=0.0625),
        dict(lr=0.1, epsilon_1=0.0025, epsilon_2=0.125),
    ),
    (
        lambda: O.ScheduleFreeAdamW(0.1, epsilon=0.0625, weight_decay=0.5),
        dict(lr=0.2, epsilon=0.03125, weight_decay=0.25),
    ),
    (
        lambda: O.Muon(0.1, epsilon=0.01, adam_weight_decay=0.5, exclude_layers=[".*"]),
        dict(lr=0.2, epsilon=0.005, adam_weight_decay=0.25),
    ),
    (lambda: O.AdamW(0.1, weight_decay=0.5, clipnorm=1.0), dict(lr=0.2, weight_decay=0.25, clipnorm=0.5)),
    (
        lambda: O.SGD(
            0.1,
            clipvalue=1.0,
            use_ema=True,
            ema_momentum=0.5,
            gradient_accumulation_steps=2,
            loss_scale_factor=8.0,
        ),
        dict(
            lr=0.4,
            clipvalue=0.5,
            use_ema=True,
            ema_momentum=0.5,
            gradient_accumulation_steps=2,
            loss_scale_factor=8.0,
        ),
    ),
]


@pytest.mark.parametrize("make_opt, expect", TABLE)
def test_table_at_p_one_half(make_opt, expect):
    """The module table at p = 1/2, where every number is exact in binary."""
    opt = make_opt()  # inside the test: the float64 fixture is active
    muon = isinstance(opt, O.Muon)
    variables = [keras.Variable(np.ones((2, 2)), name="kernel")] if muon else None
    mapped = mapping.to_standard(opt, 0.5, variables=variables)
    assert type(mapped) is type(opt) and mapped is not opt
    expect = dict(expect)
    assert _lr(mapped) == expect.pop("lr")
    for k, v in expect.items():
        assert getattr(mapped, k) == v, (k, getattr(mapped, k), v)


def test_schedule_is_wrapped_and_serialisable():
    mapped = mapping.to_standard(O.SGD(EXP), 0.5)
    sched = mapped._learning_rate
    assert isinstance(sched, mapping.ScaledLearningRateSchedule) and sched.factor == 4.0
    for step in (0, 3, 17):
        assert float(sched(step)) == 4.0 * float(EXP(step))
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(sched))
    assert float(again(7)) == float(sched(7))


def test_weight_decay_keeps_float64():
    """Keras casts weight_decay through float32; the mapped value must not lose the map."""
    mapped = mapping.to_standard(O.SGD(0.1, weight_decay=0.1), P)
    assert isinstance(mapped.weight_decay, np.float64)
    assert math.isclose(mapped.weight_decay, float(np.float32(0.1)) * P**2, rel_tol=1e-15)


def test_weight_decay_exclusions_by_name_are_copied():
    opt = O.AdamW(0.01)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma"])
    mapped = mapping.to_standard(opt, P)
    assert mapped._exclude_from_weight_decay_pattern.search("out/bias")
    assert not mapped._exclude_from_weight_decay_pattern.search("out/kernel")


def test_mapped_multi_optimizer_assigns_only_consuming_kernels():
    _, dst = twins("to_standard")
    opt = O.Adam(0.01)
    multi = mapping.mapped_multi_optimizer(dst, opt, "to_standard")
    multi.build(dst.trainable_variables)
    mapped = [
        v.path.split("/", 1)[1]
        for v in dst.trainable_variables
        if multi._optimizer_map[v.path] is not multi._optimizer_map.default_optimizer
    ]
    assert mapped == ["out/kernel"]
    assert all(o is not opt for o in multi.optimizers)  # nothing shared with the source
    explicit = mapping.mapped_multi_optimizer(dst, opt, "to_standard", keep_prob=P, consuming_layers=["out"])
    assert [p for p in explicit._optimizer_map] == [re.escape(dst.get_layer("out").kernel.path)]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "opt", [O.SGD(0.1, global_clipnorm=1.0), O.Adam(global_clipnorm=1.0)], ids=["SGD", "Adam"]
)
def test_global_clipnorm_raises(opt):
    with pytest.raises(NoExactMapError, match="global norm"):
        mapping.to_standard(opt, P)
    _, dst = twins("to_standard")
    with pytest.raises(NoExactMapError, match="global norm"):
        mapping.mapped_multi_optimizer(dst, opt, "to_standard")


def test_muon_newton_schulz_branch_raises():
    with pytest.raises(NoExactMapError, match="1e-7"):
        mapping.to_standard(O.Muon(), P)  # no variables: cannot check the branch
    _, dst = twins("to_standard")
    with pytest.raises(NoExactMapError, match="out/kernel"):
        mapping.mapped_multi_optimizer(dst, O.Muon(), "to_standard")


def test_unknown_optimizer_raises():
    class MyAdam(O.Adam):
        pass

    with pytest.raises(NoExactMapError, match="no map derived"):
        mapping.to_standard(MyAdam(), P)
    with pytest.raises(TypeError, match="MultiOptimizer"):
        mapping.to_standard(O.MultiOptimizer(O.OptimizerMap(O.SGD())), P)


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.3, float("nan")])
def test_bad_keep_prob_raises(bad):
    with pytest.raises(ValueError, match="keep_prob"):
        mapping.to_standard(O.SGD(), bad)


def test_bad_direction_and_arguments_raise():
    with pytest.raises(ValueError, match="to_standard"):
        mapping.map_optimizer(O.SGD(), P, "standard")
    _, dst = twins("to_standard")
    with pytest.raises(ValueError, match="together"):
        mapping.mapped_multi_optimizer(dst, O.SGD(), "to_standard", keep_prob=P)


def test_exclusion_by_variable_object_raises():
    src, _ = twins("to_standard")
    opt = O.AdamW(0.01)
    opt.exclude_from_weight_decay(var_list=[src.get_layer("out").bias])
    with pytest.raises(ValueError, match="var_names"):
        mapping.to_standard(opt, P)


# ------------------------------------------------------------------ refusals


def test_a_trained_optimizer_is_refused_everywhere_a_map_starts():
    """Its state (moments, step count) would not carry over: the mapped run would restart."""
    import dropout_lib as dl

    src = mlp("inverted", P)
    opt = O.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 4, 0.5), momentum=0.9)
    mapped_before = mapping.mapped_multi_optimizer(mlp("standard", P), opt, "to_standard")  # fresh: fine
    src.compile(optimizer=opt, loss="mse")
    src.fit(X, Y, epochs=2, batch_size=16, verbose=0)
    assert int(opt.iterations) == 2 and int(mapped_before.iterations) == 0
    for call in (
        lambda: mapping.map_optimizer(opt, P, "to_standard"),
        lambda: mapping.mapped_multi_optimizer(mlp("standard", P), opt, "to_standard"),
        lambda: dl.convert_model(src, to="standard"),  # the compiled-in optimizer
    ):
        with pytest.raises(ValueError, match="already taken 2 steps"):
            call()
    assert int(mapping.clone_optimizer(opt).iterations) == 0  # clone: fresh by definition


@pytest.mark.parametrize(
    "bad, message",
    [("sgd", "keras.optimizers.get"), (O.SGD, "pass an instance"), ("model", "convert_model")],
)
def test_what_is_not_an_optimizer_is_refused_with_what_to_pass(bad, message):
    import dropout_lib as dl

    bad = mlp("inverted", P) if bad == "model" else bad
    with pytest.raises(TypeError, match=message):
        mapping.to_standard(bad, keep_prob=P)
    with pytest.raises(TypeError, match=message):
        dl.convert_model(mlp("inverted", P), to="standard", optimizer=bad)


def test_given_consumers_must_agree_with_the_graph():
    """keep_prob is p, not Keras's rate: a rate passed by mistake is caught where the graph says otherwise."""
    dst = mlp("standard", P)
    with pytest.raises(ValueError, match="keep_prob is p"):
        mapping.mapped_multi_optimizer(
            dst, O.SGD(0.1), "to_standard", keep_prob=1 - P, consuming_layers=["out"]
        )
    with pytest.raises(ValueError, match="keep_prob is p"):
        mapping.mapped_multi_optimizer(
            dst, O.SGD(0.1), "to_standard", keep_prob=P, consuming_layers=["hidden"]
        )
    agreed = mapping.mapped_multi_optimizer(
        dst, O.SGD(0.1), "to_standard", keep_prob=P, consuming_layers=["out"]
    )
    assert type(agreed).__name__ == "MultiOptimizer"

    class Subclassed(keras.Model):  # no graph to read: the caller's consumers stand
        def __init__(self):
            super().__init__()
            self.drop, self.out = StandardDropout(1 - P), keras.layers.Dense(3, name="out")

        def call(self, x):
            return self.out(self.drop(x))

    net = Subclassed()
    net(X)
    manual = mapping.mapped_multi_optimizer(
        net, O.SGD(0.1), "to_standard", keep_prob=P, consuming_layers=["out"]
    )
    assert type(manual).__name__ == "MultiOptimizer"
