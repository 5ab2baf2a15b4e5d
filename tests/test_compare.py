"""Tests of dropout_lib.exact.compare: per-step gaps between an inverted and a mapped standard run."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropout_lib.exact import mlp
from dropout_lib.exact.compare import Factor, compare_training, fitted_factors, trajectory_gaps
from dropout_lib.exact.optimizers import SGD, Adam

SIZES = (4, 6, 5, 3)
BATCH = 8
STEPS = 60
KP = (0.8, 1.0, 0.6)  # W1 and W3 consume dropped layers, W2 does not

# Same reasoning as tests/test_optimizers.py: the mapped runs differ by rounding
# only (observed ~1e-15 here); every wrong map is off by > 1e-3 within these steps.
MAP_TOL = 1e-12
CONTROL_GAP = 1e-3


def _setup(seed: int, kp=KP, steps: int = STEPS):
    rng = np.random.default_rng(seed)
    params = mlp.init_params(SIZES, rng, bias_scale=0.1)
    batches = [(rng.normal(size=(BATCH, SIZES[0])), rng.normal(size=(BATCH, SIZES[-1]))) for _ in range(3)]
    masks = [mlp.sample_masks(SIZES, kp, BATCH, rng) for _ in range(steps)]
    return params, batches, masks


def _lr(params, kp, power, eta=0.05):
    return mlp.per_parameter(eta, params, kp, power)


# ------------------------------------------------------------ fitted_factors


def test_fitted_factors_exact_multiple_and_orthogonal():
    rng = np.random.default_rng(0)
    b = {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    f = fitted_factors({"W": 2.5 * b["W"], "b": b["b"]}, b)
    assert f["W"].factor == pytest.approx(2.5, rel=1e-15) and f["W"].residual < 1e-15
    assert f["b"] == Factor(1.0, 0.0)
    # orthogonal: factor 0, nothing explained
    a = {"W": np.array([1.0, 0.0]), "b": np.array([0.0, 0.0])}
    g = fitted_factors(a, {"W": np.array([0.0, 3.0]), "b": np.array([1.0, 1.0])})
    assert g["W"] == Factor(0.0, 1.0)
    assert g["b"] == Factor(0.0, 0.0)  # a = 0 is 0 times b exactly


def test_fitted_factors_errors():
    with pytest.raises(ValueError, match="names differ"):
        fitted_factors({"a": np.ones(2)}, {"b": np.ones(2)})
    with pytest.raises(ValueError, match="shape"):
        fitted_factors({"a": np.ones(2)}, {"a": np.ones(3)})
    with pytest.raises(ValueError, match="all zeros"):
        fitted_factors({"a": np.ones(2)}, {"a": np.zeros(2)})


# ------------------------------------------------------------ trajectory_gaps


def test_trajectory_gaps_by_hand():
    ref = [
        {"w": np.array([3.0, 4.0]), "b": np.array([0.0])},
        {"w": np.array([3.0, 4.0]), "b": np.array([2.0])},
    ]
    other = [
        {"w": np.array([3.0, 4.5]), "b": np.array([0.25])},
        {"w": np.array([3.0, 4.0]), "b": np.array([2.0])},
    ]
    gaps, per = trajectory_gaps(ref, other)
    assert per["w"].tolist() == [0.1, 0.0]  # 0.5 / 5
    assert per["b"].tolist() == [0.25, 0.0]  # ||ref|| = 0: absolute difference
    assert gaps.tolist() == [0.25, 0.0]
    doubled = [{n: 2 * v for n, v in s.items()} for s in ref]
    gaps, _ = trajectory_gaps(ref, doubled, lambda s: {n: v / 2 for n, v in s.items()})
    assert gaps.tolist() == [0.0, 0.0]


def test_trajectory_gaps_errors():
    s = {"w": np.ones(2)}
    with pytest.raises(ValueError, match="same number of steps"):
        trajectory_gaps([s, s], [s])
    with pytest.raises(ValueError, match="empty"):
        trajectory_gaps([], [])
    with pytest.raises(ValueError, match="names differ"):
        trajectory_gaps([s], [{"v": np.ones(2)}])


# ------------------------------------------------------------ compare_training


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    kp=st.tuples(st.floats(0.3, 0.95), st.just(1.0), st.floats(0.3, 0.95)),
    momentum=st.sampled_from([0.0, 0.9]),
)
def test_sgd_mapped_run_matches_and_controls_do_not(seed, kp, momentum):
    params, batches, masks = _setup(seed, kp)
    run = lambda power: compare_training(  # noqa: E731
        params,
        batches,
        masks,
        keep_probs=kp,
        steps=STEPS,
        optimizer_inverted=SGD(0.05, momentum=momentum),
        optimizer_standard=SGD(_lr(params, kp, power), momentum=momentum),
    )
    mapped = run(-2)
    assert mapped.gaps.shape == (STEPS + 1,)
    assert mapped.worst <= MAP_TOL
    assert mapped.moved > 1e-2
    for power in (0, -1):
        assert run(power).final > CONTROL_GAP


def test_no_dropout_gives_identical_runs_bit_for_bit():
    kp = (1.0, 1.0, 1.0)
    params, batches, masks = _setup(1, kp)
    c = compare_training(
        params,
        batches,
        masks,
        keep_probs=kp,
        steps=STEPS,
        optimizer_inverted=lambda: Adam(0.01),
        optimizer_standard=lambda: Adam(0.01),
    )
    assert c.worst == 0.0 and c.moved > 1e-2


def test_step_factors_are_p_squared_for_the_same_lr():
    """Same lr in both nets: the mapped-back standard step on W_k is p_k^2 times the
    inverted one (gradient times p, then weight times p); 1 on everything else."""
    params, batches, masks = _setup(2)
    c = compare_training(
        params,
        batches,
        masks,
        keep_probs=KP,
        steps=3,
        optimizer_inverted=SGD(0.05),
        optimizer_standard=SGD(0.05),
    )
    f = c.step_factors(0)
    expected = {"W1": 0.8**2, "W3": 0.6**2, "W2": 1.0, "b1": 1.0, "b2": 1.0, "b3": 1.0}
    for name, value in expected.items():
        assert f[name].factor == pytest.approx(value, rel=1e-13), name
        assert f[name].residual < 1e-13, name
    with pytest.raises(ValueError, match="t must be a step"):
        c.step_factors(3)


def test_separate_kwargs_and_velocity_state():
    """Per-run kwargs reach their run only (a mapped L2 coefficient, PLAN #5), and the
    optimizers keep their final state: the heavy-ball velocity maps like the weight."""
    params, batches, masks = _setup(3)
    l2_inv = {"W3": 0.01}
    opt_inv, opt_std = SGD(0.05, momentum=0.9), SGD(_lr(params, KP, -2), momentum=0.9)
    c = compare_training(
        params,
        batches,
        masks,
        keep_probs=KP,
        steps=STEPS,
        optimizer_inverted=opt_inv,
        optimizer_standard=opt_std,
        inverted_kw={"l2": l2_inv},
        standard_kw={"l2": {"W3": 0.01 * 0.6**2}},
    )
    assert c.worst <= MAP_TOL
    v_inv, v_std = opt_inv.state["W3"]["v"], opt_std.state["W3"]["v"]
    assert np.linalg.norm(0.6 * v_std - v_inv) <= MAP_TOL * np.linalg.norm(v_inv)
    assert c.optimizer_standard is opt_std
    assert c.state_gap("v") <= MAP_TOL
    assert c.state_gap("v", lambda s: dict(s)) > CONTROL_GAP  # the velocity does scale by p
    with pytest.raises(ValueError, match="no state 'm'"):
        c.state_gap("m")
    unmapped = compare_training(
        params,
        batches,
        masks,
        keep_probs=KP,
        steps=STEPS,
        optimizer_inverted=SGD(0.05, momentum=0.9),
        optimizer_standard=SGD(_lr(params, KP, -2), momentum=0.9),
        inverted_kw={"l2": l2_inv},
        standard_kw={"l2": l2_inv},
    )
    assert unmapped.final > CONTROL_GAP


def test_custom_start_and_maps():
    """params_standard and the maps are honoured: a standard start not on the map is
    seen at t = 0."""
    params, batches, masks = _setup(4)
    start = mlp.to_standard_params(params, KP)
    start["b2"] = start["b2"] + 1.0
    c = compare_training(
        params,
        batches,
        masks,
        keep_probs=KP,
        steps=2,
        params_standard=start,
        optimizer_inverted=SGD(0.05),
        optimizer_standard=SGD(0.05),
    )
    assert c.gaps[0] > 0.1
    ident = lambda s: {n: np.array(v) for n, v in s.items()}  # noqa: E731
    c = compare_training(
        params,
        batches,
        masks,
        keep_probs=KP,
        steps=2,
        to_standard=ident,
        to_inverted=ident,
        optimizer_inverted=SGD(0.05),
        optimizer_standard=SGD(0.05),
    )
    assert c.gaps[0] == 0.0 and c.final > CONTROL_GAP  # same weights, different functions


def test_clear_errors():
    params, batches, masks = _setup(5, steps=5)
    kw = dict(keep_probs=KP, steps=5)
    used = SGD(0.05)
    used.step({"w": np.ones(2)}, {"w": np.ones(2)})
    with pytest.raises(ValueError, match="already taken 1 steps"):
        compare_training(params, batches, masks, optimizer_inverted=used, optimizer_standard=SGD(0.05), **kw)
    shared = SGD(0.05)
    with pytest.raises(ValueError, match="same object"):
        compare_training(params, batches, masks, optimizer_inverted=shared, optimizer_standard=shared, **kw)
    with pytest.raises(ValueError, match="Optimizer or a callable"):
        compare_training(params, batches, masks, optimizer_inverted=0.05, optimizer_standard=SGD(0.05), **kw)
    with pytest.raises(ValueError, match="fixes itself"):
        compare_training(
            params,
            batches,
            masks,
            optimizer_inverted=SGD(0.05),
            optimizer_standard=SGD(0.05),
            standard_kw={"variant": "inverted"},
            **kw,
        )
