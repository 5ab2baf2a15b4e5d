"""The public API on Keras's JAX and PyTorch backends (issue 19, item 5).

Each backend runs in a subprocess with ``KERAS_BACKEND`` set (Keras picks its
backend once per process). A backend whose package is not installed is
skipped: the book's environment has TensorFlow only, and the other tests run
the same API there. To run these: install ``jax`` or ``torch`` next to the
project's requirements and run this file.

On torch, Keras 3.15.1 multiplies float64 matrices in float32, and on JAX
its BatchNormalization/LayerNormalization are float32-accurate in float64
(see the test): there the twins agree to float32 rounding, still far from
the control. The forward checks of the other maps (BatchNorm and LayerNorm
epsilon, LSTM input kernel, producer side, attention) compare two training
calls and inference with ``4 K eps``, ``K <= 3``.

The script trains the paper's net (``StandardDropout``) and its conversion to
Keras's dropout in float64 with SGD on the same batches and masks, the source
first (on JAX the source's training step donates its buffers: the converted
model must hold its own generator state). Tolerance as in test_convert_model:
``steps * 4 K eps * 10`` with ``K = 1`` consuming layer; the control, the
converted model with the source's learning rate on every variable (unmapped),
is off by ``O(1 - p)`` of the steps, ``> 1e-4``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np
import dropout_lib as dl
from dropout_lib import twins
from dropout_lib.mapping import map_optimizer

L = keras.layers
out = {"backend": keras.backend.backend()}
with twins.keras_float64():
    def paper():
        return keras.Sequential([
            keras.Input((4,)),
            L.Dense(8, activation="relu", kernel_initializer=keras.initializers.HeNormal(seed=1)),
            dl.StandardDropout(0.2, seed=1, name="drop"),
            L.Dense(3, kernel_initializer=keras.initializers.HeNormal(seed=2), name="out"),
        ])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(24, 4)), rng.normal(size=(24, 3))
    source = paper()
    sgd = keras.optimizers.SGD(0.1, momentum=0.9)
    out["sgd_class"] = type(sgd).__module__ + "." + type(sgd).__qualname__
    ported = dl.convert_model(source, to="inverted", optimizer=sgd)
    control = dl.convert_model(source, to="inverted").model
    back = dl.convert_model(ported.model, to="standard", optimizer=ported.optimizer)  # before training
    out["round_trip_lr"] = float(keras.ops.convert_to_numpy(back.optimizer.learning_rate))
    out["mapped_lr"] = float(keras.ops.convert_to_numpy(map_optimizer(sgd, 0.8, "to_inverted").learning_rate))
    for model, opt in ((source, sgd), (ported.model, ported.optimizer),
                       (control, keras.optimizers.SGD(0.1, momentum=0.9))):
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    p = ported.consumers[0].keep_prob
    def gap(model):
        scale = {id(v): p for c in ported.consumers for v in c.variables}
        return max(float(np.max(np.abs(np.asarray(keras.ops.convert_to_numpy(v)) / scale.get(id(v), 1.0)
                                       - np.asarray(keras.ops.convert_to_numpy(w)))))
                   / float(np.max(np.abs(keras.ops.convert_to_numpy(w))))
                   for w, v in zip(source.weights, model.weights))
    out["gap"], out["control"] = gap(ported.model), gap(control)
    # the other maps: BatchNorm and LayerNorm epsilon, LSTM input kernel, producer side, attention
    init = keras.initializers.RandomNormal(stddev=0.5, seed=5)
    def block(kind):
        if kind == "lstm":
            x = keras.Input((5,), dtype="int32")
            h = L.LSTM(3, kernel_initializer=init)(L.Dropout(0.2, seed=2)(L.Embedding(10, 4)(x)))
        elif kind == "attention":
            x = keras.Input((5, 8))
            h = L.GlobalAveragePooling1D()(L.MultiHeadAttention(2, 4, dropout=0.2, seed=3)(x, x))
        else:
            x = keras.Input((4,))
            h = L.Dropout(0.2, seed=2)(L.Dense(6, "relu", kernel_initializer=init)(x))
            if kind == "residual":
                h = L.Dense(6)(L.Dense(6, "relu")(h))  # a consumer, then the producer
                h = L.Add()([L.Dense(6)(x), L.Dropout(0.2, noise_shape=(None, 1), seed=4)(h)])
            else:
                h = {"batchnorm": L.BatchNormalization, "layernorm": L.LayerNormalization}[kind]()(h)
        return keras.Model(x, L.Dense(2, kernel_initializer=init)(h))
    rng = np.random.default_rng(1)
    inputs = {"lstm": rng.integers(0, 10, size=(4, 5)), "attention": rng.normal(size=(4, 5, 8))}
    out["maps"] = {}
    for kind in ("batchnorm", "layernorm", "lstm", "residual", "attention"):
        model = block(kind)
        converted = dl.convert_model(model, to="standard")
        xs = inputs.get(kind, rng.normal(size=(4, 4)))
        result = twins.compare_twins(model, converted.model, xs, training_calls=2, predict=False)
        out["maps"][kind] = [result.worst, [c.kind for c in converted.consumers]]
    try:
        tanh = L.Activation("tanh", name="act")
        bad = keras.Sequential([keras.Input((4,)), L.Dropout(0.5), tanh, L.Dense(2)])
        dl.convert_model(bad, to="standard")
    except dl.NotConvertibleError as error:
        out["refusal"] = str(error)
print("RESULT " + json.dumps(out))
"""


@pytest.mark.parametrize("backend,module", [("jax", "jax"), ("torch", "torch")])
def test_public_api_on_another_backend(backend, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: the {backend} backend cannot run here")
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_ENABLE_X64="1")  # float64 on JAX
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    print(result)
    assert result["backend"] == backend
    # Keras 3.15.1's torch backend computes a float64 matmul in float32
    # (keras.src.backend.torch.numpy.matmul casts to dtypes.result_type of two
    # torch.float64 dtypes, which is float32): a Dense layer there is exact to
    # float32 rounding only, so the budget uses float32's eps on torch.
    eps = 2.0**-23 if backend == "torch" else 2.0**-52
    assert result["gap"] <= 6 * 4 * eps * 10, result  # 6 steps, K = 1
    assert result["control"] > 1e-4, result
    assert result["round_trip_lr"] == 0.1, result  # the original, not 0.1 * p**2 / p**2
    assert result["mapped_lr"] == pytest.approx(0.1 * 0.8**2, rel=1e-15), result
    assert "'act' (Activation)" in result["refusal"], result
    for kind, (worst, kinds) in result["maps"].items():  # forward, 2 training calls and inference
        # Keras 3.15.1's JAX backend normalises float64 to float32 accuracy (its LayerNormalization
        # is 1.5e-8-3e-8 from the float64 formula whatever the epsilon's type): float32's eps there
        unit = 2.0**-23 if backend == "jax" and kind in ("batchnorm", "layernorm") else eps
        assert worst <= 4 * 3 * unit, (kind, worst, kinds)  # rounding_tolerance(K <= 3)
