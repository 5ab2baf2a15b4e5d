"""The recipe's tables, computed by the library's own maps (so the page cannot drift from them).

Notation: ``p`` is the paper's keep probability; Keras's ``rate`` is ``1 - p``.

Two directions:

* ``'to_inverted'``: paper -> Keras. A recipe tuned for the paper's dropout
  (keep probability ``p``, test-time scaling) run with Keras's
  ``Dropout(rate=1 - p)`` as the same training algorithm;
* ``'to_standard'``: Keras -> paper, the reverse.

Every entry is obtained by calling the library on real objects: the Keras
optimizers mapped by :func:`dropout_lib.mapping.map_optimizer` (their
attributes read back), :func:`dropout_lib.conversion.map_l2`, ``map_l1``,
``map_max_norm``, ``map_initializer``, :func:`dropout_lib.mapping.kernel_scale`;
the rows without a map record the exception the library raises.
The factor's symbol (``p``, ``p^2``, ...) is read off the computed values,
``log(mapped / value) / log(p)``, and must be the same integer at every ``p``.

``python -m dropout_lib.recipe`` prints the tables that ``recipe.md`` holds;
``tests/test_recipe.py`` asserts that the page holds exactly these.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KEEP_PROBS",
    "Row",
    "rows",
    "table_markdown",
    "other_table_markdown",
    "intro_table_markdown",
    "torch_table_markdown",
    "MNIST_RECIPE",
    "mnist_port",
    "mnist_port_markdown",
    "rescaling_bound",
    "page_values",
    "paper_dropout",
]

# p = 0.8 first: Keras's rate 0.2 tells the two variants' factors apart (at 0.5,
# p = 1 - p hides which one a factor uses); 0.5 is the paper's hidden-unit choice.
KEEP_PROBS: tuple[float, ...] = (0.8, 0.5)
_CONSUMING = "consuming kernels"
# The maps of chapter 6 that go through lem-one-step (penalties, max-norm, clipping).
_SGD_ADAM_ONLY = "proved with SGD (momentum, Nesterov) and Adam, not here with RMSprop or Adagrad"


@dataclass(frozen=True)
class Row:
    """One line of the recipe: what to multiply, on which weights, with worked values.

    ``power`` is the exponent ``j`` of the factor ``p**j`` (``None`` where no
    map exists); ``mapped`` holds the mapped example value per keep
    probability (``None`` where no map exists).
    """

    what: str
    where: str
    example: float | None
    power: int | None
    mapped: tuple[float | None, ...]
    note: str = ""


def _lr(opt: Any) -> float:
    return (
        float(opt.learning_rate.numpy()) if hasattr(opt.learning_rate, "numpy") else float(opt.learning_rate)
    )


def _specs() -> list[tuple[str, str, float | None, Callable[[float, float, str], Any], str]]:
    """(what, where, example value, value -> mapped value at (p, direction), note)."""
    import keras

    from dropout_lib import conversion, mapping

    O = keras.optimizers
    adagrad0 = float(O.Adagrad().initial_accumulator_value)

    def opt_attr(make: Callable[[float], Any], read: Callable[[Any], float]):
        return lambda v, p, d: read(mapping.map_optimizer(make(v), p, d))

    # map_initializer returns the source's kind with its scale mapped (or, for
    # a kind it does not know, a ScaledInitializer with its factor).
    def init(v, p, d):
        mapped = conversion.map_initializer(keras.initializers.RandomNormal(stddev=v, seed=1), p, d)
        return mapped.factor * v if hasattr(mapped, "factor") else mapped.stddev

    def variance_scaling(v, p, d):
        mapped = conversion.map_initializer(keras.initializers.VarianceScaling(scale=v, seed=1), p, d)
        return mapped.factor**2 * v if hasattr(mapped, "factor") else mapped.scale

    def unchanged(v, p, d):
        seen = [float(o.momentum) for o in (mapping.map_optimizer(O.SGD(0.1, momentum=v), p, d),)]
        adam = mapping.map_optimizer(O.Adam(1e-3, beta_1=v, beta_2=v), p, d)
        rms = mapping.map_optimizer(O.RMSprop(1e-3, rho=v, momentum=v), p, d)
        seen += [float(adam.beta_1), float(adam.beta_2), float(rms.rho), float(rms.momentum)]
        if len(set(seen)) != 1:
            raise AssertionError(f"a scale-free hyperparameter changed: {seen}")
        return seen[0]

    def global_clip(v, p, d):
        mapping.map_optimizer(O.SGD(0.1, global_clipnorm=v), p, d)  # raises

    def layernorm(v, p, d):
        from dropout_lib.theory import variance_shift

        return variance_shift.equivalent_layernorm_epsilon(
            p, v, to="inverted" if d == "to_inverted" else "standard"
        )

    def first(initializer):  # the value a constant initialiser fills a variable with
        return float(keras.ops.convert_to_numpy(keras.initializers.get(initializer)((1,)))[0])

    @functools.lru_cache(maxsize=8)
    def batchnorm_port(p, d):
        """A BatchNormalization reading a dropout, then a Dense, converted by convert_model.

        Returns the source and target BatchNormalization layers; the Dense after
        them must keep its kernel (the normalisation absorbs the factor, so no
        consuming kernel is scaled).
        """
        import numpy as np

        from dropout_lib.layers import StandardDropout
        from dropout_lib.twins import convert_model

        drop = StandardDropout(1 - p, seed=1) if d == "to_inverted" else keras.layers.Dropout(1 - p, seed=1)
        source = keras.layers.BatchNormalization(epsilon=1e-3, name="bn")
        model = keras.Sequential([keras.Input((4,)), drop, source, keras.layers.Dense(2, name="after")])
        source.moving_mean.assign(np.ones(4))  # a trained model's moving mean (the default is 0)
        ported = convert_model(model, to="inverted" if d == "to_inverted" else "standard")
        after = [keras.ops.convert_to_numpy(m.get_layer("after").kernel) for m in (model, ported.model)]
        if [c.layer.name for c in ported.consumers] != ["bn"] or not np.array_equal(*after):
            raise AssertionError("convert_model scaled another layer than the BatchNormalization")
        return source, ported.model.get_layer("bn")

    def bn_epsilon(v, p, d):
        source, target = batchnorm_port(p, d)
        if source.epsilon != v:
            raise AssertionError(f"the source's epsilon is {source.epsilon}, not {v}")
        return target.epsilon

    def bn_moving_variance(v, p, d):
        source, target = batchnorm_port(p, d)
        import numpy as np

        start = first(source.moving_variance_initializer)
        mapped = first(target.moving_variance_initializer)
        variable = keras.ops.convert_to_numpy(target.moving_variance)
        if start != v or not np.all(variable == mapped):
            raise AssertionError(f"moving variance {variable}, initialiser {mapped}, source {start}")
        return mapped

    def bn_moving_mean(v, p, d):
        source, target = batchnorm_port(p, d)
        import numpy as np

        start = keras.ops.convert_to_numpy(source.moving_mean)
        if not np.all(start == v) or first(source.moving_mean_initializer) != 0:
            raise AssertionError(f"the source's moving mean is {start}, not {v}")
        (mapped,) = set(keras.ops.convert_to_numpy(target.moving_mean).tolist())
        return mapped

    def shared(v, p, d):
        inp = keras.Input((4,))
        dense = keras.layers.Dense(3)
        dropped = keras.layers.Dropout(1 - p)(inp)
        out = keras.layers.Add()([dense(dropped), dense(inp)])
        conversion.dropout_consumers(keras.Model(inp, out))  # raises

    return [
        (
            "weights (same function, train and test)",
            _CONSUMING,
            1.0,
            lambda v, p, d: mapping.kernel_scale(p, d) * v,
            "biases keep their values",
        ),
        (
            "initialiser scale: `stddev`, uniform `limit`",
            _CONSUMING,
            0.05,
            init,
            "`dropout_lib.conversion.map_initializer` scales any initialiser's draws",
        ),
        (
            "`VarianceScaling(scale)` (He: 2)",
            _CONSUMING,
            2.0,
            variance_scaling,
            "the variance scales by the square of the draws' factor",
        ),
        (
            "SGD `learning_rate` (momentum, Nesterov)",
            _CONSUMING,
            0.1,
            opt_attr(lambda v: O.SGD(v, momentum=0.9, nesterov=True), _lr),
            "",
        ),
        (
            "SGD `weight_decay` (Keras: decoupled)",
            _CONSUMING,
            5e-4,
            opt_attr(lambda v: O.SGD(0.1, weight_decay=v), lambda o: float(o.weight_decay)),
            "",
        ),
        ("Adam, AdamW `learning_rate`", _CONSUMING, 1e-3, opt_attr(lambda v: O.Adam(v), _lr), ""),
        (
            "Adam, AdamW `epsilon` (outside the root)",
            _CONSUMING,
            1e-7,
            opt_attr(lambda v: O.Adam(1e-3, epsilon=v), lambda o: float(o.epsilon)),
            "",
        ),
        (
            "Adam, AdamW `weight_decay` (decoupled)",
            _CONSUMING,
            4e-3,
            opt_attr(lambda v: O.AdamW(1e-3, weight_decay=v), lambda o: float(o.weight_decay)),
            "",
        ),
        ("RMSprop `learning_rate`", _CONSUMING, 1e-3, opt_attr(lambda v: O.RMSprop(v), _lr), ""),
        (
            "RMSprop `epsilon` (inside the root)",
            _CONSUMING,
            1e-7,
            opt_attr(lambda v: O.RMSprop(1e-3, epsilon=v), lambda o: float(o.epsilon)),
            "",
        ),
        ("Adagrad `learning_rate`", _CONSUMING, 1e-3, opt_attr(lambda v: O.Adagrad(v), _lr), ""),
        (
            "Adagrad `epsilon` (inside the root)",
            _CONSUMING,
            1e-7,
            opt_attr(lambda v: O.Adagrad(1e-3, epsilon=v), lambda o: float(o.epsilon)),
            "",
        ),
        (
            f"Adagrad `initial_accumulator_value` (Keras default {_fmt(adagrad0)})",
            _CONSUMING,
            adagrad0,
            opt_attr(
                lambda v: O.Adagrad(1e-3, initial_accumulator_value=v),
                lambda o: float(o.initial_accumulator_value),
            ),
            f"map Keras's default {_fmt(adagrad0)} too",
        ),
        ("L2 penalty `L2(l2)`", _CONSUMING, 1e-4, conversion.map_l2, _SGD_ADAM_ONLY),
        ("L1 penalty `L1(l1)`", _CONSUMING, 1e-5, conversion.map_l1, _SGD_ADAM_ONLY),
        (
            "max-norm radius $c$",
            _CONSUMING,
            3.0,
            conversion.map_max_norm,
            "with `dropout_lib.conversion.EquivariantMaxNorm`; Keras's `MaxNorm` is refused "
            "(its built-in epsilon does not scale); " + _SGD_ADAM_ONLY,
        ),
        (
            "`clipnorm` (per tensor)",
            _CONSUMING,
            1.0,
            opt_attr(lambda v: O.SGD(0.1, clipnorm=v), lambda o: float(o.clipnorm)),
            _SGD_ADAM_ONLY,
        ),
        (
            "`clipvalue` (per entry)",
            _CONSUMING,
            0.5,
            opt_attr(lambda v: O.SGD(0.1, clipvalue=v), lambda o: float(o.clipvalue)),
            _SGD_ADAM_ONLY,
        ),
        (
            "`momentum`, `beta_1`, `beta_2`, `rho`",
            "all",
            0.9,
            unchanged,
            "unchanged, as are every bias and every kernel not behind a dropout",
        ),
        (
            "`global_clipnorm`",
            "all",
            1.0,
            global_clip,
            "no consumer-side map (proved with SGD, {prf:ref}`prop-global-clip`; "
            "`NoExactMapError`), unless every clipped parameter is a consuming kernel "
            "behind one keep probability: then $c \\to c/p$ paper $\\to$ Keras, $c \\to c\\,p$ "
            "back, with SGD and Adam ({prf:ref}`cor-global-clip-uniform`); "
            "`clipnorm` instead trains a different model; "
            "the `Rescaling` pair below keeps the paper's recipe",
        ),
        (
            "`LayerNormalization(epsilon)` reading the dropped units (directly or through "
            "bias-free `Dense`, ReLU)",
            "that LayerNormalization",
            1e-3,
            layernorm,
            "and nothing else: not the kernels, not the optimizer "
            "({prf:ref}`prop-layernorm-map`); instead of the consumer-side map, "
            "and `convert_model` applies it where the layer reads the dropout directly "
            "(behind a `Dense` it maps that kernel instead)",
        ),
        (
            "`BatchNormalization(epsilon)` reading the dropped units (directly or through a "
            "bias-free `Dense`)",
            "that BatchNormalization",
            1e-3,
            bn_epsilon,
            "instead of the consumer-side map ({prf:ref}`thm-bn-same-network`): the layers "
            "after it, a `Dense` too, keep their kernels, and the optimizer is unchanged; "
            "`convert_model` applies it, with the two rows below, where the layer reads the "
            "dropout directly (behind a `Dense` it maps that kernel instead)",
        ),
        (
            "its moving variance and `moving_variance_initializer` (Keras default "
            f"{_fmt(first(keras.layers.BatchNormalization().moving_variance_initializer))})",
            "that BatchNormalization",
            1.0,
            bn_moving_variance,
            "else the test outputs agree only once the initial value has decayed "
            "({prf:ref}`thm-bn-same-network`)",
        ),
        (
            "its moving mean (of a trained model; the default initial zeros stay zeros)",
            "that BatchNormalization",
            1.0,
            bn_moving_mean,
            "as a linear recursion of the batch means, which scale with the input",
        ),
        (
            "a kernel shared by a dropped and an undropped input",
            "that kernel",
            None,
            shared,
            "no map ({prf:ref}`thm-shared-no-map`; `NotConvertibleError`); "
            "the `Rescaling` pair below keeps the paper's recipe",
        ),
    ]


def _power(example: float, mapped: Sequence[float], keep_probs: Sequence[float]) -> int:
    powers = [math.log(m / example) / math.log(p) for m, p in zip(mapped, keep_probs)]
    j = round(powers[0])
    # float32 learning-rate variables and float32 casts leave ~1e-7 relative: far below 0.5.
    if not all(abs(x - j) < 1e-5 for x in powers):
        raise AssertionError(f"the mapped values {mapped} are not example * p**j for one j: {powers}")
    return j


def rows(direction: str, keep_probs: Sequence[float] = KEEP_PROBS) -> list[Row]:
    """The recipe's rows for ``direction`` (``'to_inverted'``: paper -> Keras)."""
    from dropout_lib.mapping import check_direction

    check_direction(direction)
    return list(_rows(direction, tuple(float(p) for p in keep_probs)))


@functools.lru_cache(maxsize=8)
def _rows(direction: str, keep_probs: tuple[float, ...]) -> tuple[Row, ...]:
    from dropout_lib.conversion import NotConvertibleError
    from dropout_lib.mapping import NoExactMapError

    out = []
    for what, where, example, fn, note in _specs():
        try:
            mapped = tuple(float(fn(example, p, direction)) for p in keep_probs)
        except (NoExactMapError, NotConvertibleError):
            out.append(Row(what, where, example, None, (None,) * len(keep_probs), note))
            continue
        out.append(Row(what, where, example, _power(example, mapped, keep_probs), mapped, note))
    return tuple(out)


def _fmt(v: float | None) -> str:
    if v is None:
        return "none"
    text = f"{v:.5g}"
    if "e" in text:
        mant, exp = text.split("e")
        text = f"{mant}e{int(exp)}"
    return text


def _factor(j: int | None) -> str:
    if j is None:
        return "**no map**"
    if j == 0:
        return "1 (unchanged)"
    base = "p" if abs(j) == 1 else f"p^{abs(j)}"
    return f"${base}$" if j > 0 else f"$1/{base}$"


def table_markdown(direction: str, keep_probs: Sequence[float] = KEEP_PROBS) -> str:
    """The recipe table for ``direction`` as MyST markdown (what ``recipe.md`` holds).

    The rows that map (all on the consuming kernels): the hyperparameter, the
    factor, the source value and the mapped value at each keep probability;
    then their notes, as a list below the table, so the table fits a page
    (the rows that keep their value or have no map are
    :func:`other_table_markdown`'s).
    """
    src, dst = ("paper", "Keras") if direction == "to_inverted" else ("Keras", "paper")
    head = (
        f"| hyperparameter | times | {src} | " + " | ".join(f"{dst}, $p = {p:g}$" for p in keep_probs) + " |"
    )
    lines = [head, "| --- | --- | --- |" + " --- |" * len(keep_probs)]
    notes = []
    for r in rows(direction, keep_probs):
        if r.where != _CONSUMING or r.power is None:
            continue
        cells = [r.what, _factor(r.power), _fmt(r.example), *(_fmt(m) for m in r.mapped)]
        lines.append("| " + " | ".join(cells) + " |")
        if r.note:
            notes.append(f"* {r.what.split(' (')[0].split(':')[0]}: {r.note}.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


# The rows the first page shows (prefixes of Row.what), in this order.
INTRO_ROWS = (
    "weights",
    "SGD `learning_rate`",
    "Adam, AdamW `learning_rate`",
    "Adam, AdamW `epsilon`",
    "L2 penalty",
)


def intro_table_markdown(keep_prob: float = KEEP_PROBS[0]) -> str:
    """The first page's short table: both directions with worked numbers at one ``p``.

    Paper -> Keras first (the direction a reader porting the paper's recipe
    needs), each cell ``factor: source value -> mapped value``, from :func:`rows`.
    """
    by_dir = {d: {r.what: r for r in rows(d, (keep_prob,))} for d in ("to_inverted", "to_standard")}
    lines = [
        f"| on the consuming kernels, $p = {keep_prob:g}$ | paper $\\to$ Keras | Keras $\\to$ paper |",
        "| --- | --- | --- |",
    ]
    for prefix in INTRO_ROWS:
        (what,) = [w for w in by_dir["to_inverted"] if w.startswith(prefix)]
        cells = []
        for d in ("to_inverted", "to_standard"):
            r = by_dir[d][what]
            cells.append(f"× {_factor(r.power)}: {_fmt(r.example)} $\\to$ {_fmt(r.mapped[0])}")
        lines.append(f"| {what} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def other_table_markdown(keep_probs: Sequence[float] = KEEP_PROBS) -> str:
    """The rows that keep their value, map on another layer, or have no consumer-side map."""
    lines = ["| hyperparameter | either direction |", "| --- | --- |"]
    for a, b in zip(rows("to_inverted", keep_probs), rows("to_standard", keep_probs)):
        if a.where == _CONSUMING and a.power is not None:
            continue
        if a.power not in (None, 0) and b.power == -a.power:  # a map on another layer
            lines.append(
                f"| {a.what} | × {_factor(a.power)} paper $\\to$ Keras, × {_factor(b.power)} back, {a.note} |"
            )
            continue
        if (a.power, b.power) not in ((None, None), (0, 0)):
            raise AssertionError(f"{a.what}: p^{a.power} one way, p^{b.power} the other")
        lines.append(f"| {a.what} | {a.note} |")
    return "\n".join(lines)


# The paper's MNIST networks keep input units with p = 0.8 and hidden units with
# p = 0.5 (Srivastava et al. 2014, section 6.1.1); the optimizer and penalty are
# ours, not the paper's: a plain recipe of that kind: SGD with momentum and an L2 penalty on the kernels.
MNIST_RECIPE: dict[str, Any] = {
    "widths": (784, 1024, 1024, 10),
    "keep_probs": (0.8, 0.5, 0.5),  # the input's, then each hidden layer's
    "learning_rate": 0.1,
    "momentum": 0.9,
    "l2": 1e-4,  # keras.regularizers.L2(1e-4) on every kernel: 1e-4 * sum(W**2)
}


@dataclass(frozen=True)
class PortedLayer:
    """One layer of :func:`mnist_port`: what Keras's twin of the paper's net uses there."""

    name: str
    keep_prob: float | None  # p of the dropout it reads; None for the biases' row
    kernel_scale: float
    learning_rate: float
    momentum: float
    l2: float | None


def mnist_port(recipe: dict[str, Any] | None = None) -> list[PortedLayer]:
    """Port a recipe in the paper's style (its MNIST keep probabilities) with ``convert_model``.

    Builds the paper's net (``StandardDropout`` on the input and after each
    hidden ``Dense``, an ``L2`` penalty on every kernel), converts it with its
    ``SGD`` optimizer, and reads back, per consuming layer, the keep
    probability the graph walk found, the factor of its kernel, the learning
    rate and momentum of the optimizer that ``MultiOptimizer`` assigns to that
    kernel, and its mapped ``L2`` factor; a last row gives what the biases get.
    Nothing is typed: every value is the converted model's or optimizer's.
    """
    return list(_mnist_port(tuple(sorted({**MNIST_RECIPE, **(recipe or {})}.items()))))


@functools.lru_cache(maxsize=4)
def _mnist_port(items: tuple[tuple[str, Any], ...]) -> tuple[PortedLayer, ...]:
    import keras
    import numpy as np

    from dropout_lib.layers import StandardDropout
    from dropout_lib.twins import convert_model

    r = dict(items)
    widths, keeps = r["widths"], r["keep_probs"]
    layers: list[Any] = [keras.Input((widths[0],))]
    for k, (width, p) in enumerate(zip(widths[1:], keeps), start=1):
        last = k == len(widths) - 1
        layers += [
            StandardDropout(1.0 - p, seed=k),
            keras.layers.Dense(
                width,
                activation=None if last else "relu",
                kernel_regularizer=keras.regularizers.L2(r["l2"]),
                name="output" if last else f"hidden_{k}",
            ),
        ]
    paper = keras.Sequential(layers)
    sgd = keras.optimizers.SGD(learning_rate=r["learning_rate"], momentum=r["momentum"])
    ported = convert_model(paper, to="inverted", optimizer=sgd)
    source = {layer.name: layer for layer in paper.layers}

    def opt_of(variable: Any) -> Any:  # the MultiOptimizer's optimizer for a variable
        return ported.optimizer._optimizer_map(variable)

    out = []
    for c in ported.consumers:
        kernel = c.layer.kernel
        scale = float(
            np.linalg.norm(keras.ops.convert_to_numpy(kernel))
            / np.linalg.norm(keras.ops.convert_to_numpy(source[c.layer.name].kernel))
        )
        opt = opt_of(kernel)
        out.append(
            PortedLayer(
                c.layer.name,
                round(float(c.keep_prob), 12),
                scale,
                _lr(opt),
                float(opt.momentum),
                float(c.layer.kernel_regularizer.get_config()["l2"]),
            )
        )
    biases = [opt_of(layer.bias) for layer in ported.model.layers if getattr(layer, "bias", None) is not None]
    bias_opt = biases[0]
    if any(o is not bias_opt for o in biases):
        raise AssertionError("the biases got different optimizers")
    out.append(PortedLayer("every bias", None, 1.0, _lr(bias_opt), float(bias_opt.momentum), None))
    return tuple(out)


def mnist_port_markdown(recipe: dict[str, Any] | None = None) -> str:
    """:func:`mnist_port` as the table ``recipe.md`` holds.

    The kernel factor is rounded to 6 digits (it is ``p`` up to float32 rounding
    of the weights); rates and L2 factors, float32 in Keras, to 5 significant digits.
    """
    lines = [
        "| layer | reads | kernel times | `learning_rate` | `L2` |",
        "| --- | --- | --- | --- | --- |",
    ]
    for layer in mnist_port(recipe):
        reads = "—" if layer.keep_prob is None else f"$p = {layer.keep_prob:g}$"
        l2 = "none" if layer.l2 is None else _fmt(layer.l2)
        scale, lr = f"{round(layer.kernel_scale, 6):g}", _fmt(layer.learning_rate)
        lines.append(f"| {layer.name} | {reads} | {scale} | {lr} | {l2} |")
    return "\n".join(lines)


# PyTorch: (argument, torch.optim class, key, example keyword arguments, Keras row it corresponds to)
_TORCH = [
    (
        "`SGD(lr)` (momentum, dampening, Nesterov)",
        "SGD",
        "lr",
        {"lr": 0.1, "momentum": 0.9},
        "SGD `learning_rate` (momentum, Nesterov)",
    ),
    (
        "`SGD(weight_decay)` (coupled: L2 in the gradient)",
        "SGD",
        "weight_decay",
        {"lr": 0.1, "weight_decay": 5e-4},
        "SGD `weight_decay` (Keras: decoupled)",
    ),
    ("`Adam(lr)`, `AdamW(lr)`", "Adam", "lr", {"lr": 1e-3}, "Adam, AdamW `learning_rate`"),
    (
        "`Adam(eps)`, `AdamW(eps)` (outside the root)",
        "Adam",
        "eps",
        {"eps": 1e-8},
        "Adam, AdamW `epsilon` (outside the root)",
    ),
    (
        "`Adam(weight_decay)` (coupled)",
        "Adam",
        "weight_decay",
        {"weight_decay": 1e-4},
        "Adam, AdamW `weight_decay` (decoupled)",
    ),
    (
        "`AdamW(weight_decay)` (decoupled, default {adamw_weight_decay})",
        "AdamW",
        "weight_decay",
        {},
        "Adam, AdamW `weight_decay` (decoupled)",
    ),
    ("`RMSprop(lr)`", "RMSprop", "lr", {"lr": 1e-2}, "RMSprop `learning_rate`"),
    (
        "`RMSprop(eps)` (outside the root)",
        "RMSprop",
        "eps",
        {"eps": 1e-8},
        "RMSprop `epsilon` (inside the root)",
    ),
    ("`Adagrad(lr)` (`lr_decay` unchanged)", "Adagrad", "lr", {"lr": 1e-2}, "Adagrad `learning_rate`"),
    (
        "`Adagrad(eps)` (outside the root)",
        "Adagrad",
        "eps",
        {"eps": 1e-10},
        "Adagrad `epsilon` (inside the root)",
    ),
    (
        "`Adagrad(initial_accumulator_value)` (set by `build_adagrad`)",
        "Adagrad",
        "initial_accumulator_value",
        {"initial_accumulator_value": 0.1},
        "Adagrad `initial_accumulator_value`",
    ),
    (
        "`RMSprop`, `Adagrad` `weight_decay` (coupled)",
        "RMSprop",
        "weight_decay",
        {"weight_decay": 1e-4},
        None,
    ),
]


def torch_table_markdown(keep_probs: Sequence[float] = KEEP_PROBS) -> str:
    """The PyTorch maps (:func:`dropout_lib.pytorch.map_param_group`) beside Keras's.

    Each factor is read off the mapped values, as in :func:`rows`; the Keras
    column comes from :func:`rows` (``'to_inverted'``).
    """
    from dropout_lib import pytorch

    keras_rows = rows("to_inverted", keep_probs)
    adamw_weight_decay = _fmt(pytorch.DEFAULTS["AdamW"]["weight_decay"])
    head = (
        "| PyTorch argument (consuming kernels' parameter group) | paper $\\to$ PyTorch "
        "| PyTorch $\\to$ paper | Keras's map, paper $\\to$ Keras |"
    )
    lines = [head, "| --- | --- | --- | --- |"]
    for label, opt, key, hp, keras_row in _TORCH:
        powers = []
        for d in ("to_inverted", "to_standard"):
            value = {**pytorch.DEFAULTS[opt], **hp}[key]
            mapped = [pytorch.map_param_group(opt, hp, p, d)[key] for p in keep_probs]
            powers.append(_power(value, mapped, keep_probs))
        if keras_row:
            (power,) = [r.power for r in keras_rows if r.what.startswith(keras_row)]
        keras = _factor(power) if keras_row else "(Keras: decoupled)"
        label = label.format(adamw_weight_decay=adamw_weight_decay)
        lines.append(f"| {label} | {_factor(powers[0])} | {_factor(powers[1])} | {keras} |")
    return "\n".join(lines)


def rescaling_bound(dtype: str) -> float:
    """Relative bound on ``Rescaling(1 - rate)(Dropout(rate)(x)) - x`` for a kept unit.

    float64: ``a = fl(1/q)``, then ``fl(fl(x a) q)``: three roundings,
    ``gamma_3 = 3u/(1 - 3u)`` with ``u = 2**-53``. float32: TensorFlow computes
    ``1/q`` in float64 and rounds it to float32 (two roundings), ``q`` itself
    is rounded to float32 (one), and the two products (two): five roundings of
    at most ``u = 2**-24`` each, ``gamma_5``.
    """
    k, u = {"float64": (3, 2.0**-53), "float32": (5, 2.0**-24)}[dtype]
    return k * u / (1 - k * u)


def _torch_tolerances() -> Any:
    """``tests_pytorch/tolerances.py`` of the book's checkout (a module without torch)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tests_pytorch" / "tolerances.py"
    spec = importlib.util.spec_from_file_location("torch_tolerances", path)
    if spec is None or spec.loader is None or not path.exists():
        raise FileNotFoundError(f"{path}: the torch checks' tolerances live in the book's checkout")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def page_values() -> dict[str, str]:
    """The small numbers ``recipe.md`` states in its prose, computed (not typed).

    The page marks each as ``<!-- value: NAME -->TEXT<!-- end value -->`` and
    ``tests/test_recipe.py`` asserts that ``TEXT`` is this dict's ``NAME``:

    * ``keras_version``: the Keras the book runs (``keras.__version__``);
    * ``gamma3``, ``gamma5``: :func:`rescaling_bound` in float64 and float32;
    * ``f32_08``, ``f32_08_rel``: ``float32(0.8)`` as ``Rescaling(0.8)``
      multiplies by it in a float64 model, and its relative error;
    * ``keras_adagrad0``, ``torch_adagrad0``: the frameworks' default initial
      accumulators; ``torch_adamw_wd``: ``torch.optim.AdamW``'s default decay
      (``dropout_lib.pytorch.DEFAULTS``);
    * ``torch_steps``, ``torch_tol``, ``torch_gap``: the torch checks' steps,
      tolerance ``30 T u`` and controls' gap (``tests_pytorch/tolerances.py``).
    """
    import keras
    import numpy as np

    from dropout_lib import pytorch

    f32 = float(np.float32(0.8))
    tol = _torch_tolerances()
    if tol.MAP_TOL != 30 * tol.STEPS * 2.0**-53:
        raise AssertionError("the torch tolerance is no longer 30 T u")
    return {
        "keras_version": keras.__version__,
        "gamma3": f"{rescaling_bound('float64'):.2e}",
        "gamma5": f"{rescaling_bound('float32'):.2e}",
        "f32_08": f"{f32:.15f}",
        "f32_08_rel": _fmt(float(f"{f32 / 0.8 - 1:.1e}")),
        "keras_adagrad0": _fmt(float(keras.optimizers.Adagrad().initial_accumulator_value)),
        "torch_adagrad0": _fmt(pytorch.DEFAULTS["Adagrad"]["initial_accumulator_value"]),
        "torch_adamw_wd": _fmt(pytorch.DEFAULTS["AdamW"]["weight_decay"]),
        "torch_steps": str(tol.STEPS),
        "torch_tol": _fmt(float(f"{tol.MAP_TOL:.0e}")),
        "torch_gap": _fmt(tol.CONTROL_GAP),
    }


def paper_dropout(rate: float, seed: int | None = None) -> list[Any]:
    """``[keras.layers.Dropout(rate, seed), keras.layers.Rescaling(1 - rate)]``: the paper's dropout.

    ``rate`` is Keras's drop probability (the paper's ``p = 1 - rate``). In
    training the pair gives ``m * x`` up to rounding (:func:`rescaling_bound`),
    at test time ``(1 - rate) * x``, exactly the paper's, so the paper's
    hyperparameters apply unchanged.

    The scale is passed as ``numpy.float64``: ``Rescaling`` casts a Python
    float through float32 (in a float64 model ``Rescaling(0.8)`` multiplies
    by ``0.800000011920929``), a ``numpy.float64`` keeps its value.

    >>> [type(layer).__name__ for layer in paper_dropout(0.2, seed=1)]
    ['Dropout', 'Rescaling']
    """
    import keras
    import numpy as np

    return [keras.layers.Dropout(rate, seed=seed), keras.layers.Rescaling(np.float64(1.0 - rate))]


if __name__ == "__main__":  # pragma: no cover
    for d in ("to_inverted", "to_standard"):
        print(f"<!-- recipe-table: {d} -->")
        print(table_markdown(d))
        print("<!-- end recipe-table -->\n")
    print("<!-- recipe-table: other -->")
    print(other_table_markdown())
    print("<!-- end recipe-table -->\n")
    print("<!-- recipe-table: intro -->")
    print(intro_table_markdown())
    print("<!-- end recipe-table -->\n")
    print("<!-- recipe-table: mnist -->")
    print(mnist_port_markdown())
    print("<!-- end recipe-table -->\n")
    print("<!-- recipe-table: pytorch -->")
    print(torch_table_markdown())
    print("<!-- end recipe-table -->\n")
    for name, text in page_values().items():
        print(f"<!-- value: {name} -->{text}<!-- end value -->")
