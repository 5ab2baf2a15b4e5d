"""dropout_lib.pytorch without torch: the map's arithmetic, its refusals, and where it meets Keras's.

The maps themselves are checked on torch (tests_pytorch/, ``make test-pytorch``):
torch.nn.Dropout and torch.optim train the inverted net against the paper's on
the same masks, every row of the recipe's PyTorch table, both directions. These
tests need no torch and run in ``make test``.
"""

from __future__ import annotations

import pytest

from dropout_lib import pytorch

# torch 2.14.1's torch.optim.AdamW(params).defaults (tests_pytorch checks the keys on torch)
ADAMW_DEFAULTS = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 1e-2,
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": None,
    "decoupled_weight_decay": True,
}


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


def test_adamw_defaults_and_param_groups_are_accepted():
    group = pytorch.map_param_group("AdamW", ADAMW_DEFAULTS, 0.5, "to_standard")
    assert set(group) == set(ADAMW_DEFAULTS)
    assert (group["lr"], group["eps"], group["weight_decay"]) == (0.002, 5e-9, 0.005)
    # a param group: its tensors ("params") are left out of the result
    group = pytorch.map_param_group("AdamW", {"params": [object()], **ADAMW_DEFAULTS}, 0.5, "to_inverted")
    assert "params" not in group and group["weight_decay"] == 0.02


def test_decoupled_weight_decay_is_read_per_group():
    """torch reads decoupled_weight_decay per group: decoupled maps wd over lr's factor, coupled by s^-2."""
    kw = {"lr": 1e-3, "weight_decay": 0.01}
    assert pytorch.map_param_group("Adam", kw, 0.5, "to_standard")["weight_decay"] == 0.0025
    decoupled = {**kw, "decoupled_weight_decay": True}
    assert pytorch.map_param_group("Adam", decoupled, 0.5, "to_standard")["weight_decay"] == 0.005
    coupled = {**kw, "decoupled_weight_decay": False}
    assert pytorch.map_param_group("AdamW", coupled, 0.5, "to_standard")["weight_decay"] == 0.0025


def test_unknown_keys_are_refused_never_passed_on():
    # a learning-rate scheduler adds initial_lr to a group; a map that passed it on would be wrong
    with pytest.raises(pytorch.NoExactMapError, match=r"\['initial_lr'\].*not passed on unmapped"):
        pytorch.map_param_group("AdamW", {**ADAMW_DEFAULTS, "initial_lr": 1e-3}, 0.5, "to_standard")
    with pytest.raises(ValueError, match="decoupled_weight_decay must be True or False"):
        pytorch.map_param_group("Adam", {"decoupled_weight_decay": "yes"}, 0.5, "to_standard")
