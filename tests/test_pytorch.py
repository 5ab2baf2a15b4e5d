"""The PyTorch maps (dropout_lib.pytorch), checked by training numpy nets under PyTorch's rules.

Each check trains the inverted-dropout net (torch.nn.Dropout's variant) with a
PyTorch optimizer (numpy implementation of its documented update,
dropout_lib.exact.torch_optimizers) and the standard-dropout net (the paper's)
from W/p with the hyperparameters map_param_group gives its consuming
kernels, on the same batches and masks, and compares the trajectories mapped
back. Tolerances as in chapters 4-6: in exact arithmetic the gap is 0; in
float64 each step adds a few units of u = 2**-53, so after T = 400 steps at
most ~T u = 4.4e-14 if nothing cancels; MAP_TOL = 1e-12 leaves a factor ~20
for the dynamics to amplify rounding and nothing like room for a wrong map
(every control below ends more than CONTROL_GAP = 1e-3 apart).
"""

from __future__ import annotations

import numpy as np
import pytest

from dropout_lib import pytorch
from dropout_lib.exact import compare, mlp
from dropout_lib.exact.torch_optimizers import (
    TorchAdagrad,
    TorchAdam,
    TorchAdamW,
    TorchRMSprop,
    TorchSGD,
)

MAP_TOL, CONTROL_GAP, MIN_MOVED = 1e-12, 1e-3, 0.05
SIZES, KEEP_PROBS, BATCH, N_BATCHES, STEPS = (8, 16, 16, 4), (0.8, 1.0, 0.6), 32, 8, 400
CLASSES = {
    "SGD": TorchSGD,
    "Adam": TorchAdam,
    "AdamW": TorchAdamW,
    "RMSprop": TorchRMSprop,
    "Adagrad": TorchAdagrad,
}


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(1929)
    params = mlp.init_params(SIZES, rng, bias_scale=0.1)
    teacher = rng.normal(size=(SIZES[0], SIZES[-1]))
    batches = [
        (x, np.eye(SIZES[-1])[np.argmax(x @ teacher, axis=1)])
        for x in rng.normal(size=(N_BATCHES, BATCH, SIZES[0]))
    ]
    masks = [mlp.sample_masks(SIZES, KEEP_PROBS, BATCH, rng) for _ in range(STEPS)]
    return params, batches, masks


def _mapped_kwargs(name, hp, params, mapper=pytorch.map_param_group):
    """Per-parameter hyperparameters: the map on each consuming kernel, hp elsewhere."""
    consumers = mlp.consuming_weights(KEEP_PROBS)
    groups = {
        n: (
            mapper(name, hp, consumers[n], "to_standard")
            if n in consumers
            else {**pytorch.DEFAULTS[name], **hp}
        )
        for n in params
    }
    per_param = ("lr", "eps", "weight_decay", "initial_accumulator_value")
    out = {k: v for k, v in hp.items() if k not in per_param}
    for key in per_param:
        if any(key in g for g in groups.values()):
            out[key] = {n: groups[n][key] for n in params}
    return out


def _run(problem, name, hp, standard_hp):
    params, batches, masks = problem
    cls = CLASSES[name]
    return compare.compare_training(
        params,
        batches,
        masks,
        keep_probs=KEEP_PROBS,
        steps=STEPS,
        loss="softmax_xent",
        optimizer_inverted=lambda: cls(**hp),
        optimizer_standard=lambda: cls(**standard_hp),
    )


CASES = {
    "SGD, momentum, dampening, coupled decay": (
        "SGD",
        dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2),
    ),
    "SGD, Nesterov": ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    "SGD, clip_grad_value_": ("SGD", dict(lr=0.05, momentum=0.9, clip_value=0.02)),
    "Adam, coupled decay": ("Adam", dict(lr=5e-3, eps=1e-3, weight_decay=3e-2)),
    "Adam, AMSGrad": ("Adam", dict(lr=5e-3, eps=1e-3, amsgrad=True)),
    "Adam, decoupled_weight_decay": (
        "Adam",
        dict(lr=5e-3, eps=1e-3, weight_decay=0.1, decoupled_weight_decay=True),
    ),
    "AdamW (default weight_decay)": ("AdamW", dict(lr=5e-3, eps=1e-3)),
    "RMSprop, centered, momentum": (
        "RMSprop",
        dict(lr=1e-3, eps=1e-2, momentum=0.5, centered=True, weight_decay=1e-2),
    ),
    "Adagrad, lr_decay, accumulator": (
        "Adagrad",
        dict(lr=0.05, lr_decay=1e-2, initial_accumulator_value=0.1, eps=1e-2, weight_decay=1e-2),
    ),
}


def _mapped(name, hp, params):
    kw = _mapped_kwargs(name, {k: v for k, v in hp.items() if k != "clip_value"}, params)
    if "clip_value" in hp:
        consumers = mlp.consuming_weights(KEEP_PROBS)
        kw["clip_value"] = {n: hp["clip_value"] * consumers.get(n, 1.0) for n in params}
    return kw


@pytest.mark.parametrize("case", sorted(CASES))
def test_pytorch_map_reproduces_the_inverted_run(problem, case):
    name, hp = CASES[case]
    run = _run(problem, name, hp, _mapped(name, hp, problem[0]))
    assert run.moved >= MIN_MOVED, f"{case}: the inverted net hardly trained ({run.moved:.3g})"
    assert run.worst <= MAP_TOL, f"{case}: mapped run is {run.worst:.2e} away"


def _gap_with(problem, name, hp, **override):
    """Final gap of a standard run whose consuming kernels get the map except ``override``.

    ``override`` maps a key to a power j: the value on consuming kernel k is
    hp[key] * p_k**j (j = 0: unchanged).
    """
    params = problem[0]
    kw = _mapped(name, hp, params)
    consumers = mlp.consuming_weights(KEEP_PROBS)
    for key, power in override.items():
        base = {**pytorch.DEFAULTS[name], **hp}[key]
        kw[key] = {n: base * consumers[n] ** power if n in consumers else base for n in params}
    return _run(problem, name, hp, kw).final


@pytest.mark.parametrize(
    "case, override, what",
    [
        ("RMSprop, centered, momentum", {"eps": 2}, "Keras's RMSprop map eps p^2"),
        ("Adagrad, lr_decay, accumulator", {"eps": 2}, "Keras's Adagrad map eps p^2"),
        ("Adagrad, lr_decay, accumulator", {"initial_accumulator_value": 0}, "accumulator unmapped"),
        ("Adam, coupled decay", {"weight_decay": 1}, "Keras's Adam weight_decay map wd p"),
        ("AdamW (default weight_decay)", {"weight_decay": 0}, "AdamW's default 0.01 unmapped"),
        ("SGD, momentum, dampening, coupled decay", {"lr": -1}, "SGD lr / p"),
        ("SGD, clip_grad_value_", {"clip_value": 0}, "clip value unmapped"),
    ],
)
def test_pytorch_wrong_maps_fail(problem, case, override, what):
    name, hp = CASES[case]
    gap = _gap_with(problem, name, hp, **override)
    assert gap >= CONTROL_GAP, f"{what} matched the inverted run to {gap:.2e}: the check cannot fail"


def test_clip_value_is_active(problem):
    """The clip_grad_value_ case clips: some consuming-kernel gradient entry exceeds v."""
    params, batches, masks = problem
    x, y = batches[0]
    g = mlp.loss_and_grads(
        params, x, y, variant="inverted", keep_probs=KEEP_PROBS, masks=masks[0], loss="softmax_xent"
    )[1]
    v = CASES["SGD, clip_grad_value_"][1]["clip_value"]
    assert np.abs(g["W1"]).max() > v and np.abs(g["W3"]).max() > v


def test_map_param_group_round_trip_and_defaults():
    hp = dict(lr=1e-3, eps=1e-8, weight_decay=0.1, betas=(0.9, 0.99))
    for name in ("Adam", "AdamW", "RMSprop", "Adagrad"):
        there = pytorch.map_param_group(
            name, {k: v for k, v in hp.items() if k != "betas" or name.startswith("Adam")}, 0.8, "to_standard"
        )
        back = pytorch.map_param_group(name, there, 0.8, "to_inverted")
        for key in ("lr", "eps", "weight_decay"):
            assert back[key] == pytest.approx(hp[key], rel=1e-15)
    # AdamW's default weight_decay (0.01) is mapped even when not given
    assert pytorch.map_param_group("AdamW", {"lr": 1e-3}, 0.5, "to_standard")[
        "weight_decay"
    ] == pytest.approx(0.005, rel=1e-15)
    # Adagrad's accumulator: PyTorch default 0 maps to 0; a given one by p^2
    assert pytorch.map_param_group("Adagrad", {"initial_accumulator_value": 0.1}, 0.5, "to_standard")[
        "initial_accumulator_value"
    ] == pytest.approx(0.025)
    assert pytorch.keep_prob_from_torch_p(0.2) == pytest.approx(0.8)


def test_map_param_group_refuses():
    with pytest.raises(pytorch.NoExactMapError):
        pytorch.map_param_group("LBFGS", {"lr": 1.0}, 0.5, "to_standard")
    with pytest.raises(pytorch.NoExactMapError):
        pytorch.map_param_group("Adam", {"lr": 1e-3, "foo": 1}, 0.5, "to_standard")
    with pytest.raises(ValueError):
        pytorch.map_param_group("Adam", {"lr": 1e-3}, 0.5, "sideways")
    with pytest.raises(ValueError):
        pytorch.keep_prob_from_torch_p(1.0)


def test_where_pytorch_and_keras_maps_agree_and_differ(keras_float64):
    """Same map where the rules coincide (SGD lr, Adam eps, AdamW decay), not where they differ."""
    import keras

    from dropout_lib import mapping

    p = 0.8
    k_sgd = mapping.to_standard(keras.optimizers.SGD(learning_rate=0.1), p)
    k_adam = mapping.to_standard(
        keras.optimizers.AdamW(learning_rate=1e-3, epsilon=1e-7, weight_decay=0.01), p
    )
    k_rms = mapping.to_standard(keras.optimizers.RMSprop(learning_rate=1e-3, epsilon=1e-7), p)
    t_sgd = pytorch.map_param_group("SGD", {"lr": 0.1}, p, "to_standard")
    t_adamw = pytorch.map_param_group("AdamW", {"lr": 1e-3, "eps": 1e-7}, p, "to_standard")
    t_rms = pytorch.map_param_group("RMSprop", {"lr": 1e-3, "eps": 1e-7}, p, "to_standard")
    assert float(k_sgd.learning_rate.numpy()) == pytest.approx(t_sgd["lr"], rel=1e-12)
    assert k_adam.epsilon == pytest.approx(t_adamw["eps"], rel=1e-12)
    assert float(k_adam.weight_decay) / 0.01 == pytest.approx(t_adamw["weight_decay"] / 0.01, rel=1e-6)
    # RMSprop: Keras's epsilon is inside the root (p^2), PyTorch's outside (p)
    assert k_rms.epsilon == pytest.approx(1e-7 * p**2, rel=1e-12)
    assert t_rms["eps"] == pytest.approx(1e-7 * p, rel=1e-12)


@pytest.mark.parametrize("eps, mapped", [(1e-6, False), (0.0, True)])
def test_clip_grad_norm_has_no_exact_map_because_of_its_epsilon(problem, eps, mapped):
    """clip_grad_norm_ on one tensor, threshold c p on the consuming kernels: PyTorch's
    built-in 1e-6 breaks the map (a relative ~1e-6 / ||g|| per clipped step, far above
    rounding); the same rule with the constant set to 0 maps exactly. So the constant
    alone is why dropout_lib.pytorch offers no map for clip_grad_norm_."""
    params, batches, masks = problem
    consumers = mlp.consuming_weights(KEEP_PROBS)
    c = 0.05
    clip = {n: c * consumers.get(n, 1.0) for n in params}
    kw = _mapped("SGD", dict(lr=0.05, momentum=0.9), params)
    run = compare.compare_training(
        params,
        batches,
        masks,
        keep_probs=KEEP_PROBS,
        steps=STEPS,
        loss="softmax_xent",
        optimizer_inverted=lambda: TorchSGD(0.05, momentum=0.9, clip_norm=c, clip_norm_eps=eps),
        optimizer_standard=lambda: TorchSGD(**kw, clip_norm=clip, clip_norm_eps=eps),
    )
    x, y = batches[0]
    g = mlp.loss_and_grads(
        params, x, y, variant="inverted", keep_probs=KEEP_PROBS, masks=masks[0], loss="softmax_xent"
    )[1]
    assert np.linalg.norm(g["W1"]) > c and np.linalg.norm(g["W3"]) > c  # the clip acts
    if mapped:
        assert run.worst <= MAP_TOL, run.worst
    else:
        assert run.worst > 1e3 * MAP_TOL, f"the epsilon left no trace: {run.worst:.2e}"
