"""Tests of dropout_lib.exact.optimizers and dropout_lib.exact.training: the hyperparameter maps.

An inverted-dropout net and the standard net with ``W -> W/p`` are trained on the
same batches and the same masks; the standard trajectory, mapped back with
``W -> p W``, must equal the inverted one when the hyperparameters are mapped
(PLAN #3-#8), and must not when they are not (negative controls).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropout_lib.exact import mlp
from dropout_lib.exact.optimizers import (
    SGD,
    Adagrad,
    Adam,
    RMSprop,
    clip_by_global_norm,
    clip_by_norm,
    max_norm,
)
from dropout_lib.exact.training import train

SIZES = (5, 8, 6, 3)
BATCH = 16
KP = (0.8, 0.7, 0.6)  # input dropout and both hidden layers; no power of 2, so nothing is exact by luck
# The maps are exact step by step (the mapped state after step t gives the mapped
# state after step t + 1), so a run of 100 steps checks them as well as a longer
# one: twice the 50 steps in which every wrong map below is off by > 4e-3, with
# the paths that act only on some values (clipping, max-norm) asserted taken.
STEPS = 100
CONTROL_STEPS = 50

_rng = np.random.default_rng(2014)
P0 = mlp.init_params(SIZES, _rng, bias_scale=0.1)
BATCHES = [(_rng.normal(size=(BATCH, SIZES[0])), _rng.normal(size=(BATCH, SIZES[-1]))) for _ in range(4)]
MASKS = [mlp.sample_masks(SIZES, KP, BATCH, _rng) for _ in range(STEPS)]

# The two runs follow the same real-number trajectory; in float64 they differ by
# rounding, a few eps_64 = 2.2e-16 per step, which the (small-lr) dynamics do not
# amplify: observed <= 2e-15 after 100 steps (9e-15 with Keras's max-norm epsilon;
# <= 5e-15 and 4e-14 after 500 steps). 1e-12 leaves a margin of 25x or more, while
# every wrong map tried is off by > 4e-3 within 50 steps (the controls), so the
# two never overlap.
MAP_TOL = 1e-12
CONTROL_GAP = 1e-3


def P(value: float, power: float) -> dict[str, float]:
    """``value * p^power`` on the consuming weights, ``value`` elsewhere."""
    return mlp.per_parameter(value, P0, KP, power)


class Inverted:
    """An inverted-dropout reference run; :meth:`gap` compares standard runs with it.

    ``kw`` (``l2``, ``constraints`` ...) goes to :func:`train` for both runs unless
    :meth:`gap` overrides it.
    """

    def __init__(self, opt, steps: int = STEPS, *, kp=KP, p0=P0, masks=MASKS, **kw) -> None:
        self.kp, self.p0, self.masks, self.kw = kp, p0, masks, kw
        self.run = train(
            p0, BATCHES, masks, variant="inverted", keep_probs=kp, optimizer=opt, steps=steps, **kw
        )
        # how far training moved (so a small gap does not come from a frozen net)
        self.moved = mlp.relative_difference(self.run.params, p0)

    def gap(self, opt_std, steps: int | None = None, **std_kw) -> float:
        """Worst relative difference over the first ``steps`` steps between this run and the
        standard run (from ``W / p``) mapped back to inverted coordinates."""
        steps = len(self.run.history) - 1 if steps is None else steps
        std = train(
            mlp.to_standard_params(self.p0, self.kp),
            BATCHES,
            self.masks,
            variant="standard",
            keep_probs=self.kp,
            optimizer=opt_std,
            steps=steps,
            **{**self.kw, **std_kw},
        )
        # mlp.relative_difference(mlp.to_inverted_params(s_t, kp), i_t), max over every step
        # t, vectorised over the steps (the per-step loop costs as much as training)
        scale = mlp.per_parameter(1.0, self.p0, self.kp, 1)
        worst = 0.0
        for name, p in scale.items():
            s = np.stack([h[name] for h in std.history]) * p
            i = np.stack([h[name] for h in self.run.history[: steps + 1]])
            axes = tuple(range(1, s.ndim))
            ratio = np.sqrt(((s - i) ** 2).sum(axis=axes)) / np.sqrt((i**2).sum(axis=axes))
            worst = max(worst, float(ratio.max()))
        return worst


# ------------------------------------------------ SGD, momentum, Nesterov (#3)

ETA = 0.05
SGD_FAMILY = {
    "sgd": dict(),
    "momentum": dict(momentum=0.9),
    "nesterov-keras": dict(momentum=0.9, nesterov=True),
    "nesterov-paper": dict(momentum=0.9, nesterov=True, form="paper"),
}


@pytest.mark.parametrize("name", SGD_FAMILY)
def test_sgd_family_map_lr_over_p_squared(name):
    kw = SGD_FAMILY[name]
    ref = Inverted(SGD(ETA, **kw))
    assert ref.gap(SGD(P(ETA, -2), **kw)) <= MAP_TOL
    assert ref.moved > 0.1
    for power in (0, -1):  # same lr; lr / p
        assert ref.gap(SGD(P(ETA, power), **kw), CONTROL_STEPS) > CONTROL_GAP


# --------------------------------------------------- Adam, RMSProp, Adagrad (#4)

# eps is made large enough to matter (compared with sqrt(v) ~ 1e-2 .. 1), so the
# eps map is tested too: with Keras's default 1e-7 a wrong eps would hide under 1e-5.
ETA_A = 0.01
ADAPTIVE = {
    # name: (class, kwargs, eps, where eps sits: 1 = outside the sqrt, 2 = inside)
    "adam-keras": (Adam, dict(), 1e-2, 1),
    "adam-paper": (Adam, dict(form="paper"), 1e-2, 1),
    "amsgrad-keras": (Adam, dict(amsgrad=True), 1e-2, 1),
    "rmsprop-keras": (RMSprop, dict(), 1e-3, 2),
    "rmsprop-keras-momentum-centered": (RMSprop, dict(momentum=0.5, centered=True), 1e-3, 2),
    "rmsprop-paper": (RMSprop, dict(form="paper"), 1e-2, 1),
    "adagrad-keras": (Adagrad, dict(), 0.3, 2),  # G_0 = 0.1 dwarfs a small eps
    "adagrad-paper": (Adagrad, dict(form="paper"), 1e-1, 1),
}


def _adaptive(name, lr, eps, g0_power: float | None = 2):
    cls, kw, _, _ = ADAPTIVE[name]
    if cls is Adagrad and kw.get("form", "keras") == "keras" and g0_power is not None:
        kw = {**kw, "initial_accumulator_value": P(0.1, g0_power)}
    return cls(lr, eps=eps, **kw)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_map_lr_over_p_and_eps(name):
    _, _, eps, inside = ADAPTIVE[name]
    ref = Inverted(_adaptive(name, ETA_A, eps, g0_power=0))
    assert ref.gap(_adaptive(name, P(ETA_A, -1), P(eps, inside))) <= MAP_TOL
    assert ref.moved > 0.1
    controls = {
        "same lr": _adaptive(name, ETA_A, P(eps, inside)),
        "SGD's lr / p^2": _adaptive(name, P(ETA_A, -2), P(eps, inside)),
        "eps unmapped": _adaptive(name, P(ETA_A, -1), eps),
        "eps mapped as if on the other side of the sqrt": _adaptive(name, P(ETA_A, -1), P(eps, 3 - inside)),
    }
    for what, opt in controls.items():
        assert ref.gap(opt, CONTROL_STEPS) > CONTROL_GAP, what


def test_keras_adagrad_initial_accumulator_must_be_mapped_too():
    """Keras's Adagrad starts G at 0.1; G sums squared gradients (scaled by p^2), so G_0 -> G_0 p^2."""
    inv = Adagrad(ETA_A, eps=1e-2)
    assert inv.initial_accumulator_value == 0.1
    ref = Inverted(inv, CONTROL_STEPS)
    mapped = Adagrad(P(ETA_A, -1), eps=P(1e-2, 2), initial_accumulator_value=P(0.1, 2))
    assert ref.gap(mapped) <= MAP_TOL
    unmapped = Adagrad(P(ETA_A, -1), eps=P(1e-2, 2))  # lr and eps mapped, G_0 = 0.1 everywhere
    assert ref.gap(unmapped) > CONTROL_GAP


@settings(max_examples=6, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    kp=st.tuples(*[st.floats(0.2, 1.0)] * 3),
    which=st.sampled_from(["momentum", "adam-keras", "rmsprop-keras"]),
)
def test_maps_hold_for_random_keep_probs(seed, kp, which):
    rng = np.random.default_rng(seed)
    p0 = mlp.init_params(SIZES, rng, bias_scale=0.1)
    masks = [mlp.sample_masks(SIZES, kp, BATCH, rng) for _ in range(60)]
    Pk = lambda v, power: mlp.per_parameter(v, p0, kp, power)  # noqa: E731
    if which == "momentum":
        pair = SGD(ETA, momentum=0.9), SGD(Pk(ETA, -2), momentum=0.9)
    elif which == "adam-keras":
        pair = Adam(ETA_A, eps=1e-3), Adam(Pk(ETA_A, -1), eps=Pk(1e-3, 1))
    else:
        pair = RMSprop(ETA_A, eps=1e-3), RMSprop(Pk(ETA_A, -1), eps=Pk(1e-3, 2))
    assert Inverted(pair[0], 60, kp=kp, p0=p0, masks=masks).gap(pair[1]) <= MAP_TOL


# ------------------------------------------------------------ L2 penalty (#5)

L2_NAMES = ("W1", "W2", "W3")


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_l2_penalty_map_lambda_times_p_squared(opt):
    lam = 0.02
    l2_inv = {n: lam for n in L2_NAMES}
    l2_std = {n: P(lam, 2)[n] for n in L2_NAMES}
    if opt == "sgd":
        make_inv, make_std = (lambda: SGD(ETA, momentum=0.9)), (lambda: SGD(P(ETA, -2), momentum=0.9))
    else:
        make_inv, make_std = (lambda: Adam(ETA_A, eps=1e-3)), (lambda: Adam(P(ETA_A, -1), eps=P(1e-3, 1)))
    ref = Inverted(make_inv(), l2=l2_inv)
    assert ref.gap(make_std(), l2=l2_std) <= MAP_TOL
    assert ref.gap(make_std(), CONTROL_STEPS) > CONTROL_GAP  # lambda unmapped


# ---------------------------------------------------- decoupled weight decay (#6)


def _cosine(t: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * t / STEPS))


DECAY_CASES = {
    # label: (make(lr, eps, wd), lr power, eps power, wd, wd power that maps, wd powers that fail)
    "SGD, Keras/PyTorch form": (lambda lr, eps, wd: SGD(lr, weight_decay=wd), -2, 0, 0.05, 2, (0, 1)),
    "SGD momentum, Keras form": (
        lambda lr, eps, wd: SGD(lr, momentum=0.9, weight_decay=wd),
        -2,
        0,
        0.05,
        2,
        (0, 1),
    ),
    "AdamW, Keras/PyTorch form": (
        lambda lr, eps, wd: Adam(lr, eps=eps, weight_decay=wd),
        -1,
        1,
        0.5,
        1,
        (0, 2),
    ),
    # Loshchilov & Hutter: w -= eta_t * wd * w, not multiplied by lr (a per-step decay)
    "SGDW, Loshchilov-Hutter form": (
        lambda lr, eps, wd: SGD(lr, momentum=0.9, weight_decay=wd, decay_form="lh", schedule=_cosine),
        -2,
        0,
        0.01,
        0,
        (1, 2),
    ),
    "AdamW, Loshchilov-Hutter form": (
        lambda lr, eps, wd: Adam(lr, eps=eps, weight_decay=wd, decay_form="lh", schedule=_cosine),
        -1,
        1,
        0.01,
        0,
        (1, 2),
    ),
}


@pytest.mark.parametrize("label", DECAY_CASES)
def test_decoupled_weight_decay_maps(label):
    make, lr_power, eps_power, wd, wd_power, wrong_powers = DECAY_CASES[label]
    eta, eps = (ETA if lr_power == -2 else ETA_A), 1e-3
    ref = Inverted(make(eta, eps, wd))
    std = lambda power: make(P(eta, lr_power), P(eps, eps_power), P(wd, power))  # noqa: E731
    assert ref.gap(std(wd_power)) <= MAP_TOL
    for power in wrong_powers:
        assert ref.gap(std(power), CONTROL_STEPS) > CONTROL_GAP, power


# ------------------------------------------------- max-norm constraint (#7)


def _max_norm_constraints(c, eps, power_c=0.0, power_eps=0.0, kp=KP):
    return {
        f"W{k}": (lambda w, ck=c * p**power_c, ek=eps * p**power_eps: max_norm(w, ck, eps=ek))
        for k, p in enumerate(kp, start=1)
    }


def test_max_norm_map_c_over_p():
    c = 0.8  # below the initial column norms, so the constraint is active
    norms = np.linalg.norm(P0["W2"], axis=0)
    assert norms.max() > c
    ref = Inverted(SGD(ETA), constraints=_max_norm_constraints(c, 0.0))
    assert ref.gap(SGD(P(ETA, -2)), constraints=_max_norm_constraints(c, 0.0, power_c=-1)) <= MAP_TOL
    unmapped = _max_norm_constraints(c, 0.0, power_c=0)
    assert ref.gap(SGD(P(ETA, -2)), CONTROL_STEPS, constraints=unmapped) > CONTROL_GAP


def test_keras_max_norm_epsilon_needs_eps_over_p():
    """Keras's MaxNorm divides by (1e-7 + n); n scales by 1/p, so exactness needs eps -> eps/p.

    With Keras's fixed 1e-7 on both nets the map is only approximate (gap ~1e-5).
    """
    c, eps = 0.8, 1e-7
    ref = Inverted(SGD(ETA), constraints=_max_norm_constraints(c, eps))
    mapped = _max_norm_constraints(c, eps, power_c=-1, power_eps=-1)
    assert ref.gap(SGD(P(ETA, -2)), constraints=mapped) <= MAP_TOL
    keras_fixed = _max_norm_constraints(c, eps, power_c=-1, power_eps=0)
    assert 1e-8 < ref.gap(SGD(P(ETA, -2)), constraints=keras_fixed) < 1e-3


def test_init_scale_map_sigma_over_p():
    """Initialising W_k with sigma_k / p_k in the standard net is initialising the
    inverted net with sigma_k and mapping (same draws, up to one rounding)."""
    sigmas = (0.3, 0.2, 0.5)
    inv = mlp.init_params(SIZES, 7, scale=sigmas, bias_scale=0.1)
    std = mlp.init_params(SIZES, 7, scale=[s / p for s, p in zip(sigmas, KP)], bias_scale=0.1)
    assert mlp.relative_difference(mlp.to_standard_params(inv, KP), std) < 1e-15
    assert mlp.relative_difference(mlp.init_params(SIZES, 7, scale=sigmas, bias_scale=0.1), std) > 0.1


# ---------------------------------------------------- gradient clipping (#8)

CLIP = 0.5  # gradient norms here are ~1-7, so clipping is active


def test_clipping_is_active():
    """Every consuming kernel's gradient norm exceeds CLIP at the first step, and so does the global norm."""
    _, grads = mlp.loss_and_grads(P0, *BATCHES[0], variant="inverted", keep_probs=KP, masks=MASKS[0])
    assert min(np.linalg.norm(grads[n]) for n in mlp.consuming_weights(KP)) > CLIP
    assert math.sqrt(sum(np.sum(g * g) for g in grads.values())) > CLIP


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_per_tensor_clipping_maps_c_times_p(opt):
    if opt == "sgd":
        make_inv = lambda: SGD(ETA, clipnorm=CLIP)  # noqa: E731
        make_std = lambda c: SGD(P(ETA, -2), clipnorm=c)  # noqa: E731
    else:
        make_inv = lambda: Adam(ETA_A, eps=1e-3, clipnorm=CLIP)  # noqa: E731
        make_std = lambda c: Adam(P(ETA_A, -1), eps=P(1e-3, 1), clipnorm=c)  # noqa: E731
    ref = Inverted(make_inv())
    assert ref.gap(make_std(P(CLIP, 1))) <= MAP_TOL
    assert ref.gap(make_std(CLIP), CONTROL_STEPS) > CONTROL_GAP


def test_global_norm_clipping_breaks_the_map():
    """The global norm mixes the consuming weights' gradients (scaled by p between the
    nets) with the biases' (not scaled), so no global threshold maps it: neither c,
    nor c * p for any of the keep probabilities, nor values between."""
    ref = Inverted(SGD(ETA, global_clipnorm=CLIP), CONTROL_STEPS)
    for factor in (1.0, 0.8, 0.7, 0.65, 0.6, 0.5):
        assert ref.gap(SGD(P(ETA, -2), global_clipnorm=CLIP * factor)) > CONTROL_GAP, factor


def test_clip_helpers():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(4, 3))
    n = np.linalg.norm(g)
    assert np.linalg.norm(clip_by_norm(g, n / 2)) == pytest.approx(n / 2, rel=1e-15)
    # Below the threshold the factor is c / c, but g * c / c rounds twice
    # (g * c, then / c), each by at most u = eps / 2 relative: |err| <= 2u + u^2.
    u = np.finfo(np.float64).eps / 2
    np.testing.assert_allclose(clip_by_norm(g, 2 * n), g, rtol=2 * u + u * u, atol=0)
    grads = {"a": g, "b": rng.normal(size=5)}
    total = math.sqrt(sum(np.sum(v * v) for v in grads.values()))
    clipped = clip_by_global_norm(grads, total / 3)
    assert math.sqrt(sum(np.sum(v * v) for v in clipped.values())) == pytest.approx(total / 3, rel=1e-14)
    assert clipped["a"] / g == pytest.approx(np.full(g.shape, 1 / 3 * total / total), rel=1e-13)
    w = rng.normal(size=(6, 4)) * 3
    projected = max_norm(w, 1.0)
    assert np.linalg.norm(projected, axis=0).max() == pytest.approx(1.0, rel=1e-15)
    small = w * 0.01
    assert np.array_equal(max_norm(small, 1.0), small)
    assert not np.array_equal(max_norm(small, 1.0, eps=1e-7), small)  # Keras's shrink


# ------------------------------------------------ paper forms vs Keras forms


@pytest.mark.parametrize("name", ["adam", "rmsprop", "adagrad"])
def test_paper_and_keras_forms_agree_without_eps_and_differ_with_it(name):
    """With eps -> 0 (and Adagrad's G_0 = 0) both forms are the same algorithm; eps's
    placement is the only difference."""

    def pair(eps):
        if name == "adam":
            return Adam(ETA_A, eps=eps), Adam(ETA_A, eps=eps, form="paper")
        if name == "rmsprop":
            return RMSprop(ETA_A, eps=eps), RMSprop(ETA_A, eps=eps, form="paper")
        return (Adagrad(ETA_A, eps=eps, initial_accumulator_value=0.0), Adagrad(ETA_A, eps=eps, form="paper"))

    def run(opt):
        return train(
            P0, BATCHES, MASKS, variant="inverted", keep_probs=KP, optimizer=opt, steps=CONTROL_STEPS
        ).params

    keras_form, paper_form = pair(1e-30)  # not 0: dropped inputs give g = v = 0, and 0/0
    assert mlp.relative_difference(run(keras_form), run(paper_form)) < 1e-13
    keras_form, paper_form = pair(1e-2)
    assert mlp.relative_difference(run(keras_form), run(paper_form)) > CONTROL_GAP


def test_keras_nesterov_iterate_is_the_papers_lookahead_point():
    """Keras's Nesterov variable is Sutskever et al.'s w + mu v (Bengio et al., 2013)."""
    keras_run = train(
        P0,
        BATCHES,
        MASKS,
        variant="inverted",
        keep_probs=KP,
        optimizer=SGD(ETA, momentum=0.9, nesterov=True),
        steps=CONTROL_STEPS,
    )
    paper, lookahead = SGD(ETA, momentum=0.9, nesterov=True, form="paper"), []
    params = {n: v.copy() for n, v in P0.items()}
    for t in range(CONTROL_STEPS):
        point = paper.eval_point(params)
        lookahead.append({n: v.copy() for n, v in point.items()})
        _, grads = mlp.loss_and_grads(
            point, *BATCHES[t % 4], variant="inverted", keep_probs=KP, masks=MASKS[t]
        )
        paper.step(params, grads)
    worst = max(mlp.relative_difference(a, b) for a, b in zip(lookahead, keras_run.history))
    assert worst < 1e-13
    # and the paper's own iterate is a different point
    assert mlp.relative_difference(params, keras_run.params) > 1e-4


def test_first_adam_step_by_hand():
    """Step 1 of Keras's Adam: m = (1-b1) g, v = (1-b2) g^2, alpha = lr sqrt(1-b2)/(1-b1)."""
    g = np.array([0.3, -2.0, 1e-4])
    w = np.array([1.0, 1.0, 1.0])
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-3
    Adam(lr, beta_1=b1, beta_2=b2, eps=eps).step({"w": w}, {"w": g})
    expected = 1.0 - (1 - b1) * g * (lr * math.sqrt(1 - b2) / (1 - b1)) / (
        math.sqrt(1 - b2) * np.abs(g) + eps
    )
    assert w == pytest.approx(expected, rel=1e-15)


def test_weight_decay_forms_by_hand():
    w = {"w": np.array([2.0])}
    SGD(0.1, weight_decay=0.5).step(w, {"w": np.array([0.0])})
    assert w["w"][0] == pytest.approx(2.0 * (1 - 0.1 * 0.5))
    w = {"w": np.array([2.0])}
    SGD(0.1, weight_decay=0.5, decay_form="lh", schedule=lambda t: 0.2).step(w, {"w": np.array([0.0])})
    assert w["w"][0] == pytest.approx(2.0 * (1 - 0.2 * 0.5))


# ---------------------------------------------------------------- validation


def test_clear_errors():
    with pytest.raises(ValueError, match="no entry for parameter 'b1'"):
        SGD({"W1": 0.1}).step({"W1": np.ones(2), "b1": np.ones(2)}, {"W1": np.ones(2), "b1": np.ones(2)})
    with pytest.raises(ValueError, match="form"):
        Adam(form="pytorch")
    with pytest.raises(ValueError, match="at most one"):
        SGD(0.1, clipnorm=1.0, global_clipnorm=1.0)
    with pytest.raises(ValueError, match=r"lr\['W1'\]"):
        SGD({"W1": -0.1})
    with pytest.raises(ValueError, match="momentum > 0"):
        SGD(0.1, nesterov=True)
    with pytest.raises(ValueError, match="decay_form"):
        Adam(weight_decay=0.1, decay_form="pytorch")
    with pytest.raises(ValueError, match="clipnorm"):
        SGD(0.1, clipnorm=0.0)
    with pytest.raises(ValueError, match="masks_sequence holds"):
        train(P0, BATCHES, MASKS[:3], variant="inverted", keep_probs=KP, optimizer=SGD(0.1), steps=5)
