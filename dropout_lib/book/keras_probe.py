"""What the installed Keras executes when a ``Dropout`` layer runs (result #12).

Nothing here re-implements Keras: every function either *reads* the installed
Keras/TensorFlow (source via :mod:`inspect`, the ``training`` flag a layer
receives) or states, in numpy, what those sources say the output must be, so a
chapter can compare the two bit for bit.

Notation: ``rate`` is Keras's DROP probability; the paper's keep probability
is ``p = keep_prob = 1 - rate``.

What the source says (Keras 3, TensorFlow backend). ``keras.layers.Dropout``
with ``training=True`` and ``0 < rate < 1`` calls
``backend.random.dropout``, which calls ``tf.nn.experimental.stateless_dropout``,
whose shared core ``_dropout`` computes, for a Python-number ``rate``,

* ``keep_prob = 1 - rate`` and ``scale = 1 / keep_prob`` in Python, i.e. in
  IEEE double precision, then converts ``scale`` once to the input's dtype:
  ``s = fl_D(fl64(1 / fl64(1 - rate)))`` (:func:`inverted_scale`);
* ``ret = x * s`` (one rounded product per entry);
* ``keep_mask = u >= rate`` with ``u`` uniform on ``[0, 1)`` (drawn in dtype
  ``D`` by a stateless generator), and ``where(keep_mask, ret, 0)``. The
  Python float ``rate`` is converted to ``D`` for the comparison, so a unit
  is kept when ``u >= fl_D(rate)``, not ``u >= rate`` (:func:`next_uniforms`).

With ``training=False`` the layer returns its input unchanged.
"""

from __future__ import annotations

import inspect
import math
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import ArrayLike, DTypeLike, NDArray

from dropout_lib.twins import quiet_tensorflow
from dropout_lib.validation import check_rate

__all__ = [
    "SourceExcerpt",
    "source_excerpt",
    "dropout_call_chain",
    "trainer_training_lines",
    "inverted_scale",
    "expected_inverted_output",
    "division_mismatches",
    "TrainingCheck",
    "check_inverted_training_output",
    "assert_inverted_training_output",
    "drop_fraction_z",
    "next_uniforms",
    "uniform_grid",
    "mean_output_z",
    "keras_keep_prob",
    "mean_ulp_bound",
    "mask_keep_prob",
    "mean_ulp_bound_grid",
    "mean_ulp_distances",
    "max_abs_mean_ulp",
    "binade_inputs",
    "MeanUlps",
    "measure_mean_ulps",
    "mean_ulps_table",
    "TrainingFlagRecorder",
    "flags_passed_by",
    "PROBE_KINDS",
    "ProbeModel",
    "ProbeModelWithoutTrainingArg",
    "probe_model",
    "flags_table",
    "comparison_table",
    "plot_dropout_maps",
]


# --------------------------------------------------------------------------- #
# Reading the installed source
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class SourceExcerpt:
    """Lines of installed source code, with where they come from.

    Attributes
    ----------
    name
        Qualified name of the function the lines belong to.
    path
        File path relative to ``site-packages`` (``keras/src/...``), so the
        text does not depend on where the environment lives.
    line_numbers
        The 1-based line number in that file of each line of ``text`` (a
        removed docstring leaves a gap).
    text
        The lines themselves, dedented.
    """

    name: str
    path: str
    line_numbers: tuple[int, ...]
    text: str

    @property
    def first_line(self) -> int:
        """Line number of the first line shown."""
        return self.line_numbers[0]

    @property
    def last_line(self) -> int:
        """Line number of the last line shown."""
        return self.line_numbers[-1]

    def show(self, numbered: bool = True) -> str:
        """The lines under a ``# name`` header; with ``numbered``, also file, range and numbers.

        Without numbers the text does not change when unrelated lines of the
        file move (use it for code of this book, which is edited more often
        than a pinned dependency).
        """
        if not numbered:
            return f"# {self.name}\n{self.text}"
        width = len(str(self.last_line))
        body = "\n".join(
            f"{number:>{width}}  {line}".rstrip()
            for number, line in zip(self.line_numbers, self.text.splitlines())
        )
        where = f"# {self.path}, lines {self.first_line}-{self.last_line}"
        return f"# {self.name}\n{where}\n{body}"

    def __str__(self) -> str:
        return self.show(numbered=True)


def _display_path(filename: str, module_name: str) -> str:
    """``filename`` relative to the folder holding its top-level package."""
    top = sys.modules.get(module_name.split(".")[0])
    top_file = getattr(top, "__file__", None)
    if top_file:
        root = Path(top_file).resolve().parent.parent
        try:
            return Path(filename).resolve().relative_to(root).as_posix()
        except ValueError:
            pass
    return Path(filename).name


def _docstring_span(lines: list[str], func: Callable[..., Any]) -> tuple[int, int] | None:
    """Indices ``(first, last)`` of the docstring lines of ``func`` in ``lines``, or None."""
    if not inspect.getdoc(func):
        return None
    for start, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(('"""', "'''", 'r"""', "r'''")):
            quote = '"""' if '"""' in stripped else "'''"
            rest = stripped.split(quote, 1)[1]
            if quote in rest:
                return start, start
            end = next((i for i in range(start + 1, len(lines)) if quote in lines[i]), None)
            return None if end is None else (start, end)
    return None


def source_excerpt(
    func: Callable[..., Any],
    start: str | None = None,
    stop: str | None = None,
    *,
    name: str | None = None,
    drop_docstring: bool = True,
) -> SourceExcerpt:
    """Return the installed source of ``func``, or the part between two markers.

    Parameters
    ----------
    func
        A function or method; decorators are unwrapped (``inspect.unwrap``),
        so TensorFlow's dispatch wrappers give the function that runs.
    start, stop
        If given, keep only the lines from the first one containing ``start``
        to the first later one containing ``stop`` (both included).
    name
        Name to show; defaults to ``module.qualname``.
    drop_docstring
        Leave the docstring out (only when no ``start`` marker is given).

    Raises
    ------
    LookupError
        If a marker is not in the source: the installed version's code differs
        from the one this book read, and the chapter must be re-read.
    """
    target = inspect.unwrap(func)
    lines, first = inspect.getsourcelines(target)
    lines = [line.rstrip("\n") for line in lines]
    numbers = list(range(first, first + len(lines)))
    if start is None and drop_docstring:
        span = _docstring_span(lines, target)
        if span is not None:
            a, b = span
            lines, numbers = lines[:a] + lines[b + 1 :], numbers[:a] + numbers[b + 1 :]
    lo, hi = 0, len(lines) - 1
    qualname = f"{target.__module__}.{target.__qualname__}"
    if start is not None:
        lo = next((i for i, line in enumerate(lines) if start in line), None)
        if lo is None:
            raise LookupError(
                f"{start!r} is not in the source of {qualname}: the installed "
                "version differs from the one the book read; re-read its source."
            )
    if stop is not None:
        hi = next((i for i in range(lo, len(lines)) if stop in lines[i]), None)
        if hi is None:
            raise LookupError(
                f"{stop!r} does not follow {start!r} in the source of {qualname}: "
                "the installed version differs from the one the book read."
            )
    return SourceExcerpt(
        name=name or qualname,
        path=_display_path(inspect.getsourcefile(target) or "?", target.__module__),
        line_numbers=tuple(numbers[lo : hi + 1]),
        text=textwrap.dedent("\n".join(lines[lo : hi + 1])),
    )


def _tf_dropout_core() -> Callable[..., Any]:
    """``tensorflow.python.ops.nn_ops._dropout``, found from the public function."""
    public = inspect.unwrap(tf.nn.experimental.stateless_dropout)
    module = sys.modules[public.__module__]
    return module._dropout


def dropout_call_chain() -> list[SourceExcerpt]:
    """The source of every function a training call of ``keras.layers.Dropout`` runs.

    In order: ``Dropout.call``; the backend's ``random.dropout`` *as bound at
    run time* (whatever ``Dropout.call`` would call now); the body of
    ``tf.nn.experimental.stateless_dropout`` after its docstring; and the lines
    of TensorFlow's shared ``_dropout`` that compute the scale and apply the
    mask (from the branch on the type of ``rate`` to the ``where``).

    Returns
    -------
    list of SourceExcerpt
        Print each one to show the code with its file and line numbers.
    """
    import keras.src.layers.regularization.dropout as keras_dropout_module

    backend_dropout = keras_dropout_module.backend.random.dropout
    return [
        source_excerpt(keras.layers.Dropout.call, name="keras.layers.Dropout.call"),
        source_excerpt(backend_dropout),
        source_excerpt(
            tf.nn.experimental.stateless_dropout,
            "uniform_sampler = ",
            'default_name="stateless_dropout")',
            name="tf.nn.experimental.stateless_dropout",
        ),
        source_excerpt(
            _tf_dropout_core(),
            "if not tensor_util.is_tf_type(rate):",
            "ret = array_ops.where_v2(keep_mask, ret, zero_tensor)",
        ),
    ]


def trainer_training_lines() -> dict[str, SourceExcerpt]:
    """The lines of Keras's TensorFlow trainer that decide the ``training`` flag.

    Returns a mapping ``{"fit": ..., "evaluate": ..., "predict": ...}`` with the
    ``if self._call_has_training_arg:`` block of ``train_step``,
    ``test_step`` and ``predict_step``: the model is called with an explicit
    ``training`` value *only if its* ``call()`` *accepts one*.
    """
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    steps = {"fit": "train_step", "evaluate": "test_step", "predict": "predict_step"}
    return {
        method: source_excerpt(
            getattr(TensorFlowTrainer, step),
            "if self._call_has_training_arg:",
            "y_pred = self(x)",
            name=f"TensorFlowTrainer.{step}",
        )
        for method, step in steps.items()
    }


# --------------------------------------------------------------------------- #
# What the output must be, in numpy
# --------------------------------------------------------------------------- #


def _float_dtype(dtype: DTypeLike) -> np.dtype:
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        raise TypeError(f"dtype must be a floating dtype; got {dt}.")
    return dt


def inverted_scale(rate: float, dtype: DTypeLike = np.float32) -> np.floating:
    """The factor Keras/TensorFlow multiplies kept units by in training.

    ``s = fl_D(1 / (1 - rate))``: ``1 - rate`` and ``1 / (1 - rate)`` are
    computed in Python (IEEE double), and the result is rounded once to the
    input's dtype ``D`` (TensorFlow's ``convert_to_tensor(scale, dtype=x.dtype)``).

    Parameters
    ----------
    rate
        Keras's drop probability in ``[0, 1)``.
    dtype
        The input's floating dtype.
    """
    r = check_rate(rate)
    return _float_dtype(dtype).type(1.0 / (1.0 - r))


def expected_inverted_output(x: ArrayLike, keep_mask: ArrayLike, rate: float) -> NDArray[np.floating]:
    """``where(keep_mask, x * s, 0)`` in ``x``'s dtype, ``s = inverted_scale(rate, x.dtype)``.

    This is what the source of TensorFlow's ``_dropout`` computes; the product
    ``x * s`` is one IEEE multiplication per entry, so it is reproducible bit
    for bit in numpy.
    """
    arr = np.asarray(x)
    _float_dtype(arr.dtype)
    keep = np.asarray(keep_mask).astype(bool)
    np.broadcast_shapes(keep.shape, arr.shape)
    s = inverted_scale(rate, arr.dtype)
    return np.where(keep, arr * s, arr.dtype.type(0))


def division_mismatches(x: ArrayLike, rate: float) -> int:
    """How many entries of ``x / fl_D(1 - rate)`` differ from ``x * inverted_scale(rate)``.

    Dividing by the rounded keep probability and multiplying by the rounded
    reciprocal agree in exact arithmetic but not always in floating point; a
    nonzero count shows that a bit-exact comparison can tell the two apart.
    """
    arr = np.asarray(x)
    dt = _float_dtype(arr.dtype)
    r = check_rate(rate)
    return int(np.count_nonzero(arr / dt.type(1.0 - r) != arr * inverted_scale(r, dt)))


@dataclass(frozen=True)
class TrainingCheck:
    """Result of comparing a training output ``y`` with inverted dropout of ``x``.

    Attributes
    ----------
    n
        Number of entries.
    n_kept
        Entries where ``y != 0`` (``x`` must have no zeros, so these are the
        kept units).
    n_scaled
        Kept entries with ``y == x * s`` exactly (should be ``n_kept``).
    n_unscaled
        Kept entries with ``y == x`` exactly: what a dropout that forgot to
        rescale would give.
    scale
        ``s = inverted_scale(rate, x.dtype)``.
    """

    n: int
    n_kept: int
    n_scaled: int
    n_unscaled: int
    scale: float

    @property
    def exact(self) -> bool:
        """True when every kept entry equals ``x * s`` bit for bit."""
        return self.n_scaled == self.n_kept

    @property
    def drop_fraction(self) -> float:
        """Fraction of entries set to zero."""
        return 1.0 - self.n_kept / self.n


def _as_numpy(y: Any) -> NDArray:
    return np.asarray(keras.ops.convert_to_numpy(y)) if not isinstance(y, np.ndarray) else y


def check_inverted_training_output(x: ArrayLike, y: Any, rate: float) -> TrainingCheck:
    """Compare a training output ``y`` of a dropout layer with inverted dropout of ``x``.

    ``x`` must have no zero entries (then ``y == 0`` exactly where a unit
    was dropped) and ``y`` must have ``x``'s shape and dtype.
    """
    xa = np.asarray(x)
    ya = _as_numpy(y)
    _float_dtype(xa.dtype)
    if ya.shape != xa.shape:
        raise ValueError(f"y has shape {ya.shape}, x has shape {xa.shape}; they must match.")
    if ya.dtype != xa.dtype:
        raise TypeError(
            f"y has dtype {ya.dtype} but x has {xa.dtype}: the layer changed the "
            "dtype (a default-dtype Keras layer casts float64 input to float32; "
            "pass dtype='float64' to the layer)."
        )
    if np.any(xa == 0):
        raise ValueError("x has zero entries: a dropped unit and a zero input look alike.")
    kept = ya != 0
    s = inverted_scale(rate, xa.dtype)
    return TrainingCheck(
        n=int(xa.size),
        n_kept=int(kept.sum()),
        n_scaled=int(np.count_nonzero(ya[kept] == xa[kept] * s)),
        n_unscaled=int(np.count_nonzero(ya[kept] == xa[kept])),
        scale=float(s),
    )


def assert_inverted_training_output(x: ArrayLike, y: Any, rate: float) -> TrainingCheck:
    """Raise ``AssertionError`` unless every nonzero ``y`` equals ``x * s`` bit for bit.

    ``s = inverted_scale(rate, x.dtype)``; see :func:`check_inverted_training_output`.
    Returns the :class:`TrainingCheck` when it holds.
    """
    result = check_inverted_training_output(x, y, rate)
    if not result.exact:
        raise AssertionError(
            f"{result.n_kept - result.n_scaled} of {result.n_kept} kept entries differ "
            f"from x * fl(1/(1-rate)) = x * {result.scale!r}; {result.n_unscaled} of them "
            "equal x itself (no rescaling in training)."
        )
    return result


def drop_fraction_z(n_dropped: int, n: int, rate: float) -> float:
    """Standard score of ``n_dropped`` drops out of ``n`` independent units.

    ``(n_dropped - n rate) / sqrt(n rate (1 - rate))``: the number of drops is
    Binomial(n, rate), so ``|z| > 5`` has probability below ``1e-6`` when the
    layer drops each unit with probability ``rate``.
    """
    r = check_rate(rate)
    if n <= 0 or r == 0:
        raise ValueError("need n > 0 and rate > 0 for a standard score.")
    return (n_dropped - n * r) / math.sqrt(n * r * (1.0 - r))


def next_uniforms(layer: keras.layers.Layer, x: ArrayLike) -> NDArray:
    """The uniform numbers ``u`` that ``layer``'s next training call on ``x`` compares with ``rate``.

    Reproduces the draw of ``keras.layers.Dropout`` (TensorFlow backend): a
    seed drawn from a copy of the layer's seed generator, cast as Keras casts
    it, and ``tf.random.stateless_uniform`` of ``x``'s shape and dtype with
    TensorFlow's default algorithm, which is what
    ``tf.nn.experimental.stateless_dropout`` calls. The layer itself is not
    advanced. Only for layers without a ``noise_shape``.
    """
    from keras.src.backend.tensorflow.random import _cast_seed
    from keras.src.random.seed_generator import draw_seed

    if getattr(layer, "noise_shape", None) is not None:
        raise ValueError("next_uniforms supports layers without a noise_shape only.")
    xa = np.asarray(x)
    _float_dtype(xa.dtype)
    copy = keras.random.SeedGenerator(0)
    copy.state.assign(layer.seed_generator.state.value)
    seed = _cast_seed(draw_seed(copy))
    return tf.random.stateless_uniform(xa.shape, seed=seed, dtype=tf.as_dtype(xa.dtype)).numpy()


def uniform_grid(u: ArrayLike) -> int:
    """The smallest ``G = 2**k`` such that every ``u * G`` is an integer (the sampler's grid).

    TensorFlow draws a uniform number of a floating dtype from random
    significand bits, so its values are multiples of ``1 / G``: ``G = 2**10``
    for float16, ``2**23`` for float32.
    """
    ua = np.asarray(u, dtype=np.float64)
    for k in range(64):
        if np.all(np.ldexp(ua, k) == np.round(np.ldexp(ua, k))):
            return 2**k
    raise ValueError("u is not on a power-of-two grid below 2**-63.")


def mean_output_z(rate: float, x: ArrayLike, n_draws: int, seed: int) -> tuple[NDArray, NDArray]:
    """Standard scores of Keras's mean training output, for ``E = x`` and for ``E = (1 - rate) x``.

    Runs ``keras.layers.Dropout(rate, seed=seed)`` once on ``n_draws`` copies of
    the 1-D ``x`` (one row a training call) and returns ``(z, z_unscaled)``:
    the mean output's distance from ``x`` (inverted dropout) and from
    ``p x`` (a dropout that forgot to rescale), in units of the standard
    error ``|x| sqrt((1 - p) / p) / sqrt(n)`` of ``m x / p``.
    """
    r = check_rate(rate)
    xa = np.asarray(x)
    draws = keras.layers.Dropout(r, seed=seed)(np.tile(xa, (n_draws, 1)), training=True)
    mean = np.asarray(draws, dtype=np.float64).mean(axis=0)
    x64 = xa.astype(np.float64)
    se = np.abs(x64) * np.sqrt(r / (1 - r)) / np.sqrt(n_draws)
    return (mean - x64) / se, ((1 - r) * x64 - x64) / se


# --------------------------------------------------------------------------- #
# The exact mean of Keras's training output, in ulps of x
# --------------------------------------------------------------------------- #


def _unit_roundoff(dtype: DTypeLike) -> Fraction:
    """``u = 2**-t`` for a float dtype with ``t`` significand bits (float32: 2**-24)."""
    return Fraction(1, 2 ** (np.finfo(_float_dtype(dtype)).nmant + 1))


def keras_keep_prob(rate: float) -> float:
    """Keras's ``keep_prob = 1 - rate``, computed in Python: the double ``fl64(1 - rate)``.

    It is the ``p`` of ``scale = 1 / keep_prob`` in TensorFlow's ``_dropout``
    (see :func:`inverted_scale`). It equals the real ``1 - rate`` when
    ``rate >= 1/2`` (Sterbenz) and is within ``2**-54`` of it otherwise.
    """
    return 1.0 - check_rate(rate)


def mean_ulp_bound(rate: float, dtype: DTypeLike) -> Fraction:
    """The proved bound ``beta`` on ``|p fl_D(x s) - x| / ulp(x)`` for Keras's ``rate``, exact.

    With ``p = keras_keep_prob(rate)``, ``s = inverted_scale(rate, dtype)``,
    ``gamma = p s - 1`` (exact) and ``u`` the unit roundoff of ``dtype``:

    ``beta = p * 2**(K - 1) + |gamma| (1 - u) / u``,  ``K = floor(log2 s) + 1``,

    where the first term (the rounding of ``x s``, at most half an ulp of
    ``x s`` times ``p``) is 0 when ``s`` is a power of two (``x s`` is then
    exact). It holds for every float ``x != 0`` of ``dtype`` for which ``x``
    and ``x s`` are normal (no overflow, no underflow), under round to
    nearest; and ``beta < 2`` for every rate in ``(0, 1)`` in float32 and
    float64 (chapter 2, ``prop-keras-mean-ulps``).
    """
    r = check_rate(rate)
    if r == 0:
        raise ValueError("rate = 0: Dropout returns x itself and the mean is x exactly.")
    u = _unit_roundoff(dtype)
    p = Fraction(keras_keep_prob(r))
    s = Fraction(float(inverted_scale(r, dtype)))
    gamma = p * s - 1
    k = math.floor(math.log2(s))  # exact: s is a float, log2 of a power of two is exact
    if Fraction(2) ** k > s:  # guard the float log2 near a power of two
        k -= 1
    elif Fraction(2) ** (k + 1) <= s:
        k += 1
    rounding = 0 if s == Fraction(2) ** k else p * Fraction(2) ** k  # p 2**(K-1), K = k + 1
    return rounding + abs(gamma) * (1 - u) / u


def mask_keep_prob(rate: float, grid: int) -> Fraction:
    """The keep probability of Keras's mask when its uniforms are ``k / grid``, exact.

    Keras keeps a unit when ``v >= fl_D(rate)`` (:func:`next_uniforms`), with
    ``v`` uniform on ``{0, 1/G, ..., (G-1)/G}`` (:func:`uniform_grid`: ``G =
    2**23`` in float32, ``2**52`` in float64, ``2**10`` in float16). So it keeps
    with probability ``(G - ceil(fl_D(rate) G)) / G``, which differs from
    ``1 - rate`` by less than ``1 / G``. ``rate`` here must already be
    ``fl_D(rate)`` as a float (e.g. ``float(np.float32(rate))``).
    """
    threshold = Fraction(float(rate))
    return Fraction(grid - math.ceil(threshold * grid), grid)


def _checked_outputs(x: ArrayLike, y: Any, rate: float, keep_prob: Any) -> tuple[NDArray, NDArray, Fraction]:
    """``(x, y, p)`` as arrays and an exact ``p``, after checking ``y`` is a dropout of ``x``."""
    xa = np.asarray(x)
    ya = _as_numpy(y)
    _float_dtype(xa.dtype)
    if ya.shape != xa.shape or ya.dtype != xa.dtype:
        raise ValueError(f"y ({ya.shape}, {ya.dtype}) must match x ({xa.shape}, {xa.dtype}).")
    if np.any(xa == 0) or not np.all(np.isfinite(xa)):
        raise ValueError("x must be finite and nonzero: a dropped unit and a zero look alike.")
    return xa, ya, Fraction(keras_keep_prob(rate) if keep_prob is None else keep_prob)


def mean_ulp_distances(
    x: ArrayLike, y: Any, rate: float, keep_prob: Fraction | float | None = None
) -> list[Fraction]:
    """Signed distances ``(p y_i - x_i) / ulp(x_i)`` over kept entries, in exact arithmetic.

    ``y`` is a training output of ``keras.layers.Dropout(rate)`` on ``x`` (same
    dtype, ``x`` without zeros, so ``y_i != 0`` exactly where a unit was kept).
    For a kept unit, ``p y_i`` is the exact mean of that unit's output over
    masks that keep it with probability ``p`` (a dropped unit contributes 0):
    the mean is computed from Keras's own kept value, not from a formula.
    ``ulp(x)`` is the gap from ``|x|`` to the next larger float of ``x``'s
    dtype. ``p`` defaults to :func:`keras_keep_prob`; pass
    :func:`mask_keep_prob` for the sampler's own keep probability.
    """
    xa, ya, p = _checked_outputs(x, y, rate, keep_prob)
    kept = ya != 0
    xs, ys = xa[kept].astype(np.float64), ya[kept].astype(np.float64)
    ulps = np.spacing(np.abs(xa[kept])).astype(np.float64)  # powers of two, exact
    return [
        (p * Fraction(yi) - Fraction(xi)) / Fraction(ui)
        for xi, yi, ui in zip(xs.tolist(), ys.tolist(), ulps.tolist())
    ]


def mean_ulp_bound_grid(rate: float, dtype: DTypeLike, grid: int) -> Fraction:
    """:func:`mean_ulp_bound` plus what the sampler's keep probability adds, exact.

    With ``p_G = mask_keep_prob(fl_D(rate), grid)`` in place of ``p``, the mean
    ``p_G fl_D(x s)`` moves by ``|p_G - p| |fl_D(x s)| <= |p_G - p| s (1 + u) |x|``,
    and ``|x| / ulp(x) <= (1 - u) / u``: the bound grows by
    ``|p_G - p| s (1 - u**2) / u``.
    """
    dt = _float_dtype(dtype)
    u = _unit_roundoff(dt)
    p = Fraction(keras_keep_prob(rate))
    p_grid = mask_keep_prob(float(dt.type(rate)), grid)
    s = Fraction(float(inverted_scale(rate, dt)))
    return mean_ulp_bound(rate, dt) + abs(p_grid - p) * s * (1 - u * u) / u


def max_abs_mean_ulp(
    x: ArrayLike, y: Any, rate: float, keep_prob: Fraction | float | None = None
) -> Fraction:
    """``max_i |p y_i - x_i| / ulp(x_i)`` over kept entries: :func:`mean_ulp_distances`, faster.

    The same exact value (0 when nothing is kept), computed with Python
    integers: every float is ``n / 2**k``, so ``(p y - x) / ulp(x)`` is an
    integer times a power of two, and the largest one is found by comparing
    integers shifted to a common exponent. No rounding anywhere.
    """
    xa, ya, p = _checked_outputs(x, y, rate, keep_prob)
    pn, pk = p.numerator, p.denominator.bit_length() - 1  # p = pn / 2**pk
    if p.denominator != 1 << pk:
        raise ValueError(f"keep_prob must be a dyadic rational (a float); got {p}.")
    kept = ya != 0
    xs, ys = xa[kept].astype(np.float64), ya[kept].astype(np.float64)
    ulps = np.spacing(np.abs(xa[kept])).astype(np.float64)
    best_n, best_e = 0, 0  # the largest |d| = best_n * 2**best_e
    for xi, yi, ui in zip(xs.tolist(), ys.tolist(), ulps.tolist()):
        xn, xd = xi.as_integer_ratio()
        yn, yd = yi.as_integer_ratio()
        un, ud = ui.as_integer_ratio()
        xk, yk = xd.bit_length() - 1, yd.bit_length() - 1
        k = max(pk + yk, xk)  # p y - x = n / 2**k
        n = abs((pn * yn << (k - pk - yk)) - (xn << (k - xk)))
        e = (ud.bit_length() - 1) - k - (un.bit_length() - 1)  # / ulp = * ud / un
        if n and (best_n == 0 or (n << max(e - best_e, 0)) > (best_n << max(best_e - e, 0))):
            best_n, best_e = n, e
    return Fraction(best_n) * Fraction(2) ** best_e


def binade_inputs(n: int, dtype: DTypeLike, rng: np.random.Generator) -> NDArray:
    """``n`` random floats of ``dtype`` and the ``n`` largest ones below 2, all exact.

    The random half is ``+-m * 2**(e - t + 1)`` with ``m`` a random ``t``-bit
    significand and ``e`` uniform in ``[-8, 8]``; the second half is
    ``(2**t - j) * 2**(1 - t)`` for ``j = 1..n``, the top of the binade
    ``[1, 2)``, where the distance of :func:`mean_ulp_bound` is largest
    (``|x| / ulp(x)`` is largest there). Integer-to-float conversions and
    ``ldexp`` only: the same bits on every machine.
    """
    dt = _float_dtype(dtype)
    t = np.finfo(dt).nmant + 1
    m = rng.integers(2 ** (t - 1), 2**t, size=n).astype(np.float64)
    e = rng.integers(-8, 9, size=n)
    sign = rng.choice(np.array([-1.0, 1.0]), size=n)
    top = (2.0**t - np.arange(1, n + 1)) * 2.0 ** (1 - t)
    return np.concatenate([sign * np.ldexp(m, e - t + 1), top]).astype(dt)


@dataclass(frozen=True)
class MeanUlps:
    """Largest distance of Keras's exact training mean from ``x``, for one rate and dtype.

    Attributes
    ----------
    rate, dtype
        The layer's rate and compute dtype.
    n_kept
        Kept entries measured (each gives one exact mean).
    max_ulp
        ``max |p y_i - x_i| / ulp(x_i)``, ``p = keras_keep_prob(rate)`` (exact).
    bound
        :func:`mean_ulp_bound` (exact).
    max_ulp_grid, bound_grid
        The same with ``p`` replaced by the sampler's own keep probability
        (:func:`mask_keep_prob`), and its bound (:func:`mean_ulp_bound_grid`).
    max_ulp_nudged
        The largest distance when every kept output is moved by one ulp of
        its dtype (towards ``+inf`` and towards ``-inf``, the larger of the
        two): a negative control, which must exceed ``bound``.
    """

    rate: float
    dtype: str
    n_kept: int
    max_ulp: Fraction
    bound: Fraction
    max_ulp_grid: Fraction
    bound_grid: Fraction
    max_ulp_nudged: Fraction


def measure_mean_ulps(rate: float, dtype: DTypeLike, x: ArrayLike, seed: int) -> MeanUlps:
    """Run ``keras.layers.Dropout(rate, seed=seed, dtype=dtype)`` on ``x`` and measure the mean.

    Checks first that every kept output is ``fl_D(x s)`` bit for bit
    (:func:`assert_inverted_training_output`), then computes the exact means
    of :func:`mean_ulp_distances` for ``p = keras_keep_prob(rate)`` and for the
    keep probability of the sampler's grid, measured on the layer's own next
    uniforms (:func:`next_uniforms`, :func:`uniform_grid`).
    """
    dt = _float_dtype(dtype)
    xa = np.asarray(x, dtype=dt)
    layer = keras.layers.Dropout(rate, seed=seed, dtype=dt.name)
    grid = uniform_grid(next_uniforms(layer, xa))
    y = np.asarray(layer(xa, training=True))
    check = assert_inverted_training_output(xa, y, rate)
    p_grid = mask_keep_prob(float(dt.type(rate)), grid)
    kept = y != 0
    nudged = [
        max_abs_mean_ulp(xa, np.where(kept, np.nextafter(y, to), y), rate)
        for to in (dt.type(np.inf), dt.type(-np.inf))
    ]
    return MeanUlps(
        rate=float(rate),
        dtype=dt.name,
        n_kept=check.n_kept,
        max_ulp=max_abs_mean_ulp(xa, y, rate),
        bound=mean_ulp_bound(rate, dt),
        max_ulp_grid=max_abs_mean_ulp(xa, y, rate, p_grid),
        bound_grid=mean_ulp_bound_grid(rate, dt, grid),
        max_ulp_nudged=max(nudged),
    )


def mean_ulps_table(results: Sequence[MeanUlps]) -> str:
    """A text table of :class:`MeanUlps`, one row per rate and dtype (4 decimals, exact inputs).

    Columns: rate, p = 1 - rate, dtype, kept entries, the largest distance,
    the bound, the bound minus the largest distance, and the largest distance
    with the sampler's keep probability. Values are exact rationals printed
    rounded down (distances) or up (bounds) to 4 decimals, so the table is
    the same on every machine and never shows a distance above its bound.
    """

    def down(q: Fraction) -> str:
        return f"{math.floor(q * 10**4) / 10**4:.4f}"

    def up(q: Fraction) -> str:
        return f"{math.ceil(q * 10**4) / 10**4:.4f}"

    head = ("rate", "p", "dtype", "kept", "max ulps", "bound", "margin", "grid p: max")
    rows = [
        (
            f"{r.rate:g}",
            f"{keras_keep_prob(r.rate):g}",
            r.dtype,
            f"{r.n_kept:d}",
            down(r.max_ulp),
            up(r.bound),
            down(r.bound - r.max_ulp),
            down(r.max_ulp_grid),
        )
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(f"{c:>{w}}" for c, w in zip(line, widths)) for line in (head, *rows)]
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# What fit / evaluate / predict pass
# --------------------------------------------------------------------------- #


@keras.saving.register_keras_serializable(package="dropout_lib")
class TrainingFlagRecorder(keras.layers.Layer):
    """Identity layer that records the ``training`` value each call receives.

    ``call(inputs, training=None)`` returns ``inputs`` and appends ``training``
    to :attr:`flags` exactly as Keras resolved it (``True``, ``False``, or
    ``None`` when nothing was passed down). Symbolic calls (Keras's own
    shape inference while building a model, on ``KerasTensor`` inputs) are
    not recorded: they are not a forward pass of any data.

    When the call runs eagerly (``run_eagerly=True`` in ``compile``, or a
    direct call), the input values are also kept in :attr:`seen`, so the
    values flowing through a model during ``fit`` can be inspected; inside a
    traced ``tf.function`` only the flag is recorded (once per trace).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flags: list[bool | None] = []
        self.seen: list[NDArray] = []
        self.supports_masking = True

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if isinstance(inputs, keras.KerasTensor):
            return inputs
        self.flags.append(training)
        if tf.executing_eagerly():
            self.seen.append(np.array(keras.ops.convert_to_numpy(inputs)))
        return inputs

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self.flags.clear()
        self.seen.clear()

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


def _distinct(values: Sequence[Any]) -> tuple[Any, ...]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return tuple(out)


# Probing several small models in a row makes TensorFlow log a warning about
# tf.function retracing (a performance hint): the package's one silencer.
_quiet_tf_logger = quiet_tensorflow


def flags_passed_by(
    model: keras.Model,
    recorder: TrainingFlagRecorder,
    x: ArrayLike,
    y: ArrayLike,
    *,
    batch_size: int | None = None,
) -> dict[str, tuple[bool | None, ...]]:
    """Run ``fit`` (one epoch), ``evaluate`` and ``predict`` and report the flags seen.

    Parameters
    ----------
    model
        A compiled model that contains ``recorder`` (after the layer of
        interest, e.g. a ``Dropout``).
    recorder
        The :class:`TrainingFlagRecorder` inside ``model``.
    x, y
        Data for one epoch of ``fit`` and for ``evaluate``; ``predict`` uses ``x``.
    batch_size
        Passed to all three (``None``: Keras's default of 32).

    Returns
    -------
    dict
        ``{"fit": flags, "evaluate": flags, "predict": flags}``, each the
        distinct ``training`` values the recorder received, in order of first
        appearance. Progress bars are off (``verbose=0``).
    """
    if not isinstance(recorder, TrainingFlagRecorder):
        raise TypeError(f"recorder must be a TrainingFlagRecorder; got {type(recorder).__name__}.")
    runs = {
        "fit": lambda: model.fit(x, y, epochs=1, batch_size=batch_size, verbose=0, shuffle=False),
        "evaluate": lambda: model.evaluate(x, y, batch_size=batch_size, verbose=0),
        "predict": lambda: model.predict(x, batch_size=batch_size, verbose=0),
    }
    out: dict[str, tuple[bool | None, ...]] = {}
    for method, run in runs.items():
        recorder.reset()
        with _quiet_tf_logger():
            run()
        if not recorder.flags:
            raise RuntimeError(f"the recorder saw no call during {method}: is it inside the model?")
        out[method] = _distinct(recorder.flags)
    recorder.reset()
    return out


# --------------------------------------------------------------------------- #
# Small models that carry a recorder after their Dropout
# --------------------------------------------------------------------------- #

PROBE_KINDS: tuple[str, ...] = (
    "sequential",
    "functional",
    "subclassed",
    "subclassed-no-training-arg",
)


class ProbeModel(keras.Model):
    """Subclassed model ``Dropout -> TrainingFlagRecorder -> Dense(1)``, done right.

    Its ``call`` accepts ``training`` and passes it on, so ``fit`` can switch
    dropout on.
    """

    def __init__(self, rate: float, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dropout = keras.layers.Dropout(rate, seed=seed)
        self.recorder = TrainingFlagRecorder()
        self.head = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed))

    def build(self, input_shape: Any) -> None:
        self.head.build(input_shape)  # Dropout and the recorder keep the shape

    def call(self, x, training=None):
        return self.head(self.recorder(self.dropout(x, training=training)))


class ProbeModelWithoutTrainingArg(ProbeModel):
    """The same model with the trap: ``call`` takes no ``training`` argument."""

    def call(self, x):
        return self.head(self.recorder(self.dropout(x)))


def probe_model(
    kind: str,
    *,
    rate: float,
    seed: int,
    n_features: int,
    run_eagerly: bool = False,
) -> tuple[keras.Model, TrainingFlagRecorder]:
    """Build and compile ``Dropout(rate) -> TrainingFlagRecorder -> Dense(1)``.

    Parameters
    ----------
    kind
        ``"sequential"``, ``"functional"``, ``"subclassed"`` (:class:`ProbeModel`)
        or ``"subclassed-no-training-arg"`` (:class:`ProbeModelWithoutTrainingArg`).
    rate
        Keras's drop probability (keep_prob = 1 - rate).
    seed
        Seed of the Dropout layer and of the Dense layer's initializer.
    n_features
        Width of the input.
    run_eagerly
        Compile with ``run_eagerly=True`` so the recorder also keeps the
        values it sees during ``fit``.

    Returns
    -------
    (model, recorder)
        The model, compiled with plain SGD and mean squared error, and the
        recorder inside it (which sees the Dropout layer's output).
    """
    if kind not in PROBE_KINDS:
        raise ValueError(f"kind must be one of {PROBE_KINDS}; got {kind!r}.")
    if kind in ("subclassed", "subclassed-no-training-arg"):
        cls = ProbeModel if kind == "subclassed" else ProbeModelWithoutTrainingArg
        model: keras.Model = cls(rate, seed)
        model.build((None, n_features))
        recorder = model.recorder
    else:
        dropout = keras.layers.Dropout(rate, seed=seed)
        recorder = TrainingFlagRecorder()
        head = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed))
        if kind == "sequential":
            model = keras.Sequential([keras.Input((n_features,)), dropout, recorder, head])
        else:
            inputs = keras.Input((n_features,))
            model = keras.Model(inputs, head(recorder(dropout(inputs))))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", run_eagerly=run_eagerly)
    return model, recorder


# --------------------------------------------------------------------------- #
# Showing the results
# --------------------------------------------------------------------------- #


def flags_table(flags: dict[str, dict[str, tuple[bool | None, ...]]]) -> str:
    """A text table of :func:`flags_passed_by` results, one row per model.

    ``flags[model_name][method]`` is the tuple of ``training`` values seen.
    """
    methods = ("fit", "evaluate", "predict")
    width = max(len("model"), *(len(name) for name in flags))
    lines = [f"{'model':<{width}}  " + "  ".join(f"{m:<8}" for m in methods)]
    for name, seen in flags.items():
        cells = ["/".join(str(v) for v in seen[m]) for m in methods]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c:<8}" for c in cells))
    return "\n".join(line.rstrip() for line in lines)


def comparison_table(columns: dict[str, ArrayLike], digits: int = 5) -> str:
    """A fixed-width text table of 1-D arrays of equal length, one column each.

    Values are printed with ``digits`` decimals; signed zeros print as ``0``.
    """
    # + 0.0 turns a signed zero (-0.0, e.g. a dropped negative input times 0) into 0.0
    arrays = {name: np.asarray(col, dtype=np.float64).ravel() + 0.0 for name, col in columns.items()}
    lengths = {a.size for a in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"columns must have equal lengths; got {sorted(lengths)}.")
    widths = {name: max(len(name), digits + 4) for name in arrays}
    header = "  ".join(f"{name:>{widths[name]}}" for name in arrays)
    rows = [
        "  ".join(f"{arrays[name][i]:>{widths[name]}.{digits}f}" for name in arrays)
        for i in range(lengths.pop())
    ]
    return "\n".join([header, *rows])


def plot_dropout_maps(
    x: ArrayLike,
    train: dict[str, ArrayLike],
    test: dict[str, ArrayLike],
    claims: dict[str, float] | None = None,
):
    """Plot output against input: training (left panel) and inference (right panel).

    Parameters
    ----------
    x
        Inputs (any shape).
    train, test
        ``{"inverted": y, "standard": y}``: outputs of the two layers on ``x``
        (same shape), drawn as points in the book's colour of each variant.
    claims
        ``{label: slope}``: a claimed inference map ``y = slope * x``, drawn as
        a dashed line on the right panel.

    Returns
    -------
    (fig, axes)
    """
    from dropout_lib.book.plotting import COLORS, figure

    labels = {"inverted": "Keras Dropout (inverted)", "standard": "StandardDropout (paper)"}
    xs = np.asarray(x, dtype=np.float64).ravel()
    fig, axes = figure(ncols=2, width=7.0, height=3.0, sharey=True)
    for ax, outputs, title in ((axes[0], train, "training=True"), (axes[1], test, "training=False")):
        for variant, y in outputs.items():
            ax.plot(
                xs,
                np.asarray(y, dtype=np.float64).ravel(),
                ".",
                ms=3,
                color=COLORS[variant],
                label=labels[variant],
            )
        ax.set_title(title)
        ax.set_xlabel("input x")
    for label, slope in (claims or {}).items():
        grid = np.array([xs.min(), xs.max()])
        axes[1].plot(grid, slope * grid, "--", color=COLORS["control"], label=label)
    axes[0].set_ylabel("output")
    axes[1].legend(loc="lower right")
    return fig, axes
