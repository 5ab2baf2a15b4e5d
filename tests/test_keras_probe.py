"""Tests of dropout_lib.book.keras_probe: what the installed Keras executes (result #12).

Notation: Keras's ``rate`` is the drop probability; keep_prob = p = 1 - rate.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dropout_lib  # noqa: F401  (silences TensorFlow before it is imported)
from dropout_lib.book import keras_probe as kp

FAST = settings(max_examples=8, deadline=None)
rates = st.floats(0.05, 0.9)
dtypes = st.sampled_from(["float32", "float64"])
seeds = st.integers(0, 2**31 - 1)


def normal(shape: tuple[int, ...], dtype: str = "float32", seed: int = 0) -> np.ndarray:
    """Standard normal entries (never exactly zero at these sizes)."""
    x = np.random.default_rng(seed).normal(size=shape).astype(dtype)
    assert np.all(x != 0)
    return x


# --------------------------------------------------------------------------- #
# source excerpts
# --------------------------------------------------------------------------- #


def test_call_chain_shows_the_functions_that_run():
    chain = kp.dropout_call_chain()
    names = [e.name for e in chain]
    assert names == [
        "keras.layers.Dropout.call",
        "keras.src.backend.tensorflow.random.dropout",
        "tf.nn.experimental.stateless_dropout",
        "tensorflow.python.ops.nn_ops._dropout",
    ]
    call, backend, public, core = chain
    assert "backend.random.dropout(" in call.text and "return inputs" in call.text
    assert "tf.nn.experimental.stateless_dropout(" in backend.text
    assert "return _dropout(" in public.text and '"""' not in public.text
    assert "scale = 1 / keep_prob" in core.text
    assert "keep_mask = random_tensor >= rate" in core.text
    assert core.text.rstrip().endswith("ret = array_ops.where_v2(keep_mask, ret, zero_tensor)")
    assert call.path == "keras/src/layers/regularization/dropout.py"
    assert core.path == "tensorflow/python/ops/nn_ops.py"
    for e in chain:
        assert len(e.line_numbers) == len(e.text.splitlines())
        assert list(e.line_numbers) == list(range(e.first_line, e.last_line + 1))
        head = str(e).splitlines()
        assert head[0] == f"# {e.name}"
        assert head[1] == f"# {e.path}, lines {e.first_line}-{e.last_line}"
        assert e.show(numbered=False) == f"# {e.name}\n{e.text}"


def test_trainer_lines_pass_training_only_if_call_accepts_it():
    lines = kp.trainer_training_lines()
    assert set(lines) == {"fit", "evaluate", "predict"}
    assert "self(x, training=True)" in lines["fit"].text
    for method in ("evaluate", "predict"):
        assert "self(x, training=False)" in lines[method].text
    for e in lines.values():
        assert e.text.splitlines()[0] == "if self._call_has_training_arg:"
        assert e.text.splitlines()[-1].strip() == "y_pred = self(x)"


def _documented(a, b):
    """Add two numbers.

    A docstring of more than one line.
    """
    return a + b


def test_source_excerpt_drops_docstring_and_keeps_line_numbers():
    e = kp.source_excerpt(_documented)
    assert '"""' not in e.text and "return a + b" in e.text
    # the gap left by the 4 docstring lines shows in the numbering
    assert e.line_numbers[1] - e.line_numbers[0] == 5
    assert e.path == "test_keras_probe.py" or e.path.endswith("test_keras_probe.py")
    full = kp.source_excerpt(_documented, drop_docstring=False)
    assert '"""' in full.text


def test_source_excerpt_missing_marker_says_the_version_changed():
    with pytest.raises(LookupError, match="differs from the one the book read"):
        kp.source_excerpt(_documented, "no such line")
    with pytest.raises(LookupError, match="does not follow"):
        kp.source_excerpt(_documented, "return a + b", "def _documented")


# --------------------------------------------------------------------------- #
# the scale, bit for bit
# --------------------------------------------------------------------------- #


def test_inverted_scale_is_the_double_reciprocal_rounded_once():
    assert kp.inverted_scale(0.5) == np.float32(2.0)
    assert kp.inverted_scale(0.3, "float64") == 1.0 / (1.0 - 0.3)
    assert kp.inverted_scale(0.3, "float32") == np.float32(1.0 / 0.7)
    assert kp.inverted_scale(0.3).dtype == np.float32
    assert kp.inverted_scale(0) == 1


@pytest.mark.parametrize("rate", [1.0, -0.1, math.nan, math.inf])
def test_inverted_scale_rejects_rates_outside_0_1(rate):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        kp.inverted_scale(rate)


def test_inverted_scale_rejects_bool_and_integer_dtype():
    with pytest.raises(TypeError):
        kp.inverted_scale(True)
    with pytest.raises(TypeError, match="floating"):
        kp.inverted_scale(0.3, "int32")


@FAST
@given(rate=rates, dtype=dtypes, seed=seeds)
def test_keras_training_output_is_x_times_rounded_scale_bit_for_bit(rate, dtype, seed):
    x = normal((32, 16), dtype, seed % 1000)
    layer = keras.layers.Dropout(rate, seed=seed, dtype=dtype)
    y = np.asarray(layer(x, training=True))
    result = kp.assert_inverted_training_output(x, y, rate)
    assert result.n == x.size and result.exact
    np.testing.assert_array_equal(y, kp.expected_inverted_output(x, y != 0, rate))
    assert abs(kp.drop_fraction_z(result.n - result.n_kept, result.n, rate)) < 5


def test_check_catches_missing_rescaling_and_division():
    rate = 0.3
    x = normal((64, 32))
    mask = np.random.default_rng(1).random(x.shape) >= rate
    unscaled = np.where(mask, x, np.float32(0))
    with pytest.raises(AssertionError, match="no rescaling"):
        kp.assert_inverted_training_output(x, unscaled, rate)
    r = kp.check_inverted_training_output(x, unscaled, rate)
    assert r.n_unscaled == r.n_kept > 0 and r.n_scaled == 0
    # dividing by fl(1 - rate) differs from multiplying by fl(1/(1 - rate)) somewhere
    assert kp.division_mismatches(x, rate) > 0
    divided = np.where(mask, x / np.float32(1 - rate), np.float32(0))
    with pytest.raises(AssertionError, match="differ from x"):
        kp.assert_inverted_training_output(x, divided, rate)


def test_check_validates_its_inputs():
    x = normal((4, 3))
    with pytest.raises(TypeError, match="dtype='float64'"):
        kp.check_inverted_training_output(x.astype("float64"), x, 0.3)
    with pytest.raises(ValueError, match="shape"):
        kp.check_inverted_training_output(x, x[:2], 0.3)
    with pytest.raises(ValueError, match="zero entries"):
        kp.check_inverted_training_output(np.zeros((2, 2), "float32"), np.zeros((2, 2), "float32"), 0.3)
    with pytest.raises(ValueError):
        kp.drop_fraction_z(3, 10, 0.0)


def test_default_dtype_layer_casts_float64_to_float32_and_the_check_says_so():
    x = normal((8, 8), "float64")
    y = keras.layers.Dropout(0.3, seed=1)(x, training=True)
    with pytest.raises(TypeError, match="casts float64 input to float32"):
        kp.check_inverted_training_output(x, y, 0.3)


# --------------------------------------------------------------------------- #
# inference is the identity; the training flag fit/evaluate/predict pass
# --------------------------------------------------------------------------- #


def test_inference_is_the_identity_call_predict_evaluate():
    keras.utils.set_random_seed(0)
    x = normal((40, 6))
    layer = keras.layers.Dropout(0.3, seed=2)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    np.testing.assert_array_equal(np.asarray(layer(x)), x)
    model = keras.Sequential([keras.Input((6,)), layer])
    model.compile(loss="mean_absolute_error")
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)
    assert model.evaluate(x, x, verbose=0) == 0.0


@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_fit_passes_true_evaluate_and_predict_pass_false(kind):
    keras.utils.set_random_seed(0)
    x = normal((16, 4))
    model, rec = kp.probe_model(kind, rate=0.3, seed=1, n_features=4)
    flags = kp.flags_passed_by(model, rec, x, x[:, :1], batch_size=16)
    assert flags == {"fit": (True,), "evaluate": (False,), "predict": (False,)}


def test_subclassed_model_without_training_argument_disables_dropout_in_fit():
    keras.utils.set_random_seed(0)
    x = normal((16, 4))
    model, rec = kp.probe_model("subclassed-no-training-arg", rate=0.3, seed=1, n_features=4)
    flags = kp.flags_passed_by(model, rec, x, x[:, :1], batch_size=16)
    assert flags["fit"] == (False,)
    eager, rec = kp.probe_model(
        "subclassed-no-training-arg", rate=0.3, seed=1, n_features=4, run_eagerly=True
    )
    eager.fit(x, x[:, :1], epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert rec.flags == [False]
    np.testing.assert_array_equal(rec.seen[0], x)  # no unit dropped during fit


def test_eager_fit_of_a_correct_model_shows_inverted_dropout():
    keras.utils.set_random_seed(0)
    x = normal((16, 4))
    model, rec = kp.probe_model("subclassed", rate=0.3, seed=1, n_features=4, run_eagerly=True)
    model.fit(x, x[:, :1], epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert rec.flags == [True]
    r = kp.assert_inverted_training_output(x, rec.seen[0], 0.3)
    assert 0 < r.n_kept < r.n


def test_recorder_records_direct_calls_and_skips_symbolic_ones():
    rec = kp.TrainingFlagRecorder()
    x = normal((2, 3))
    np.testing.assert_array_equal(np.asarray(rec(x)), x)
    rec(x, training=True)
    assert rec.flags == [None, True]
    np.testing.assert_array_equal(rec.seen[1], x)
    keras.Sequential([keras.Input((3,)), rec])  # symbolic build: not a data pass
    assert rec.flags == [None, True]
    rec.reset()
    assert rec.flags == [] and rec.seen == []


def test_flags_passed_by_validates():
    model, rec = kp.probe_model("functional", rate=0.3, seed=1, n_features=2)
    x = normal((4, 2))
    with pytest.raises(TypeError, match="TrainingFlagRecorder"):
        kp.flags_passed_by(model, object(), x, x[:, :1])
    with pytest.raises(RuntimeError, match="inside the model"):
        kp.flags_passed_by(model, kp.TrainingFlagRecorder(), x, x[:, :1])


def test_probe_model_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        kp.probe_model("graph", rate=0.3, seed=1, n_features=2)


# --------------------------------------------------------------------------- #
# The threshold u >= fl_D(rate), and the Monte Carlo mean
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_next_uniforms_predict_the_kept_units(dtype):
    x = normal((64, 32), "float32", seed=5).astype(dtype)
    layer = keras.layers.Dropout(0.3, seed=4, dtype=dtype)
    layer(x, training=True)  # advance the generator once: the copy must follow the state
    u = kp.next_uniforms(layer, x)
    kept = np.asarray(layer(x, training=True)) != 0
    np.testing.assert_array_equal(kept, u >= np.dtype(dtype).type(0.3))
    # next_uniforms did not advance the layer: calling it again gives other u
    assert not np.array_equal(kp.next_uniforms(layer, x), u)


def test_float16_threshold_is_the_rounded_rate():
    x = normal((128, 128), "float16", seed=1)
    layer = keras.layers.Dropout(0.8, seed=3, dtype="float16")
    u = kp.next_uniforms(layer, x)
    kept = np.asarray(layer(x, training=True)) != 0
    between = (u >= np.float16(0.8)) & (u.astype(np.float64) < 0.8)
    assert between.any()
    assert kept[between].all()  # Keras keeps them; u >= 0.8 would drop them


def test_next_uniforms_refuses_noise_shape():
    layer = keras.layers.Dropout(0.3, noise_shape=(None, 1), seed=0)
    with pytest.raises(ValueError):
        kp.next_uniforms(layer, normal((4, 3)))


def test_uniform_grid():
    assert kp.uniform_grid(np.arange(1024) / 1024) == 1024
    assert kp.uniform_grid([0.0, 0.5]) == 2
    assert kp.uniform_grid([0.0]) == 1


def test_mean_output_z_tells_x_from_px():
    z, z_unscaled = kp.mean_output_z(0.3, normal((6,), seed=2), 5000, seed=1)
    assert np.abs(z).max() < 5 < np.abs(z_unscaled).min()


# --------------------------------------------------------------------------- #
# the exact mean in ulps (prop-keras-mean-ulps)
# --------------------------------------------------------------------------- #


def _mean_ulps_by_formula(x: np.ndarray, rate: float) -> list:
    """(p fl(x s) - x) / ulp(x) with numpy's product: the proposition's left side."""
    from fractions import Fraction

    s = kp.inverted_scale(rate, x.dtype)
    p = Fraction(1.0 - rate)
    return [
        (p * Fraction(float(xi * s)) - Fraction(float(xi))) / Fraction(float(np.spacing(abs(xi)))) for xi in x
    ]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mean_ulp_bound_below_two_for_every_rate_on_a_grid(dtype):
    bounds = [kp.mean_ulp_bound(k / 1000, dtype) for k in range(1, 1000)]
    assert max(bounds) < 2
    assert max(bounds) > 1.9  # and the general bound 2 is nearly reached by some rate
    assert kp.mean_ulp_bound(0.5, dtype) == 0  # s = 2: the mean is x exactly


@FAST
@given(rate=rates, dtype=dtypes, seed=seeds)
def test_mean_within_bound_for_numpy_products(rate, dtype, seed):
    x = kp.binade_inputs(256, dtype, np.random.default_rng(seed))
    bound = kp.mean_ulp_bound(rate, dtype)
    assert max(abs(d) for d in _mean_ulps_by_formula(x, rate)) <= bound < 2


def test_issue_example_is_two_ulps_after_rounding():
    """rate 0.05, x = 3940.8515625 in float64: 1.805 ulps, so fl(mean) is 2 floats away."""
    from fractions import Fraction

    x = np.array([3940.8515625])
    (d,) = _mean_ulps_by_formula(x, 0.05)
    assert -2 < d < -1.8
    mean = float(Fraction(0.95) * Fraction(float(x[0] * kp.inverted_scale(0.05, "float64"))))
    assert (x[0] - mean) / np.spacing(x[0]) == 2
    # the reference's division: within one ulp
    assert abs(Fraction(0.95) * Fraction(float(x[0] / 0.95)) - Fraction(x[0])) < Fraction(
        float(np.spacing(x[0]))
    )


def test_mean_ulp_distances_on_keras_and_the_fast_maximum_agree():
    for dtype in ("float32", "float64"):
        x = kp.binade_inputs(300, dtype, np.random.default_rng(1))
        for rate in (0.05, 0.3, 0.8):
            y = np.asarray(keras.layers.Dropout(rate, seed=2, dtype=dtype)(x, training=True))
            d = kp.mean_ulp_distances(x, y, rate)
            assert len(d) == np.count_nonzero(y)
            assert max(abs(v) for v in d) == kp.max_abs_mean_ulp(x, y, rate)
            assert max(abs(v) for v in d) <= kp.mean_ulp_bound(rate, dtype)
            p_grid = kp.mask_keep_prob(float(np.dtype(dtype).type(rate)), 2**23)
            fast = kp.max_abs_mean_ulp(x, y, rate, p_grid)
            assert max(abs(v) for v in kp.mean_ulp_distances(x, y, rate, p_grid)) == fast


def test_measure_mean_ulps_within_bounds_and_control_fails():
    x = kp.binade_inputs(512, "float32", np.random.default_rng(3))
    res = kp.measure_mean_ulps(0.2, "float32", x, seed=4)
    assert res.max_ulp <= res.bound < 2
    assert res.max_ulp_grid <= res.bound_grid
    assert res.max_ulp_nudged > res.bound  # an output one ulp off breaks the bound
    assert 0 < res.n_kept < x.size
    table = kp.mean_ulps_table([res])
    assert table.splitlines()[0].split()[:4] == ["rate", "p", "dtype", "kept"]
    assert "0.2" in table and "float32" in table


def test_wrong_scale_breaks_the_bound():
    """Scaling by s (1 + 4u) instead of s moves the mean by about 4 ulps: the check fails."""
    x = kp.binade_inputs(512, "float32", np.random.default_rng(5))
    s = kp.inverted_scale(0.3, "float32")
    wrong = x * np.float32(s * (1 + 4 * 2.0**-24))
    assert kp.max_abs_mean_ulp(x, wrong, 0.3) > kp.mean_ulp_bound(0.3, "float32")


def test_mask_keep_prob_matches_float16_finding_and_float32_grid():
    from fractions import Fraction

    assert kp.mask_keep_prob(float(np.float16(0.8)), 2**10) == Fraction(205, 1024)
    assert kp.mask_keep_prob(0.5, 2**23) == Fraction(1, 2)
    p_grid = kp.mask_keep_prob(float(np.float32(0.3)), 2**23)
    assert abs(p_grid - Fraction(7, 10)) < Fraction(1, 2**23)


def test_binade_inputs_are_exact_and_topped():
    for dtype in ("float32", "float64"):
        x = kp.binade_inputs(100, dtype, np.random.default_rng(0))
        t = np.finfo(dtype).nmant + 1
        assert x.dtype == np.dtype(dtype) and x.size == 200 and np.all(x != 0)
        assert x[100] == 2 - 2.0 ** (1 - t)  # the largest float below 2
        assert np.all(np.diff(x[100:]) < 0)


def test_mean_ulp_functions_refuse_bad_input():
    x = np.array([1.0, 0.0])
    with pytest.raises(ValueError, match="nonzero"):
        kp.mean_ulp_distances(x, x, 0.3)
    with pytest.raises(ValueError, match="nonzero"):
        kp.max_abs_mean_ulp(x, x, 0.3)
    with pytest.raises(ValueError, match="must match"):
        kp.mean_ulp_distances(np.ones(2), np.ones(2, "float32"), 0.3)
    with pytest.raises(ValueError, match="rate = 0"):
        kp.mean_ulp_bound(0.0, "float32")
