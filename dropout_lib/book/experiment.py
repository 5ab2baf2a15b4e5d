"""The four-way training run on real data: Keras's dropout, the paper's (mapped and not), none.

Notation: ``keep_prob`` is the paper's ``p``, the probability of KEEPING a
unit; Keras's ``rate`` is the DROP probability ``1 - p``. The network's
dropout layers are configured, as ``keras.layers.Dropout`` is, by ``rate``.

The experiment
--------------
One seed draws a training set of handwritten digits
(:func:`dropout_lib.book.datasets.digits_split`), the initial weights and the
dropout masks. From one Keras MLP with ``keras.layers.Dropout``
(:func:`digits_mlp`) it builds four nets and trains each with ``model.fit``,
full batch (every step sees the whole training set: one step is one epoch),
for the same number of steps:

=============  ======================================================================
way            net, initial weights, optimizer
=============  ======================================================================
``inverted``   Keras's inverted dropout; the MLP as built; ``Adam(lr, epsilon)``
``mapped``     the paper's dropout (:class:`~dropout_lib.layers.StandardDropout`),
               consuming kernels ``W / p`` (biases unchanged), the mapped
               optimizer (``lr / p`` and ``epsilon * p`` on those kernels,
               :func:`dropout_lib.mapping.mapped_multi_optimizer`)
``same``       the paper's dropout with the SAME initial weights and the same
               ``Adam(lr, epsilon)`` on every variable: the drop-in swap
``none``       no dropout (each dropout layer replaced by ``Identity``); same
               weights and optimizer as ``inverted``
=============  ======================================================================

The three dropout nets draw the same masks at every step (their seed
generators' states are shared, :func:`dropout_lib.twins.twin`). By the
same-function theorem and the Adam map (chapters 3 and 5), ``mapped`` is the
``inverted`` net in other coordinates at every step: its weights mapped back,
``p W`` on the consuming kernels, equal the inverted net's up to rounding.

:class:`FourWays` builds and compiles the four nets once and, before each
seed, resets them to the state freshly built nets would have (tracing a
train step costs as much as the training here); :func:`run_experiment`
runs it over several seeds. ``model.fit`` runs full batch over a repeated
``tf.data`` dataset, ``eval_every`` steps per execution.

Held-out loss and accuracy are recorded during training by
:class:`HeldOutCurve`, which calls the model in inference mode
(``training=False``, as ``predict`` and ``evaluate`` do) on the held-out
images every ``eval_every`` steps.

:func:`paired_comparison` compares two ways seed by seed (the seeds are
independent replicates; within a seed the ways share data, initial weights
and masks), with the mean difference, its standard error, the exact sign
test and the paired t-test with its 95% confidence interval.

:func:`pilot` reruns the pilot that chose the chapter's learning rate (on
seeds :data:`PILOT_SEEDS`, which the chapter does not use), and
:func:`setting_numbers`, :func:`same_model_gaps`, :func:`top2_margin` and
:func:`plot_curves` are what the chapter reads and draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import scipy.stats
import tensorflow as tf
from numpy.typing import ArrayLike, NDArray

from dropout_lib import twins
from dropout_lib.book.datasets import N_CLASSES, N_IMAGES, N_PIXELS, DigitsSplit, digits_split
from dropout_lib.conversion import converted_weights, dropout_consumers
from dropout_lib.layers import StandardDropout
from dropout_lib.mapping import clone_optimizer, mapped_multi_optimizer

__all__ = [
    "statistic_sensitivity",
    "WAYS",
    "Config",
    "HeldOutCurve",
    "Run",
    "SeedResult",
    "Experiment",
    "PairedComparison",
    "keras_float64",
    "digits_mlp",
    "without_dropout",
    "cross_entropy",
    "fit_full_batch",
    "FourWays",
    "run_experiment",
    "sign_test_p",
    "paired_comparison",
    "sign_test_threshold",
    "setting_numbers",
    "same_model_gaps",
    "top2_margin",
    "plot_curves",
    "PILOT_SEEDS",
    "Pilot",
    "pilot",
]

#: The four ways, in the book's order.
WAYS: tuple[str, ...] = ("inverted", "mapped", "same", "none")


# ------------------------------------------------------------- setting


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class Config:
    """The setting of the experiment, fixed before it is run.

    Attributes
    ----------
    n_train
        Training images per seed (the other digits are held out).
    widths
        Hidden layer widths; the net is ``64 - widths - 10``, ReLU.
    rates
        Keras's dropout ``rate`` (DROP probability, ``1 - p``) of the input
        and of each hidden layer's output: ``len(widths) + 1`` numbers in
        ``(0, 1)``. Each dropout is consumed by the next ``Dense`` kernel.
    learning_rate, epsilon
        ``keras.optimizers.Adam`` hyperparameters of the inverted net.
    epochs
        Full-batch steps (one step sees every training image once).
    eval_every
        Record the held-out loss every this many steps (and before the first).
    """

    n_train: int = 300
    widths: tuple[int, ...] = (128, 128)
    rates: tuple[float, ...] = (0.2, 0.5, 0.5)
    learning_rate: float = 2.0**-8
    epsilon: float = 1e-7
    epochs: int = 300
    eval_every: int = 20

    def __post_init__(self) -> None:
        _positive_int("n_train", self.n_train)
        for w in self.widths:
            _positive_int("each width", w)
        if len(self.rates) != len(self.widths) + 1:
            raise ValueError(
                f"rates needs {len(self.widths) + 1} entries (input, then each of the "
                f"{len(self.widths)} hidden layers); got {self.rates!r}."
            )
        for r in self.rates:
            if not (isinstance(r, (int, float)) and 0.0 < r < 1.0):
                raise ValueError(
                    f"each rate must be in (0, 1); got {r!r} in rates={self.rates!r}. "
                    "rate is Keras's DROP probability, 1 - keep_prob."
                )
        for name in ("learning_rate", "epsilon"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number; got {v!r}.")
        _positive_int("epochs", self.epochs)
        _positive_int("eval_every", self.eval_every)
        if self.epochs % self.eval_every:
            raise ValueError(
                f"epochs ({self.epochs}) must be a multiple of eval_every "
                f"({self.eval_every}) so that the last step is recorded."
            )

    @property
    def keep_probs(self) -> tuple[float, ...]:
        """The paper's ``p = 1 - rate`` of each dropout."""
        return tuple(1.0 - r for r in self.rates)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Layer sizes, inputs to logits: ``(64, *widths, 10)``."""
        return (N_PIXELS, *self.widths, N_CLASSES)


# The package's one float64 context (floatx and the global dtype policy).
keras_float64 = twins.keras_float64


def digits_mlp(config: Config, seed: int) -> keras.Sequential:
    """The inverted-dropout MLP: ``Dropout(rate_0), Dense, ReLU, Dropout(rate_1), ..., Dense(10)``.

    Kernels ``GlorotUniform`` (Keras's default) and dropout layers seeded from
    ``seed``; biases zero. The logits are the output (train with
    ``from_logits=True``). Layer names are fixed (``drop0``, ``dense0``, ...),
    so models built in any order have the same variable paths.
    """
    seed = _seed(seed)
    layers: list[keras.layers.Layer] = [keras.Input((N_PIXELS,))]
    sizes = config.sizes
    for k, rate in enumerate(config.rates):
        layers.append(keras.layers.Dropout(rate, seed=1000 * seed + k, name=f"drop{k}"))
        layers.append(
            keras.layers.Dense(
                sizes[k + 1],
                activation="relu" if k < len(config.widths) else None,
                kernel_initializer=keras.initializers.GlorotUniform(seed=1000 * seed + 100 + k),
                name=f"dense{k}",
            )
        )
    return keras.Sequential(layers, name="digits_mlp")


def without_dropout(model: keras.Model) -> keras.Model:
    """Clone ``model`` with every dropout layer replaced by ``keras.layers.Identity``.

    The weights are copied; the clone computes, in training and at inference,
    what ``model`` computes at inference with inverted dropout.
    """

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, (keras.layers.Dropout, StandardDropout)):
            return keras.layers.Identity(name=layer.name, dtype=layer.dtype_policy)
        return layer.__class__.from_config(layer.get_config())

    out = keras.models.clone_model(model, clone_function=clone)
    out.set_weights(model.get_weights())
    return out


def _seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**20:
        raise ValueError(f"seed must be an integer in [0, 2**20); got {seed!r}.")
    return int(seed)


# ---------------------------------------------------------- measuring


def cross_entropy(logits: ArrayLike, labels: ArrayLike) -> float:
    """Mean softmax cross-entropy ``mean_i (logsumexp(z_i) - z_i[y_i])``, in float64.

    The same quantity as ``keras.losses.SparseCategoricalCrossentropy(
    from_logits=True)``; computed stably (the row maximum is subtracted first).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"logits must be (n, classes) and labels (n,); got {z.shape}, {y.shape}.")
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def _logits(model: keras.Model, x: NDArray) -> NDArray[np.float64]:
    # Keras's own inference path (predict's compiled function, training=False):
    # about a fifth of a run's time faster than an eager model(x) call.
    return np.asarray(model.predict_on_batch(x))


class HeldOutCurve(keras.callbacks.Callback):
    """Record loss and accuracy in inference mode every ``every`` training steps.

    Before the first step and after every ``every``-th, runs the model in
    inference mode (``predict_on_batch``: ``training=False``) on the held-out
    and on the training images, and stores the mean cross-entropy of both and
    the held-out accuracy.
    """

    def __init__(self, split: DigitsSplit, every: int) -> None:
        super().__init__()
        self.split = split
        self.every = _positive_int("every", every)
        self._x = np.concatenate([split.x_test, split.x_train])
        self.steps: list[int] = []
        self.train_loss: list[float] = []
        self.test_loss: list[float] = []
        self.test_accuracy: list[float] = []

    def _record(self, step: int) -> None:
        s = self.split
        both = _logits(self.model, self._x)  # one call for both sets: half the overhead
        test, train = both[: s.n_test], both[s.n_test :]
        self.steps.append(step)
        self.train_loss.append(cross_entropy(train, s.y_train))
        self.test_loss.append(cross_entropy(test, s.y_test))
        self.test_accuracy.append(float(np.mean(test.argmax(axis=1) == s.y_test)))

    def on_train_begin(self, logs: object = None) -> None:
        self._record(0)

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        if (batch + 1) % self.every == 0:
            self._record(batch + 1)


@dataclass(frozen=True)
class Run:
    """One net trained on one seed's data.

    Attributes
    ----------
    steps
        Steps (= epochs, full batch) at which the curves were recorded.
    train_loss, test_loss, test_accuracy
        Inference-mode training loss, held-out loss and accuracy at ``steps``.
    weights
        Final weights in ``model.get_weights()`` order.
    test_logits
        Final held-out logits, inference mode.
    """

    steps: NDArray[np.int64]
    train_loss: NDArray[np.float64]
    test_loss: NDArray[np.float64]
    test_accuracy: NDArray[np.float64]
    weights: list[NDArray[np.float64]] = field(repr=False)
    test_logits: NDArray[np.float64] = field(repr=False)


def _compile(model: keras.Model, optimizer: keras.optimizers.Optimizer, every: int) -> None:
    optimizer.build(model.trainable_variables)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=every,
    )


def fit_full_batch(model: keras.Model, split: DigitsSplit, epochs: int, eval_every: int) -> Run:
    """``fit`` a compiled ``model`` for ``epochs`` full-batch steps; record the curves.

    ONE ``fit`` epoch runs over a ``tf.data`` dataset that repeats the whole
    training set, as a single batch, ``epochs`` times: every step is a
    full-batch step, as ``epochs`` epochs of ``batch_size = n_train`` would
    be, without Keras's per-epoch overhead (about 50 ms an epoch here,
    several steps' worth). ``eval_every`` must be a multiple of the model's
    ``steps_per_execution`` (Keras calls the callbacks once per execution).
    Needs Keras's TensorFlow backend (the dataset is a ``tf.data.Dataset``).
    """
    epochs = _positive_int("epochs", epochs)
    curve = HeldOutCurve(split, eval_every)
    batches = tf.data.Dataset.from_tensors((split.x_train, split.y_train)).repeat(epochs)
    model.fit(batches, epochs=1, shuffle=False, verbose=0, callbacks=[curve])
    if curve.steps[-1] != epochs:
        raise RuntimeError(
            f"the last curve point is at step {curve.steps[-1]}, not {epochs}: is "
            "eval_every a multiple of the model's steps_per_execution?"
        )
    return Run(
        steps=np.asarray(curve.steps),
        train_loss=np.asarray(curve.train_loss),
        test_loss=np.asarray(curve.test_loss),
        test_accuracy=np.asarray(curve.test_accuracy),
        weights=model.get_weights(),
        test_logits=_logits(model, split.x_test),
    )


def _relative_gap(a: Sequence[NDArray], b: Sequence[NDArray]) -> float:
    """``max_k ||a_k - b_k|| / ||b_k||`` over weight tensors."""
    return max(twins.relative_difference(x, y) for x, y in zip(a, b))


@dataclass(frozen=True)
class SeedResult:
    """The four runs of one seed and how far ``mapped`` and ``same`` are from ``inverted``.

    Attributes
    ----------
    seed
        The seed.
    runs
        ``{way: Run}`` for the ways in :data:`WAYS`.
    weight_gap
        For ``mapped`` and ``same``: the final weights mapped into the
        inverted net's coordinates (``p W`` on the consuming kernels), and
        ``max_k ||W_k - W_k^inv|| / ||W_k^inv||`` over the weight tensors.
    logit_gap
        For ``mapped`` and ``same``: ``||Z - Z^inv|| / ||Z^inv||`` of the final
        held-out logits (inference mode).
    same_class
        For ``mapped`` and ``same``: fraction of held-out images given the
        same predicted class as by ``inverted``.
    """

    seed: int
    runs: Mapping[str, Run]
    weight_gap: Mapping[str, float]
    logit_gap: Mapping[str, float]
    same_class: Mapping[str, float]


class FourWays:
    """The four nets of the module table, compiled once and trained seed after seed.

    Building and compiling a Keras model costs about a second here (tracing
    the train step), as much as training it; so the four nets are built and
    compiled once, and :meth:`reset` puts them, before each seed's ``fit``,
    in exactly the state freshly built nets would have: the seed's initial
    weights (``W / p`` on the consuming kernels of ``mapped``), its dropout
    generators' states (shared by the three dropout nets) and every
    optimizer variable's initial value (Adam's step count and moments zero).

    Parameters
    ----------
    config
        The setting; its ``rates`` are Keras's drop probabilities ``1 - p``.

    Attributes
    ----------
    models, optimizers
        ``{way: keras.Model}`` and ``{way: optimizer}``, built in float64.
    consumers
        ``(layer name, p)`` of every kernel that consumes dropped units.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        with keras_float64():
            inverted = digits_mlp(config, 0)
            self.models: dict[str, keras.Model] = {
                "inverted": inverted,
                "mapped": twins.mapped_twin(inverted, "standard"),  # W / p, shared masks
                "same": twins.twin(inverted, "standard"),  # same weights and masks
                "none": without_dropout(inverted),
            }
            adam = keras.optimizers.Adam(config.learning_rate, epsilon=config.epsilon)
            self.optimizers: dict[str, keras.optimizers.Optimizer] = {
                "inverted": clone_optimizer(adam),
                "mapped": mapped_multi_optimizer(self.models["mapped"], adam, "to_standard"),
                "same": clone_optimizer(adam),
                "none": clone_optimizer(adam),
            }
            for way in WAYS:
                _compile(self.models[way], self.optimizers[way], config.eval_every)
        self._initial_state = {
            way: [np.array(v.numpy()) for v in opt.variables] for way, opt in self.optimizers.items()
        }
        self.consumers = tuple((c.layer.name, c.keep_prob) for c in dropout_consumers(inverted))

    def reset(self, seed: int) -> None:
        """Give every net the state freshly built nets for ``seed`` would have."""
        with keras_float64():
            fresh = digits_mlp(self.config, _seed(seed))
        weights = fresh.get_weights()
        self.models["inverted"].set_weights(weights)
        self.models["mapped"].set_weights(converted_weights(fresh, "to_standard"))
        self.models["same"].set_weights(weights)
        self.models["none"].set_weights(weights)
        for way in ("inverted", "mapped", "same"):
            twins.share_masks(fresh, self.models[way])
        for way, opt in self.optimizers.items():
            for v, value in zip(opt.variables, self._initial_state[way]):
                v.assign(value)

    def run(self, seed: int) -> SeedResult:
        """Train the four nets on ``seed``'s split from ``seed``'s initial state."""
        split = digits_split(self.config.n_train, _seed(seed))
        self.reset(seed)
        c = self.config
        with keras_float64():
            runs = {way: fit_full_batch(self.models[way], split, c.epochs, c.eval_every) for way in WAYS}
        ref = runs["inverted"]
        weight_gap, logit_gap, same_class = {}, {}, {}
        for way in ("mapped", "same"):
            back = converted_weights(self.models[way], "to_inverted")  # p W on the consumers
            weight_gap[way] = _relative_gap(back, ref.weights)
            logit_gap[way] = twins.relative_difference(runs[way].test_logits, ref.test_logits)
            same_class[way] = float(
                np.mean(runs[way].test_logits.argmax(axis=1) == ref.test_logits.argmax(axis=1))
            )
        return SeedResult(int(seed), runs, weight_gap, logit_gap, same_class)


@dataclass(frozen=True)
class Experiment:
    """Every seed's :class:`SeedResult`, with the arrays the chapter reports.

    Arrays are indexed ``[seed, way]`` (ways in :data:`WAYS` order), curves
    ``[seed, way, point]``. ``consumers`` holds ``(layer name, p)`` of every
    kernel that consumes dropped units (``p`` the keep probability).
    """

    config: Config
    consumers: tuple[tuple[str, float], ...]
    results: tuple[SeedResult, ...]

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r.seed for r in self.results)

    @property
    def steps(self) -> NDArray[np.int64]:
        """Steps at which the curves were recorded (same for every run)."""
        return self.results[0].runs["inverted"].steps

    def curve(self, what: str) -> NDArray[np.float64]:
        """``'train_loss'``, ``'test_loss'`` or ``'test_accuracy'``, shape ``(seeds, 4, points)``."""
        if what not in ("train_loss", "test_loss", "test_accuracy"):
            raise ValueError(f"what must be 'train_loss', 'test_loss' or 'test_accuracy'; got {what!r}.")
        return np.array([[getattr(r.runs[w], what) for w in WAYS] for r in self.results])

    def final(self, what: str) -> NDArray[np.float64]:
        """The value after the last step, shape ``(seeds, 4)``."""
        return self.curve(what)[:, :, -1]

    def gap(self, kind: str, way: str) -> NDArray[np.float64]:
        """Per seed: ``'weight_gap'``, ``'logit_gap'`` or ``'same_class'`` of ``way``."""
        if kind not in ("weight_gap", "logit_gap", "same_class"):
            raise ValueError(f"kind must be 'weight_gap', 'logit_gap' or 'same_class'; got {kind!r}.")
        if way not in ("mapped", "same"):
            raise ValueError(f"way must be 'mapped' or 'same'; got {way!r}.")
        return np.array([getattr(r, kind)[way] for r in self.results])


def run_experiment(config: Config, seeds: Sequence[int]) -> Experiment:
    """Train the four ways on each seed (distinct), in order, with one :class:`FourWays`."""
    seeds = [_seed(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers; got {seeds!r}.")
    trainer = FourWays(config)
    return Experiment(config, trainer.consumers, tuple(trainer.run(s) for s in seeds))


# -------------------------------------------------------- statistics


def sign_test_p(n_positive: int, n: int) -> float:
    """One-sided exact sign test: ``P(X >= n_positive)`` for ``X ~ Binomial(n, 1/2)``.

    Under the null hypothesis that each of ``n`` independent paired
    differences is positive or negative with probability 1/2 (a median of
    0; ties dropped beforehand), this is the probability of at least
    ``n_positive`` positive ones: ``sum_{k >= n_positive} C(n, k) / 2**n``.
    """
    for name, v in (("n_positive", n_positive), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer; got {v!r}.")
    if n_positive > n:
        raise ValueError(f"n_positive ({n_positive}) cannot exceed n ({n}).")
    return sum(math.comb(int(n), k) for k in range(int(n_positive), int(n) + 1)) / 2.0 ** int(n)


@dataclass(frozen=True)
class PairedComparison:
    """Seed-by-seed differences ``baseline - treatment`` (positive: the treatment is lower).

    Attributes
    ----------
    differences
        One per seed.
    mean, standard_error
        Their mean and its standard error ``s / sqrt(n)`` (``s`` with ``n - 1``).
    t
        ``mean / standard_error``; Student's t with ``n - 1`` degrees of
        freedom if the differences are normal with mean 0.
    n_positive, n_nonzero
        Positive differences, and differences that are not exactly 0.
    sign_p
        :func:`sign_test_p` ``(n_positive, n_nonzero)``: the exact one-sided
        P-value of "the treatment is lower" against a median difference of 0
        (two-sided with ``alternative="two-sided"``).
    t_p
        P-value of the paired t-test of the same alternative
        (``scipy.stats.ttest_rel(baseline, treatment, alternative=...)``):
        exact if the differences are normal, unlike the sign test.
    ci95
        Two-sided 95% confidence interval ``mean -/+ t_{0.975, n-1} * standard_error``
        for the mean difference (the paired t-test's, same assumption).
    """

    differences: NDArray[np.float64]
    mean: float
    standard_error: float
    t: float
    n_positive: int
    n_nonzero: int
    sign_p: float
    t_p: float
    ci95: tuple[float, float]


def paired_comparison(
    baseline: ArrayLike, treatment: ArrayLike, alternative: str = "greater"
) -> PairedComparison:
    """Compare two ways seed by seed: ``d_s = baseline_s - treatment_s``.

    ``alternative="greater"`` (the default) tests "the treatment is lower"
    (one-sided P-values); ``"two-sided"`` tests "they differ", with the
    sign test's P-value from ``scipy.stats.binomtest``.

    The seeds are independent replicates (each draws its own training set,
    initial weights and masks), and within a seed both ways share them, so
    the differences are independent draws of the paired effect. Reports
    their mean with its standard error, the exact sign test, which assumes
    nothing about their distribution, and the paired t-test with its 95%
    confidence interval, which assumes the differences are normal.
    """
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(treatment, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(
            f"baseline and treatment must be 1-D, of equal length >= 2 (one value per "
            f"seed); got shapes {a.shape} and {b.shape}."
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("baseline and treatment must be finite.")
    if alternative not in ("greater", "two-sided"):
        raise ValueError(f"alternative must be 'greater' or 'two-sided'; got {alternative!r}.")
    d = a - b
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    t = mean / se if se > 0 else math.copysign(math.inf, mean) if mean else 0.0
    n_pos, n_nonzero = int(np.sum(d > 0)), int(np.sum(d != 0))
    if se > 0:
        t_p = float(scipy.stats.ttest_rel(a, b, alternative=alternative).pvalue)
        ci = scipy.stats.ttest_rel(a, b).confidence_interval(0.95)
        ci95 = (float(ci.low), float(ci.high))
    else:  # every difference equal: the t statistic is 0 or infinite
        t_p = (0.5 if mean == 0 else float(mean < 0)) if alternative == "greater" else float(mean == 0)
        ci95 = (mean, mean)
    if alternative == "greater":
        sign_p = sign_test_p(n_pos, n_nonzero)
    else:
        sign_p = float(scipy.stats.binomtest(n_pos, n_nonzero).pvalue) if n_nonzero else 1.0
    return PairedComparison(d, mean, se, t, n_pos, n_nonzero, sign_p, t_p, ci95)


def statistic_sensitivity(
    baseline: ArrayLike, treatment: ArrayLike, eps: float, alternative: str = "greater"
) -> dict[str, float]:
    """How far :func:`paired_comparison`'s statistics move when each difference moves by ``eps``.

    For each statistic (``mean``, ``standard_error``, ``t``, ``t_p``, ``lo``
    and ``hi``, the ends of ``ci95``), the worst case to first order,
    ``sum_s |stat(d + eps e_s) - stat(d)|``, relative to ``|stat(d)|``
    (``inf`` where the statistic is 0). With ``eps`` the largest change of a
    difference between correct runs, this is the relative noise a chapter may
    state for these statistics (to first order: ``eps`` small against the
    differences' spread).
    """
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(treatment, dtype=np.float64)

    def stats(x: NDArray) -> NDArray:
        c = paired_comparison(x, b, alternative)
        return np.array([c.mean, c.standard_error, c.t, c.t_p, c.ci95[0], c.ci95[1]])

    base = stats(a)
    moved = np.zeros_like(base)
    for s in range(len(a)):
        step = a.copy()
        step[s] += eps
        moved += np.abs(stats(step) - base)
    with np.errstate(divide="ignore"):
        rel = np.where(base != 0, moved / np.abs(base), np.inf)
    return dict(zip(("mean", "standard_error", "t", "t_p", "lo", "hi"), map(float, rel)))


# ------------------------------------------------------- what the chapter reads


def setting_numbers(config: Config, seeds: Sequence[int]) -> dict[str, object]:
    """The setting's numbers as the chapter glues them (all exact: typed or counted).

    ``p_*`` are the paper's keep probabilities, ``rate_*`` Keras's drop
    probabilities ``1 - p``, of the input and of the (first) hidden dropout.
    """
    sizes = config.sizes
    return {
        "n_images": N_IMAGES,
        "n_train": config.n_train,
        "n_test": N_IMAGES - config.n_train,
        "n_params": sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:])),  # kernels, biases
        "net_shape": "-".join(map(str, sizes)),
        "p_in": config.keep_probs[0],
        "rate_in": config.rates[0],
        "p_hidden": config.keep_probs[1],
        "rate_hidden": config.rates[1],
        "lr": config.learning_rate,
        "eps": config.epsilon,
        "epochs": config.epochs,
        "eval_every": config.eval_every,
        "n_seeds": len(seeds),
        "seed_first": min(seeds),
        "seed_last": max(seeds),
    }


def same_model_gaps(experiment: Experiment) -> dict[str, float]:
    """How far the mapped net is from Keras's, at worst over the seeds.

    ``weight``: largest relative gap of a final weight tensor mapped back
    (``p W`` on the consuming kernels); ``logit``: relative gap of the final
    held-out logits; ``curve``: largest relative gap of any recorded point of
    the held-out and training loss curves. All are 0 in exact arithmetic
    (the chapter's corollary "Same model from model.fit").
    """
    inv, mapped = WAYS.index("inverted"), WAYS.index("mapped")
    curves = [experiment.curve(k) for k in ("test_loss", "train_loss")]
    return {
        "weight": float(experiment.gap("weight_gap", "mapped").max()),
        "logit": float(experiment.gap("logit_gap", "mapped").max()),
        "curve": float(max(np.max(np.abs(c[:, mapped] - c[:, inv]) / c[:, inv]) for c in curves)),
    }


def top2_margin(experiment: Experiment) -> float:
    """Smallest gap between a held-out image's two largest final logits, relative to its largest.

    Over every image, way and seed. If it exceeds the relative difference
    between two correct runs on different machines, every predicted class,
    and so every accuracy, is the same on every machine.
    """
    z = np.sort(np.array([[r.runs[w].test_logits for w in WAYS] for r in experiment.results]))
    return float(np.min((z[..., -1] - z[..., -2]) / np.abs(z).max(axis=-1)))


#: How the chapter's figure draws each way.
_STYLES = {
    "inverted": ("inverted (Keras)", "inverted", "-"),
    "mapped": ("mapped (paper's)", "mapped", "--"),
    "same": ("same hyperparameters (paper's)", "standard", "-"),
    "none": ("no dropout", "control", "-"),
}


def plot_curves(experiment: Experiment, ylim: tuple[float, float] = (0.0, 0.6)):
    """Mean held-out and training loss curves, each way, with a band of one standard deviation.

    Returns the figure (left: held-out cross-entropy on a linear axis
    limited to ``ylim``; right: training cross-entropy, log scale).
    """
    from dropout_lib.book.plotting import COLORS, figure

    fig, axes = figure(ncols=2, width=7.2, height=3.0)
    for ax, key in zip(axes, ("test_loss", "train_loss")):
        c = experiment.curve(key)
        for i, (way, (label, color, style)) in enumerate(_STYLES.items()):
            mean, sd = c[:, i].mean(axis=0), c[:, i].std(axis=0, ddof=1)
            ax.plot(experiment.steps, mean, color=COLORS[color], linestyle=style, label=label)
            if way != "mapped":  # the mapped band is the inverted band
                ax.fill_between(experiment.steps, mean - sd, mean + sd, color=COLORS[color], alpha=0.15, lw=0)
        ax.set_xlabel("step (full batch: one epoch)")
    axes[0].set(ylabel="held-out cross-entropy", ylim=ylim)
    axes[1].set(ylabel="training cross-entropy", yscale="log")
    axes[0].legend(fontsize=8)
    return fig


# -------------------------------------------------------------------- pilot

#: The seeds of the pilot runs; the chapter's seeds are distinct from them.
PILOT_SEEDS: tuple[int, ...] = (1000, 1001, 1002)


@dataclass(frozen=True)
class Pilot:
    """The pilot that chose the chapter's learning rate: Keras's dropout net at several rates.

    Attributes
    ----------
    config
        The setting; its ``learning_rate`` is replaced by each of ``learning_rates``.
    learning_rates, seeds
        What was run (the seeds are :data:`PILOT_SEEDS` unless given).
    final_loss
        Held-out cross-entropy of the inverted net (Keras's dropout) after
        ``config.epochs`` steps, inference mode, shape ``(learning rates, seeds)``:
        the same number :func:`run_experiment` records as the last point of
        its ``test_loss`` curve for the ``inverted`` way.
    """

    config: Config
    learning_rates: tuple[float, ...]
    seeds: tuple[int, ...]
    final_loss: NDArray[np.float64]

    def mean_final(self) -> NDArray[np.float64]:
        """Mean over the pilot seeds of :attr:`final_loss`, one per learning rate."""
        return self.final_loss.mean(axis=1)

    @property
    def chosen(self) -> float:
        """The rule: the rate at which Keras's dropout net ends with the lowest mean held-out loss.

        Chosen for the inverted net (Keras's dropout) only. The net without
        dropout and the drop-in swap (the paper's dropout with the same
        hyperparameters) then train at that rate, tuned for another net: the
        rule favours Keras's net over both.
        """
        return self.learning_rates[int(np.argmin(self.mean_final()))]


def pilot(config: Config, learning_rates: Sequence[float], seeds: Sequence[int] = PILOT_SEEDS) -> Pilot:
    """Rerun the pilot that chose the chapter's learning rate: Keras's net at each rate, on ``seeds``.

    For each learning rate and seed, trains the inverted net (Keras's
    dropout) as :func:`run_experiment` trains it (the seed's split, initial
    weights and masks, ``Adam(learning_rate, config.epsilon)``, ``model.fit``
    full batch for ``config.epochs`` steps) and records its final held-out
    loss; :attr:`Pilot.chosen` applies the rule. One net is compiled once and
    reset before each run (weights, mask generators, Adam's variables, then
    the learning rate), and evaluated only before and after training, so
    the pilot costs about a quarter of ``len(learning_rates) * len(seeds)``
    seeds of the chapter.
    """
    rates = tuple(float(lr) for lr in learning_rates)
    if not rates:
        raise ValueError("learning_rates must name at least one learning rate.")
    for lr in rates:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"each learning rate must be a positive number; got {lr!r}.")
    seeds = tuple(_seed(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers; got {seeds!r}.")
    with keras_float64():
        model = digits_mlp(config, seeds[0])
        adam = keras.optimizers.Adam(config.learning_rate, epsilon=config.epsilon)
        _compile(model, adam, config.epochs)  # one execution per run
    initial = [np.array(v.numpy()) for v in adam.variables]
    final = np.empty((len(rates), len(seeds)))
    for j, seed in enumerate(seeds):
        split = digits_split(config.n_train, seed)
        with keras_float64():
            fresh = digits_mlp(config, seed)
        for i, lr in enumerate(rates):
            model.set_weights(fresh.get_weights())
            twins.share_masks(fresh, model)  # fresh's generators have not drawn
            for v, value in zip(adam.variables, initial):
                v.assign(value)
            adam.learning_rate = lr
            with keras_float64():
                run = fit_full_batch(model, split, config.epochs, config.epochs)
            final[i, j] = run.test_loss[-1]
    return Pilot(config, rates, seeds, final)


def sign_test_threshold(n: int, level: float) -> int:
    """Fewest positive differences out of ``n`` for which the one-sided sign test rejects at ``level``.

    The smallest ``k`` with :func:`sign_test_p` ``(k, n) <= level``; ``n + 1``
    if even ``n`` of ``n`` does not reach it.
    """
    n = _positive_int("n", n)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level!r}.")
    return next((k for k in range(n + 1) if sign_test_p(k, n) <= level), n + 1)
