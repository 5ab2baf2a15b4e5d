"""Chapter 5's Keras check: a small `Dropout` net, its mapped twin, both trained by ``model.fit``.

:func:`inverted_net` builds a Keras ``Sequential`` net with ``keras.layers.Dropout``
(inverted dropout; ``rate = 1 - keep_prob``) between a ReLU layer and a linear
output layer, seeded so that every call gives the same weights and masks.
:func:`twin_gaps` trains it and its standard-dropout twin
(:func:`dropout_lib.twins.mapped_twin`: ``StandardDropout`` with the same masks,
consuming kernel ``W / p``) full batch with ``model.fit``, the twin with the mapped
optimizer (:func:`dropout_lib.mapping.mapped_multi_optimizer`), and returns the
relative gap after every step with the twin mapped back (``W -> p W``);
:func:`twin_runs` does so for several optimizers and float types, with an
optional negative control that shares one of the runs' inverted fit.

Layers compute ``z = d(h) W + b`` (Keras ``Dense`` kernels, shape ``(n_in, n_out)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "fit_snapshots",
    "inverted_net",
    "regularised_net",
    "sgd_forms_against_keras",
    "twin_gaps",
    "twin_runs",
]


def inverted_net(keep_prob: float, dtype: str, widths: tuple[int, int, int] = (6, 16, 3)):
    """``Input(n_in) -> Dense(n_hidden, relu) -> Dropout(rate=1-keep_prob) -> Dense(n_out)``, seeded."""
    import keras

    n_in, n_hidden, n_out = widths
    init = keras.initializers
    return keras.Sequential(
        [
            keras.Input((n_in,), dtype=dtype),
            keras.layers.Dense(
                n_hidden,
                "relu",
                dtype=dtype,
                kernel_initializer=init.HeNormal(1),
                bias_initializer=init.RandomNormal(stddev=0.1, seed=2),
            ),
            keras.layers.Dropout(1 - keep_prob, seed=3, dtype=dtype),  # Keras rate = 1 - p
            keras.layers.Dense(
                n_out,
                dtype=dtype,
                kernel_initializer=init.HeNormal(4),
                bias_initializer=init.RandomNormal(stddev=0.1, seed=5),
            ),
        ]
    )


def twin_gaps(
    make_optimizer: Callable[[], object],
    keep_prob: float,
    x: NDArray,
    y: NDArray,
    *,
    dtype: str,
    steps: int,
    control: bool = False,
) -> tuple[NDArray[np.float64], float] | tuple[NDArray[np.float64], float, NDArray[np.float64]]:
    """Fit the inverted net and its standard twin; return ``(gaps, moved)``.

    ``gaps[t]`` is the relative gap after step ``t`` (``t = 0`` the start) between
    the inverted net and its twin mapped back; ``moved`` is how far the inverted
    net's consuming kernel moved, relative to its start. With ``control=True``
    a second twin with the same start and masks is fitted with an unmapped copy
    of the optimizer (a negative control), against the same fit of the
    inverted net, and ``(gaps, moved, control_gaps)`` is returned. Sets
    Keras's float type and dtype policy to ``dtype`` and leaves them so; mean
    squared error, full batch, one step per epoch.
    """
    import keras

    from dropout_lib import mapping, twins
    from dropout_lib.book.keras_trajectories import fit_trajectory, trajectory_gaps

    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    inverted = inverted_net(keep_prob, dtype, (x.shape[1], 16, y.shape[1]))
    # every twin is built before the inverted net trains: it copies the masks' generator state
    standard = twins.mapped_twin(inverted, "standard")
    unmapped = twins.mapped_twin(inverted, "standard") if control else None
    optimizer = make_optimizer()
    twin_optimizer = mapping.mapped_multi_optimizer(standard, optimizer, "to_standard")
    control_optimizer = mapping.clone_optimizer(optimizer) if control else None
    x, y = x.astype(dtype), y.astype(dtype)
    reference = fit_trajectory(inverted, optimizer, x, y, steps=steps)
    other = fit_trajectory(standard, twin_optimizer, x, y, steps=steps)
    moved = twins.relative_difference(reference[-1][2], reference[0][2])  # consuming kernel
    gaps = trajectory_gaps(reference, other, standard, "to_inverted")
    if unmapped is None:
        return gaps, float(moved)
    control_run = fit_trajectory(unmapped, control_optimizer, x, y, steps=steps)
    return gaps, float(moved), trajectory_gaps(reference, control_run, unmapped, "to_inverted")


def twin_runs(
    optimizers: Mapping[str, Callable[[], object]],
    keep_prob: float,
    x: NDArray,
    y: NDArray,
    *,
    dtypes: Sequence[str],
    steps: int,
    control: str | None = None,
) -> dict[tuple[str, str], tuple[NDArray[np.float64], float]]:
    """:func:`twin_gaps` for every dtype and optimizer; return ``{(name, dtype): (gaps, moved)}``.

    In that order: ``dtypes`` outer, ``optimizers`` (``{name: factory}``)
    inner. With ``control`` an optimizer's name, the run of that optimizer in
    the first dtype also fits the unmapped twin (``control=True``), against
    the same fit of the inverted net; its gaps come last, under
    ``(control, "control")``, with the inverted net's ``moved``. Leaves
    Keras's float type and dtype policy at the last dtype.
    """
    runs: dict[tuple[str, str], tuple[NDArray[np.float64], float]] = {}
    unmapped = None
    for dtype in dtypes:
        for name, make in optimizers.items():
            with_control = name == control and dtype == dtypes[0]
            gaps, moved, *rest = twin_gaps(
                make, keep_prob, x, y, dtype=dtype, steps=steps, control=with_control
            )
            runs[name, dtype] = gaps, moved
            if with_control:
                unmapped = rest[0], moved
    if control is not None:
        if unmapped is None:
            raise ValueError(f"control {control!r} is not one of the optimizers {list(optimizers)}.")
        runs[control, "control"] = unmapped
    return runs


def sgd_forms_against_keras(
    steps: int = 10, lr: float = 2**-3, momentum: float = 0.9, seed: int = 1
) -> dict[str, float]:
    """Run Keras's ``SGD(nesterov=True)`` and three numpy SGD forms on one quadratic, float64.

    The loss is ``0.5 ||w - target||^2`` (so the gradient depends on where it is
    taken) with ``w0`` and ``target`` standard normal of shape ``(3, 4)``. Keras
    applies ``w - target`` as the gradient at its iterate; the numpy forms of
    :class:`dropout_lib.exact.optimizers.SGD` ("keras": Nesterov in Keras's form,
    "paper": Sutskever's, "heavy-ball": no Nesterov) take theirs at their own
    :meth:`eval_point`. Returns ``{form: max |w_numpy - w_keras| / max |w_keras|}``
    after ``steps`` steps. ``momentum`` enters the numpy forms through float32, as
    Keras casts it; ``lr`` should be exact in float32 (Keras's learning-rate
    variable has the default float type).
    """
    import keras

    from dropout_lib.exact.optimizers import SGD

    mu = float(np.float32(momentum))
    w0, target = np.random.default_rng(seed).normal(size=(2, 3, 4))
    variable = keras.Variable(w0, dtype="float64")
    keras_sgd = keras.optimizers.SGD(lr, momentum=momentum, nesterov=True)
    forms = {
        "keras": SGD(lr, momentum=mu, nesterov=True),
        "heavy-ball": SGD(lr, momentum=mu),
        "paper": SGD(lr, momentum=mu, nesterov=True, form="paper"),
    }
    paths = {form: {"w": w0.copy()} for form in forms}
    for _ in range(steps):
        keras_sgd.apply_gradients([(variable - target, variable)])
        for form, opt in forms.items():
            opt.step(paths[form], {"w": opt.eval_point(paths[form])["w"] - target})
    w = np.asarray(variable.numpy())
    return {form: float(np.abs(p["w"] - w).max() / np.abs(w).max()) for form, p in paths.items()}


def regularised_net(
    variant: str,
    sizes,
    keep_probs,
    init_1,
    init_3,
    regularizer,
    constraint,
    seeds: tuple[int, int, int, int] = (1, 11, 2, 3),
):
    """Chapter 6's Keras net: the toy net's shape, a penalty on ``W1``, a constraint on ``W3``.

    ``Input(n0) -> Dropout(rate = 1 - p1) -> Dense(n1, relu; init_1, regularizer) ->
    Dense(n2, relu; He) -> Dropout(rate = 1 - p3) -> Dense(n3; init_3, constraint)``,
    with ``keras.layers.Dropout`` for ``variant="inverted"`` and
    :class:`dropout_lib.layers.StandardDropout` (the paper's) for ``"standard"``;
    the same dropout seeds in both, hence the same masks. ``sizes`` and
    ``keep_probs`` are those of :class:`dropout_lib.book.toy.Toy` (``keep_probs[1]``
    must be 1: no dropout before the second hidden layer).
    """
    import keras

    from dropout_lib.layers import StandardDropout

    if keep_probs[1] != 1.0:
        raise ValueError(f"keep_probs[1] must be 1 (no dropout before W2); got {keep_probs[1]}.")
    drop = keras.layers.Dropout if variant == "inverted" else StandardDropout
    L, init = keras.layers, keras.initializers
    s_drop1, s_bias, s_he, s_drop3 = seeds
    return keras.Sequential(
        [
            keras.Input((sizes[0],)),
            drop(1 - keep_probs[0], seed=s_drop1),
            L.Dense(
                sizes[1],
                "relu",
                kernel_initializer=init_1,
                kernel_regularizer=regularizer,
                bias_initializer=init.RandomNormal(stddev=0.1, seed=s_bias),
            ),
            L.Dense(sizes[2], "relu", kernel_initializer=init.HeNormal(seed=s_he)),
            drop(1 - keep_probs[2], seed=s_drop3),
            L.Dense(sizes[3], kernel_initializer=init_3, kernel_constraint=constraint),
        ]
    )


def fit_snapshots(model, optimizer, x: NDArray, y: NDArray, *, batch: int, every: int) -> list:
    """Train one epoch with ``model.fit`` (no shuffling, softmax cross-entropy on logits).

    Returns the weights after every ``every`` steps (``steps_per_execution``),
    the start first (:class:`dropout_lib.book.keras_trajectories.WeightRecorder`).
    The optimizer is built before ``fit``, so the train step is traced once
    (:func:`dropout_lib.book.keras_trajectories.build_optimizer`).
    """
    import keras

    from dropout_lib.book.keras_trajectories import WeightRecorder, build_optimizer

    model.compile(
        optimizer=optimizer,
        steps_per_execution=every,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    build_optimizer(model)
    recorder = WeightRecorder()
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[recorder])
    return recorder.snapshots
