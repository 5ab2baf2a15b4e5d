"""Tests of dropout_lib.exact.clipping: Keras's three clipping rules in front of an optimizer.

``keep_prob`` is the paper's ``p``; Keras's ``rate`` is ``1 - p``. The dropout
maps checked here (inverted -> standard): per-tensor ``clipnorm`` and
``clipvalue`` times ``p`` on the consuming weights reproduce the inverted
trajectory; ``global_clipnorm`` at any single threshold does not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropout_lib.exact import compare, mlp
from dropout_lib.exact.clipping import Clipped, clip_by_value
from dropout_lib.exact.optimizers import SGD, Adam, clip_by_norm
from dropout_lib.exact.training import train

SIZES = (5, 8, 6, 3)
BATCH = 16
KP = (0.8, 1.0, 0.6)  # no power of 2, so nothing is exact by luck
STEPS = 200
_rng = np.random.default_rng(6)
P0 = mlp.init_params(SIZES, _rng, bias_scale=0.1)
BATCHES = [(_rng.normal(size=(BATCH, SIZES[0])), _rng.normal(size=(BATCH, SIZES[-1]))) for _ in range(4)]
MASKS = [mlp.sample_masks(SIZES, KP, BATCH, _rng) for _ in range(STEPS)]
# Exact maps leave float64 rounding only (observed ~1e-15 over these runs); a
# wrong map is off by >= 1e-2. As in test_optimizers.
MAP_TOL = 1e-12
CONTROL_GAP = 1e-3

floats = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
arrays = st.lists(floats, min_size=1, max_size=12).map(np.array)
scales = st.floats(1e-3, 1e3)


@given(arrays, st.floats(1e-3, 1e3))
def test_clip_by_value_bounds_and_keeps_small_entries(g, v):
    out = clip_by_value(g, v)
    assert np.all(np.abs(out) <= v)
    small = np.abs(g) <= v
    assert np.array_equal(out[small], g[small])
    assert np.array_equal(np.sign(out[~small]) * v, out[~small])


@given(arrays, st.floats(1e-3, 1e3), scales)
def test_clip_by_value_is_exactly_homogeneous(g, v, s):
    """clip(s g, s v) = s clip(g, v) bit for bit: each entry is s*g_i or +-s*v."""
    assert np.array_equal(clip_by_value(s * g, s * v), s * clip_by_value(g, v))


@given(arrays, st.floats(1e-3, 1e3), scales)
def test_clip_by_norm_is_homogeneous_to_rounding(g, c, s):
    a, b = clip_by_norm(s * g, s * c), s * clip_by_norm(g, c)
    assert np.allclose(a, b, rtol=1e-14, atol=1e-300)


@pytest.mark.parametrize(
    "rule, kwargs", [("norm", {"clipnorm": 0.3}), ("global_norm", {"global_clipnorm": 0.3})]
)
def test_norm_rules_equal_the_optimizers_own_clipping(rule, kwargs):
    wrapped = train(
        P0,
        BATCHES,
        MASKS,
        variant="inverted",
        keep_probs=KP,
        steps=20,
        optimizer=Clipped(SGD(0.1, momentum=0.9), rule, 0.3),
    )
    own = train(
        P0,
        BATCHES,
        MASKS,
        variant="inverted",
        keep_probs=KP,
        steps=20,
        optimizer=SGD(0.1, momentum=0.9, **kwargs),
    )
    for n in P0:
        assert np.array_equal(wrapped.params[n], own.params[n]), n


def test_activity_is_recorded():
    opt = Clipped(SGD(0.1), "value", 0.05)
    train(P0, BATCHES, MASKS, variant="inverted", keep_probs=KP, steps=5, optimizer=opt)
    assert len(opt.active) == 5 and set(opt.active[0]) == set(P0)
    assert 0.0 < opt.active_fraction() <= 1.0
    assert opt.iterations == 5 and opt.state is opt.optimizer.state and opt.lr == 0.1
    never = Clipped(SGD(0.1), "norm", 1e6)
    train(P0, BATCHES, MASKS, variant="inverted", keep_probs=KP, steps=3, optimizer=never)
    assert never.active_fraction() == 0.0


def _gap(rule, threshold_std, threshold_inv=0.1, opt=lambda lr: SGD(lr, momentum=0.9)):
    comp = compare.compare_training(
        P0,
        BATCHES,
        MASKS,
        keep_probs=KP,
        steps=STEPS,
        optimizer_inverted=Clipped(opt(0.05), rule, threshold_inv),
        optimizer_standard=Clipped(opt(mlp.per_parameter(0.05, P0, KP, -2)), rule, threshold_std),
    )
    return comp, comp.optimizer_inverted.active_fraction()


@pytest.mark.parametrize("rule", ["norm", "value"])
def test_per_tensor_rules_map_by_p(rule):
    comp, active = _gap(rule, mlp.per_parameter(0.1, P0, KP, 1))
    assert active > 0.2, "the clipping hardly acted; the check would be vacuous"
    assert comp.moved > 0.1
    assert comp.worst < MAP_TOL
    control, _ = _gap(rule, 0.1)  # unmapped threshold
    assert control.final > CONTROL_GAP


def test_global_norm_has_no_threshold_map():
    for factor in (1.0, 0.8, 0.7, 0.6):  # c, and around c*p for both keep probabilities
        comp, active = _gap("global_norm", 0.1 * factor)
        assert active > 0.5
        assert comp.final > CONTROL_GAP, factor


def test_adam_with_per_tensor_clipping_maps():
    kp_lr = mlp.per_parameter(0.01, P0, KP, -1)
    comp = compare.compare_training(
        P0,
        BATCHES,
        MASKS,
        keep_probs=KP,
        steps=STEPS,
        optimizer_inverted=Clipped(Adam(0.01, eps=1e-3), "value", 0.05),
        optimizer_standard=Clipped(
            Adam(kp_lr, eps=mlp.per_parameter(1e-3, P0, KP, 1)), "value", mlp.per_parameter(0.05, P0, KP, 1)
        ),
    )
    assert comp.worst < MAP_TOL


def test_validation():
    with pytest.raises(ValueError, match="clips already"):
        Clipped(SGD(0.1, clipnorm=1.0), "value", 0.1)
    with pytest.raises(ValueError, match="rule must be one of"):
        Clipped(SGD(0.1), "elementwise", 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one threshold"):
        Clipped(SGD(0.1), "global_norm", {"W1": 0.1})
    with pytest.raises(ValueError, match="finite number > 0"):
        Clipped(SGD(0.1), "norm", 0.0)
    with pytest.raises(ValueError, match=r"threshold\['W1'\]"):
        Clipped(SGD(0.1), "norm", {"W1": -1.0})
    with pytest.raises(ValueError, match="clipvalue must be"):
        clip_by_value(np.ones(3), math.inf)
    with pytest.raises(TypeError, match="Optimizer"):
        Clipped(object(), "norm", 0.1)  # type: ignore[arg-type]
    opt = Clipped(SGD(0.1), "norm", {"W1": 0.1})
    with pytest.raises(ValueError, match="no entry for parameter"):
        opt.step({n: v.copy() for n, v in P0.items()}, {n: np.ones_like(v) for n, v in P0.items()})
    with pytest.raises(ValueError, match="no step taken"):
        Clipped(SGD(0.1), "norm", 0.1).active_fraction()


@settings(max_examples=20, deadline=None)
@given(st.floats(0.3, 0.95))
def test_eval_point_delegates(mu):
    inner = SGD(0.1, momentum=mu, nesterov=True, form="paper")
    opt = Clipped(inner, "norm", 0.5)
    params = {n: v.copy() for n, v in P0.items()}
    opt.step(params, {n: np.ones_like(v) for n, v in P0.items()})
    point = opt.eval_point(params)
    expected = inner.eval_point(params)
    assert all(np.array_equal(point[n], expected[n]) for n in P0)
