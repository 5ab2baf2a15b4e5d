"""The numpy optimizers' ``form="keras"`` against Keras itself, step for step.

:mod:`dropout_lib.exact.optimizers` claims to execute the update Keras 3.15.1
executes, in its operation order. Here both run in float64 on the same
gradients for 8 steps. Hyperparameters are exact in float32 (0.125, 0.875,
255/256, 2**-20, 2**-7) because Keras casts some of them through float32
(``ops.cast(0.9, "float64")`` is 0.8999999761581421): with those values
nothing is rounded before the update, so the two must agree BIT FOR BIT when
they perform the same operations in the same order. A numpy form with an
epsilon moved, a bias correction applied differently or a decay in another
place differs at the first step by far more than one ulp.

The one exception is ``clipnorm``: ``tf.clip_by_norm`` sums the squares in
its own order, so the norm ``N`` of a tensor with ``n`` entries may differ
by the rounding of a sum, at most ``(n - 1) u`` relative (``u = 2**-53``);
the clipped step carries it into the weights once per step, and momentum
(``mu = 0.875``) accumulates at most ``1 / (1 - mu) = 8`` steps' worth. The
bound checked is ``steps * 8 * n * eps`` relative to each weight's
magnitude: about ``1.7e-13`` here; a wrong clipping rule (``c / N`` without the
``max``, a global norm) is off by ``O(1)``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dropout_lib.exact import optimizers as E  # noqa: E402

K = keras.optimizers
LR, MU, B1, B2, EPS, WD = 0.125, 0.875, 0.875, 255 / 256, 2.0**-20, 2.0**-7
ADAM = dict(beta_1=B1, beta_2=B2)
CASES = {
    "sgd": (lambda: K.SGD(LR), lambda: E.SGD(LR)),
    "momentum": (lambda: K.SGD(LR, momentum=MU), lambda: E.SGD(LR, momentum=MU)),
    "nesterov": (
        lambda: K.SGD(LR, momentum=MU, nesterov=True),
        lambda: E.SGD(LR, momentum=MU, nesterov=True),
    ),
    "sgd_weight_decay": (
        lambda: K.SGD(LR, momentum=MU, weight_decay=WD),
        lambda: E.SGD(LR, momentum=MU, weight_decay=WD),
    ),
    "adam": (lambda: K.Adam(LR, epsilon=EPS, **ADAM), lambda: E.Adam(LR, eps=EPS, **ADAM)),
    "amsgrad": (
        lambda: K.Adam(LR, epsilon=EPS, amsgrad=True, **ADAM),
        lambda: E.Adam(LR, eps=EPS, amsgrad=True, **ADAM),
    ),
    "adamw": (
        lambda: K.AdamW(LR, weight_decay=WD, epsilon=EPS, **ADAM),
        lambda: E.Adam(LR, weight_decay=WD, eps=EPS, **ADAM),
    ),
    "rmsprop": (lambda: K.RMSprop(LR, rho=MU, epsilon=EPS), lambda: E.RMSprop(LR, rho=MU, eps=EPS)),
    "rmsprop_centered_momentum": (
        lambda: K.RMSprop(LR, rho=MU, momentum=MU, centered=True, epsilon=EPS),
        lambda: E.RMSprop(LR, rho=MU, momentum=MU, centered=True, eps=EPS),
    ),
    "adagrad": (
        lambda: K.Adagrad(LR, initial_accumulator_value=0.125, epsilon=EPS),
        lambda: E.Adagrad(LR, initial_accumulator_value=0.125, eps=EPS),
    ),
}
STEPS, SHAPE = 8, (4, 3)


def _run(make_keras, make_numpy):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=SHAPE)
    var = keras.Variable(w0.copy(), dtype="float64")
    keras_opt, numpy_opt = make_keras(), make_numpy()
    params = {"w": w0.copy()}
    pairs = []
    for _ in range(STEPS):
        g = rng.normal(size=SHAPE)
        keras_opt.apply_gradients([(keras.ops.convert_to_tensor(g, dtype="float64"), var)])
        numpy_opt.step(params, {"w": g})
        pairs.append((np.array(var.numpy()), params["w"].copy()))
    return pairs


@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_form_is_keras_bit_for_bit(name, keras_float64):
    for step, (k, n) in enumerate(_run(*CASES[name]), start=1):
        assert np.array_equal(k, n), f"{name}: step {step} differs by {np.max(np.abs(k - n)):.3g}"


def test_keras_form_clipnorm_within_the_rounding_of_a_norm(keras_float64):
    clip = 0.5  # below the gradients' norms (about 3.5): clipping acts at every step
    pairs = _run(
        lambda: K.SGD(LR, momentum=MU, weight_decay=WD, clipnorm=clip),
        lambda: E.SGD(LR, momentum=MU, weight_decay=WD, clipnorm=clip),
    )
    n = int(np.prod(SHAPE))
    bound = STEPS * (1 / (1 - MU)) * n * np.finfo(np.float64).eps
    for k, v in pairs:
        assert np.max(np.abs(k - v) / np.abs(v)) <= bound
    # a wrong rule (no clipping) is far outside the bound: the check can fail
    wrong = _run(
        lambda: K.SGD(LR, momentum=MU, weight_decay=WD), lambda: E.SGD(LR, momentum=MU, weight_decay=WD)
    )
    assert np.max(np.abs(wrong[-1][0] - pairs[-1][0]) / np.abs(pairs[-1][0])) > 1e3 * bound
