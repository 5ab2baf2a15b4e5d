"""Tests of dropout_lib.exact.divergence: counting ReLU units that are on in one run and off in the other."""

from __future__ import annotations

import numpy as np
import pytest

from dropout_lib.exact import compare, divergence, mlp
from dropout_lib.exact.optimizers import SGD

SIZES = (4, 6, 5, 2)
KEEP = (0.9, 0.7, 1.0)  # keep probabilities p; Keras rate = 1 - p
STEPS = 30
_rng = np.random.default_rng(11)
PARAMS = mlp.init_params(SIZES, _rng, bias_scale=0.2)
BATCHES = [(x, _rng.normal(size=(8, SIZES[-1]))) for x in _rng.normal(size=(2, 8, SIZES[0]))]
MASKS = [mlp.sample_masks(SIZES, KEEP, 8, _rng) for _ in range(STEPS)]


def run(power: float) -> compare.Comparison:
    return compare.compare_training(
        PARAMS,
        BATCHES,
        MASKS,
        keep_probs=KEEP,
        steps=STEPS,
        optimizer_inverted=SGD(0.1),
        optimizer_standard=SGD(mlp.per_parameter(0.1, PARAMS, KEEP, power)),
    )


def test_mapped_runs_never_flip():
    flips = divergence.activation_flips(run(-2.0), BATCHES, MASKS, keep_probs=KEEP)
    assert flips.shape == (STEPS,) and flips.sum() == 0
    assert divergence.first_flip(flips) is None


def test_wrong_map_flips_and_count_is_exact():
    comparison = run(0.0)  # same lr: the runs part
    flips = divergence.activation_flips(comparison, BATCHES, MASKS, keep_probs=KEEP)
    t = divergence.first_flip(flips)
    assert t is not None and flips[t] > 0 and flips[:t].sum() == 0
    x, _ = BATCHES[t % 2]
    kw = dict(keep_probs=KEEP, masks=MASKS[t], training=True)
    _, a = mlp.forward(comparison.inverted.history[t], x, variant="inverted", **kw)
    _, b = mlp.forward(comparison.standard.history[t], x, variant="standard", **kw)
    expected = sum(int(np.sum((za > 0) != (zb > 0))) for za, zb in zip(a["z"][:2], b["z"][:2]))
    assert flips[t] == expected


def test_first_flip():
    assert divergence.first_flip(np.array([0, 0, 3, 0, 1])) == 2
    assert divergence.first_flip(np.zeros(4, dtype=int)) is None


def test_bad_arguments_raise():
    comparison = run(-2.0)
    with pytest.raises(ValueError, match="masks"):
        divergence.activation_flips(comparison, BATCHES, MASKS[:3], keep_probs=KEEP)
    comparison.standard.history = comparison.standard.history[:1]
    with pytest.raises(ValueError, match="history"):
        divergence.activation_flips(comparison, BATCHES, MASKS, keep_probs=KEEP)
