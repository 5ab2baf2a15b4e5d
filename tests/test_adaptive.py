"""Tests of dropout_lib.exact.adaptive: the Adam/RMSprop/Adagrad dropout map on the numpy nets.

An inverted-dropout net trained with ``opt(lr, eps)`` and its standard twin
(``W / p``) trained with ``standard_optimizer(...)`` on the same batches and
masks must follow the same trajectory (mapped back), and the optimizer
states must map as ``STATE_POWERS`` says. ``keep_prob`` is ``p``; Keras's
``rate`` is ``1 - p``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropout_lib.exact import adaptive, compare, mlp
from dropout_lib.exact.optimizers import SGD, Adagrad, Adam, RMSprop

SIZES = (5, 7, 3)
KEEP = (0.9, 0.7)  # neither a power of two: nothing is exact by luck
STEPS = 40
# float64, ~10 operations per weight per step, 40 steps: observed <= 1e-15.
TOL = 1e-12

_rng = np.random.default_rng(7)
PARAMS = mlp.init_params(SIZES, _rng, bias_scale=0.1)
BATCHES = [(x, _rng.normal(size=(16, SIZES[-1]))) for x in _rng.normal(size=(3, 16, SIZES[0]))]
MASKS = [mlp.sample_masks(SIZES, KEEP, 16, _rng) for _ in range(STEPS)]

CASES = [
    (Adam, "keras", dict()),
    (Adam, "paper", dict()),
    (Adam, "keras", dict(amsgrad=True)),
    (RMSprop, "keras", dict()),
    (RMSprop, "paper", dict()),
    (RMSprop, "keras", dict(centered=True, momentum=0.5)),
    (Adagrad, "keras", dict()),
    (Adagrad, "paper", dict(initial_accumulator_value=0.05)),
]
IDS = [f"{c.__name__}-{f}-{'-'.join(kw) or 'plain'}" for c, f, kw in CASES]
LR = {Adam: 0.01, RMSprop: 0.01, Adagrad: 0.1}
EPS = {"outside": 1e-2, "inside": 1e-3}  # comparable to sqrt(v), resp. v: a wrong map shows


def run(cls, form, kw, *, params=PARAMS, keep=KEEP, masks=MASKS, steps=STEPS, **powers):
    eps = EPS[adaptive.EPSILON_PLACEMENT[cls.__name__, form]]
    g0 = {k: v for k, v in kw.items() if k == "initial_accumulator_value"}
    rest = {k: v for k, v in kw.items() if k != "initial_accumulator_value"}
    return compare.compare_training(
        params,
        BATCHES,
        masks,
        keep_probs=keep,
        steps=steps,
        optimizer_inverted=cls(LR[cls], eps=eps, form=form, **kw),
        optimizer_standard=adaptive.standard_optimizer(
            cls, params, keep, lr=LR[cls], eps=eps, form=form, **g0, **rest, **powers
        ),
    )


@pytest.mark.parametrize("cls, form, kw", CASES, ids=IDS)
def test_map_reproduces_trajectory_and_state(cls, form, kw):
    result = run(cls, form, kw)
    assert result.moved > 0.05, "the net hardly trained: the comparison proves little"
    assert result.worst < TOL, f"mapped run off by {result.worst:.1e}"
    for key in result.optimizer_inverted.state["W1"]:
        if key == "mom" and not kw.get("momentum"):
            continue
        if key == "a" and not kw.get("centered"):
            continue
        gap = result.state_gap(key, adaptive.state_to_inverted(cls, key, KEEP))
        assert gap < TOL, f"state {key!r} does not map by p**{adaptive.STATE_POWERS[cls.__name__][key]}"


@pytest.mark.parametrize("cls, form, kw", CASES, ids=IDS)
@pytest.mark.parametrize(
    "control",
    [
        dict(lr_power=0.0, eps_power=0.0, accumulator_power=0.0),  # same hyperparameters
        dict(eps_power=0.0),  # epsilon unmapped
        dict(lr_power=-2.0),  # SGD's map
    ],
)
def test_wrong_maps_diverge(cls, form, kw, control):
    result = run(cls, form, kw, steps=10, **control)
    assert result.final > 1e-4, f"a wrong map stayed within {result.final:.1e}"


def test_wrong_epsilon_placement_diverges():
    # Keras's RMSprop has eps inside the root: the outside map eps * p is wrong.
    result = run(RMSprop, "keras", {}, steps=10, eps_power=1.0)
    assert result.final > 1e-4


def test_adagrad_accumulator_unmapped_diverges():
    result = run(Adagrad, "keras", {}, steps=10, accumulator_power=0.0)
    assert result.final > 1e-4


@settings(max_examples=15, deadline=None)
@given(st.floats(0.2, 0.95), st.floats(0.2, 1.0), st.sampled_from(range(len(CASES))))
def test_map_holds_for_random_keep_probs(p1, p2, case):
    cls, form, kw = CASES[case]
    keep = (p1, p2)
    rng = np.random.default_rng(int(p1 * 1e6))
    masks = [mlp.sample_masks(SIZES, keep, 16, rng) for _ in range(15)]
    result = run(cls, form, kw, keep=keep, masks=masks, steps=15)
    assert result.worst < TOL


def test_epsilon_power_and_hyperparameters():
    assert [adaptive.epsilon_power(c, f) for c, f, _ in CASES[:2] + CASES[3:5] + CASES[6:8]] == [
        1,
        1,
        2,
        1,
        2,
        1,
    ]
    assert adaptive.epsilon_power("RMSprop") == 2
    opt = adaptive.standard_optimizer(Adagrad, PARAMS, KEEP, lr=0.1, eps=1e-3)
    p1, p2 = KEEP
    assert opt.lr == pytest.approx({"W1": 0.1 / p1, "b1": 0.1, "W2": 0.1 / p2, "b2": 0.1})
    assert opt.eps == pytest.approx({"W1": 1e-3 * p1**2, "b1": 1e-3, "W2": 1e-3 * p2**2, "b2": 1e-3})
    assert opt.initial_accumulator_value == pytest.approx(
        {"W1": 0.1 * p1**2, "b1": 0.1, "W2": 0.1 * p2**2, "b2": 0.1}
    )
    opt = adaptive.standard_optimizer(Adam, PARAMS, KEEP, lr=0.1, eps=1e-3, beta_1=0.5)
    assert opt.eps["W2"] == pytest.approx(1e-3 * p2) and opt.beta_1 == 0.5


def test_state_to_inverted():
    to_inv = adaptive.state_to_inverted(Adam, "v", KEEP)
    state = {n: np.ones_like(w) for n, w in PARAMS.items()}
    out = to_inv(state)
    assert np.allclose(out["W1"], 1 / KEEP[0] ** 2) and np.allclose(out["b1"], 1.0)


@pytest.mark.parametrize("bad", [SGD, "SGD", "Adamax", 3])
def test_non_adaptive_optimizers_raise(bad):
    with pytest.raises(ValueError, match="one of Adam, RMSprop, Adagrad"):
        adaptive.epsilon_power(bad)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="form must be"):
        adaptive.epsilon_power(Adam, "pytorch")
    with pytest.raises(ValueError, match="Adagrad hyperparameter"):
        adaptive.standard_optimizer(Adam, PARAMS, KEEP, lr=0.1, eps=1e-3, initial_accumulator_value=0.1)
    with pytest.raises(ValueError, match="must be a class"):
        adaptive.standard_optimizer("Adam", PARAMS, KEEP, lr=0.1, eps=1e-3)
    with pytest.raises(ValueError, match="has no state"):
        adaptive.state_to_inverted(Adagrad, "v", KEEP)


def test_epsilon_ratio():
    opt = Adagrad(0.1, eps=0.5, initial_accumulator_value=2.0)
    params = {"w": np.zeros(2)}
    opt.step(params, {"w": np.array([0.0, 1.0])})
    assert np.allclose(adaptive.epsilon_ratio(opt)["w"], [0.25, 0.5 / 3])  # inside: eps / G
    opt = Adam(0.1, eps=0.5, form="paper", beta_2=0.75)
    opt.step(params, {"w": np.array([0.0, 2.0])})  # v = 0.25 * 4 = 1, v_hat = 4
    ratio = adaptive.epsilon_ratio(opt)["w"]
    assert ratio[0] == np.inf and ratio[1] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no step"):
        adaptive.epsilon_ratio(RMSprop(0.1))


def test_compare_runs_matches_compare_training():
    cls, form, kw = CASES[3]
    runs = adaptive.compare_runs(
        PARAMS,
        BATCHES,
        MASKS,
        keep_probs=KEEP,
        steps=10,
        optimizer_inverted=cls(LR[cls], eps=1e-3, form=form),
        optimizers_standard={
            "mapped": adaptive.standard_optimizer(cls, PARAMS, KEEP, lr=LR[cls], eps=1e-3),
            "same": cls(LR[cls], eps=1e-3, form=form),
        },
    )
    single = run(cls, form, kw, steps=10)
    assert np.array_equal(runs["mapped"].gaps, single.gaps)
    assert runs["mapped"].inverted is runs["same"].inverted
    assert runs["same"].final > 1e-4
    with pytest.raises(ValueError, match="fresh optimizer"):
        opt = cls(0.1)
        adaptive.compare_runs(
            PARAMS,
            BATCHES,
            MASKS,
            keep_probs=KEEP,
            steps=1,
            optimizer_inverted=opt,
            optimizers_standard={"a": opt},
        )
