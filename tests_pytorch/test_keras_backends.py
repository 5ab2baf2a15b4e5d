"""The public API on Keras's JAX and PyTorch backends (issue 19, item 5).

``make test-pytorch`` runs this file twice, each in its own pytest process:
``KERAS_BACKEND=jax JAX_ENABLE_X64=1`` and ``KERAS_BACKEND=torch``, with
``DROPOUT_BOOK_KERAS_BACKENDS=required``: there a backend whose package is
missing FAILS. Run by hand without that variable, a missing package is a
skip (reported with its reason), and without ``KERAS_BACKEND`` (or with
``tensorflow``, which ``make test`` covers) both backends run.

Keras picks its backend once per process, so the checks themselves run in a
subprocess with ``KERAS_BACKEND`` set (once per backend, module-scoped); it
also keeps them away from this directory's conftest, which sets torch's
default dtype for the PyTorch-maps tests. The tests below read its result.

On torch, Keras 3.15.1 multiplies float64 matrices in float32, and on JAX
its BatchNormalization/LayerNormalization are float32-accurate in float64
(see the tests): there the twins agree to float32 rounding, still far from
the control. The forward checks of the other maps (BatchNorm and LayerNorm
epsilon, LSTM input kernel, producer side, attention) compare two training
calls and inference with ``4 K eps``, ``K <= 3``.

The script trains the paper's net (``StandardDropout``) and its conversion to
Keras's dropout in float64 with SGD on the same batches and masks, the source
first (on JAX the source's training step donates its buffers: the converted
model must hold its own generator state). Tolerance as in test_convert_model:
``steps * 4 K eps * 10`` with ``K = 1`` consuming layer; the control, the
converted model with the source's learning rate on every variable (unmapped),
is off by ``O(1 - p)`` of the steps, ``> 1e-4``. It also runs ``dl.to_standard``,
``dl.to_inverted`` and ``dl.verify`` (per-step gap beside the one-ulp control).
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
    for name in ("to_standard", "to_inverted"):  # the public one-optimizer maps, p = 0.8
        mapped = getattr(dl, name)(keras.optimizers.SGD(0.1, momentum=0.9), keep_prob=0.8)
        out[name] = [float(keras.ops.convert_to_numpy(mapped.learning_rate)), float(mapped.momentum)]
    check = dl.verify(source, ported, x, y, steps=3, optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    out["verify"] = {"gaps": list(check.gaps), "controls": list(check.controls),
                     "factor": check.tolerance_factor, "exact": bool(check.exact),
                     "conclusive": bool(check.conclusive)}
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

BACKENDS = ("jax", "torch")  # each backend's package has the backend's name
KINDS = ("batchnorm", "layernorm", "lstm", "residual", "attention")
REQUIRED = os.environ.get("DROPOUT_BOOK_KERAS_BACKENDS") == "required"


def selected() -> tuple[str, ...]:
    """The backend named by ``KERAS_BACKEND`` if it is one of ours, else both."""
    chosen = os.environ.get("KERAS_BACKEND", "")
    if REQUIRED and chosen not in BACKENDS:
        return (chosen or "unset",)  # the fixture fails on it: never run nothing
    return (chosen,) if chosen in BACKENDS else BACKENDS


@pytest.fixture(scope="module", params=selected())
def run(request) -> dict:
    """The script's result on one backend, run once per backend in a subprocess."""
    backend = request.param
    if backend not in BACKENDS:
        pytest.fail(f"KERAS_BACKEND={backend}: set it to one of {BACKENDS}", pytrace=False)
    if importlib.util.find_spec(backend) is None:
        message = f"{backend} is not installed: the {backend} backend cannot run here"
        if REQUIRED:  # make test-pytorch: a missing backend is a failure, never a skip
            pytest.fail(message + " (DROPOUT_BOOK_KERAS_BACKENDS=required)", pytrace=False)
        pytest.skip(message)
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_ENABLE_X64="1")  # float64 on JAX
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    print(result)
    return dict(result, requested=backend)


def eps(backend: str) -> float:
    """The machine epsilon Keras's matmul reaches on the backend in float64.

    Keras 3.15.1's torch backend computes a float64 matmul in float32
    (keras.src.backend.torch.numpy.matmul casts to dtypes.result_type of two
    torch.float64 dtypes, which is float32): a Dense layer there is exact to
    float32 rounding only (a Keras limitation, not the map's), so the budgets
    use float32's eps on torch and float64's on JAX.
    """
    return 2.0**-23 if backend == "torch" else 2.0**-52


def test_runs_on_the_backend(run):
    assert run["backend"] == run["requested"], run  # Keras took the backend asked for


def test_converted_model_trains_in_step(run):
    """6 SGD steps (2 epochs of 3 batches), K = 1: ``steps * 4 K eps * 10``."""
    assert run["gap"] <= 6 * 4 * eps(run["backend"]) * 10, run


def test_unmapped_control_ends_apart(run):
    assert run["control"] > 1e-4, run


def test_backend_optimizer_class_is_mapped(run):
    """On torch, ``keras.optimizers.SGD`` builds Keras's torch subclass: converted, not refused."""
    if run["backend"] == "torch":
        assert run["sgd_class"].startswith("keras.src.backend.torch."), run
    assert run["mapped_lr"] == pytest.approx(0.1 * 0.8**2, rel=1e-15), run


def test_public_optimizer_maps(run):
    """``dl.to_standard`` / ``dl.to_inverted`` of SGD(0.1, momentum=0.9), p = 0.8: lr / p**2, lr * p**2."""
    assert run["to_standard"][0] == pytest.approx(0.1 / 0.8**2, rel=1e-15), run
    assert run["to_inverted"][0] == pytest.approx(0.1 * 0.8**2, rel=1e-15), run
    assert run["to_standard"][1] == run["to_inverted"][1] == pytest.approx(0.9, rel=1e-7), run


def test_verify_per_step_gap_within_the_budget(run):
    """``dl.verify``, 3 SGD steps: after step t the gap is within ``t * 4 K eps * 10`` (K = 1).

    The same budget as the training check, per step; the one-ulp control
    stays conclusive (the verdict's own condition).
    """
    gaps, check = run["verify"]["gaps"], run["verify"]
    assert check["conclusive"], check
    for t, gap in enumerate(gaps):
        assert gap <= max(t, 1) * 4 * eps(run["backend"]) * 10, (t, check)


def test_verify_says_exact(run):
    """``dl.verify``'s own verdict on an exact conversion.

    On torch, Keras computes float64 matrix products at float32 precision, so
    verify's control moves the weights by one float32 ulp there (a float64 ulp
    was rounded away: control 1.7e-16 beside a gap of 1.5e-8, "not exact").
    """
    assert run["verify"]["exact"], run["verify"]


def test_round_trip_returns_the_original_learning_rate(run):
    assert run["round_trip_lr"] == 0.1, run  # the original, not 0.1 * p**2 / p**2


def test_refusal_names_the_layer(run):
    assert "'act' (Activation)" in run["refusal"], run


@pytest.mark.parametrize("kind", KINDS)
def test_other_maps_forward(run, kind):
    """Two training calls and inference, ``4 K eps`` with ``K <= 3`` (rounding_tolerance)."""
    worst, kinds = run["maps"][kind]
    # Keras 3.15.1's JAX backend normalises float64 to float32 accuracy (its LayerNormalization
    # is 1.5e-8-3e-8 from the float64 formula whatever the epsilon's type): float32's eps there
    backend = run["backend"]
    unit = 2.0**-23 if backend == "jax" and kind in ("batchnorm", "layernorm") else eps(backend)
    assert worst <= 4 * 3 * unit, (kind, worst, kinds)
