"""The toy problem of chapters 4-6: one small net, its data and its masks, set up once.

Chapters 4 (gradients and SGD), 5 (adaptive optimizers) and 6 (regularisers)
train the same float64 numpy net (:mod:`dropout_lib.exact.mlp`) in its two
variants and compare the trajectories. :func:`toy_problem` builds everything
they share, from one seeded stream, in a fixed order:

1. the inverted net's parameters, ``mlp.init_params(sizes, rng, bias_scale=0.1)``
   (He-normal kernels ``W_k`` of shape ``(n_{k-1}, n_k)``, so a layer computes
   ``z = d(h) W + b``, and N(0, 0.1^2) biases);
2. a random linear teacher ``T`` of shape ``(n_0, n_L)``: an input ``x`` has
   the one-hot label ``argmax(x T)``;
3. ``n_batches`` fixed batches of ``batch`` standard-normal inputs;
4. one step's masks for each of ``n_steps`` steps (``mlp.sample_masks``);
5. optionally ``n_test`` held-out examples from the same teacher.

The result is a frozen :class:`Toy`, whose methods run the comparisons the
chapters repeat (:meth:`Toy.compare`, :meth:`Toy.control_gaps`) with the
shared batches, masks, keep probabilities and loss filled in.

Notation: ``keep_probs[k-1]`` is the paper's keep probability ``p_k`` of layer
``k``'s input; Keras's ``rate`` is ``1 - p_k``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dropout_lib.exact import compare, mlp
from dropout_lib.exact.training import train

__all__ = ["Toy", "toy_problem", "SIZES", "KEEP_PROBS"]

#: Inputs, two hidden ReLU layers, logits.
SIZES: tuple[int, ...] = (8, 16, 16, 4)
#: Keep probability of each layer's input: input dropout 0.8, none before the
#: second hidden layer, 0.6 before the output layer (Keras rates 0.2, 0, 0.4).
KEEP_PROBS: tuple[float, ...] = (0.8, 1.0, 0.6)


@dataclass(frozen=True)
class Toy:
    """The shared problem: net sizes, keep probabilities, start, data, masks.

    Attributes
    ----------
    sizes, keep_probs
        Layer widths and keep probabilities (``p_k``, the paper's; Keras's
        ``rate = 1 - p_k``).
    batch, n_batches, n_steps
        Batch size, number of fixed batches (step ``t`` uses batch
        ``t % n_batches``), number of steps with masks.
    params_inv, params_std
        The inverted net's start and its image ``W_k / p_k`` (biases kept).
    teacher
        The linear teacher, shape ``(sizes[0], sizes[-1])``.
    batches
        ``[(x, y), ...]``, ``x`` of shape ``(batch, sizes[0])``, ``y`` one-hot.
    masks
        ``masks[t]`` is step ``t``'s list of masks (``None`` where ``p_k = 1``).
    x_test, y_test
        Held-out examples (empty arrays when ``n_test = 0``).
    loss
        The training loss, softmax cross-entropy.
    seed
        The seed of the stream everything above was drawn from (``toy_problem``'s).
    """

    sizes: tuple[int, ...]
    keep_probs: tuple[float, ...]
    batch: int
    n_batches: int
    n_steps: int
    params_inv: Mapping[str, NDArray] = field(repr=False)
    params_std: Mapping[str, NDArray] = field(repr=False)
    teacher: NDArray = field(repr=False)
    batches: Sequence[tuple[NDArray, NDArray]] = field(repr=False)
    masks: Sequence[list] = field(repr=False)
    x_test: NDArray = field(repr=False)
    y_test: NDArray = field(repr=False)
    loss: str = "softmax_xent"
    seed: int = 2014

    @property
    def consumers(self) -> dict[str, float]:
        """``{'W_k': p_k}`` for the kernels that consume a dropped layer."""
        return mlp.consuming_weights(self.keep_probs)

    @property
    def p1(self) -> float:
        """Keep probability of the input (``W1``'s input)."""
        return self.keep_probs[0]

    @property
    def p3(self) -> float:
        """Keep probability before the output layer (``W3``'s input)."""
        return self.keep_probs[2]

    @property
    def kernels(self) -> list[str]:
        """The names of every kernel, ``['W1', 'W2', 'W3']``."""
        return [n for n in self.params_inv if n.startswith("W")]

    def start_draws(self, scale: Sequence[float]) -> dict[str, NDArray]:
        """The start's own draws with another scale: ``W_k = scale[k-1] * Z_k``, same biases.

        ``params_inv`` is ``mlp.init_params(sizes, default_rng(seed), bias_scale=0.1)``,
        the first draws of the problem's stream, with He's ``sigma_k = sqrt(2 / n_{k-1})``;
        this redraws them from a fresh ``default_rng(self.seed)``, so the standard
        normals ``Z_k`` and the biases are the same and only ``sigma_k`` changes.
        With ``scale = sigma_k / p_k`` the result is ``params_std`` up to a rounding
        of each product (``(sigma/p) Z`` against ``(sigma Z)/p``).

        >>> toy = toy_problem(1, seed=7)
        >>> he = [np.sqrt(2.0 / n) for n in toy.sizes[:-1]]
        >>> all(np.array_equal(v, toy.params_inv[k]) for k, v in toy.start_draws(he).items())
        True
        """
        return mlp.init_params(
            self.sizes, np.random.default_rng(self.seed), bias_scale=0.1, scale=list(scale)
        )

    def kink_margin(self, t: int = 0) -> float:
        """Smallest ``|z|`` of a hidden pre-activation, both nets at their starts, step ``t``.

        Both nets are evaluated in training mode on step ``t``'s batch and
        masks. A central difference with step ``s`` is a derivative of the
        loss only if no ReLU crosses its kink within ``+-s`` of the point; a
        margin far above ``s`` keeps every unit on its side.
        """
        x, _ = self.batches[t % self.n_batches]
        margins = []
        for variant, params in (("inverted", self.params_inv), ("standard", self.params_std)):
            _, cache = mlp.forward(
                params, x, variant=variant, keep_probs=self.keep_probs, masks=self.masks[t], training=True
            )
            margins += [float(np.abs(z).min()) for z in cache["z"][:-1]]
        return min(margins)

    def labels(self, x: NDArray) -> NDArray:
        """One-hot teacher labels ``argmax(x T)`` of inputs ``x``."""
        return np.eye(self.sizes[-1])[np.argmax(x @ self.teacher, axis=1)]

    def per_parameter(self, value: float, power: float) -> dict[str, float]:
        """``value * p_k**power`` on the consuming kernels, ``value`` on every other parameter."""
        return mlp.per_parameter(value, self.params_inv, self.keep_probs, power)

    def loss_and_grads(
        self, variant: str, t: int = 0, params: Mapping[str, NDArray] | None = None
    ) -> tuple[float, dict]:
        """Loss and gradients on step ``t``'s batch and masks (default: the variant's start)."""
        if params is None:
            params = self.params_inv if variant == "inverted" else self.params_std
        x, y = self.batches[t % self.n_batches]
        return mlp.loss_and_grads(
            params, x, y, variant=variant, keep_probs=self.keep_probs, masks=self.masks[t], loss=self.loss
        )

    def _shared(self, steps: int | None) -> dict[str, Any]:
        """The arguments every comparison of this problem shares, as keywords.

        The inverted start ``params_inv``, the shared batches and masks, the keep
        probabilities, ``steps`` (default ``n_steps``) and the loss.
        """
        return dict(
            params_inverted=self.params_inv,
            data_batches=self.batches,
            masks_sequence=self.masks,
            keep_probs=self.keep_probs,
            steps=self.n_steps if steps is None else steps,
            loss=self.loss,
        )

    def compare(
        self, optimizer_inverted, optimizer_standard, *, steps: int | None = None, **kw: Any
    ) -> compare.Comparison:
        """Train both variants from ``params_inv`` and ``params_std`` on the shared batches and masks.

        :func:`dropout_lib.exact.compare.compare_training` with this problem's
        data, masks, keep probabilities and loss; ``steps`` defaults to
        ``n_steps``; ``kw`` passes on (``inverted_kw``, ``standard_kw``,
        ``params_standard``, ...).
        """
        return compare.compare_training(
            **self._shared(steps),
            optimizer_inverted=optimizer_inverted,
            optimizer_standard=optimizer_standard,
            **kw,
        )

    def compare_many(
        self,
        optimizer_inverted,
        optimizers_standard: Mapping[str, Any],
        *,
        steps: int | None = None,
        **kw: Any,
    ) -> dict[str, compare.Comparison]:
        """One inverted run against several standard runs, ``{key: Comparison}``.

        :func:`dropout_lib.exact.adaptive.compare_runs` with this problem's data,
        masks, keep probabilities and loss (the inverted net is trained once).
        """
        from dropout_lib.exact import adaptive

        return adaptive.compare_runs(
            **self._shared(steps),
            optimizer_inverted=optimizer_inverted,
            optimizers_standard=optimizers_standard,
            **kw,
        )

    def mask_stream(self, seed: int, steps: int | None = None) -> list[list]:
        """Masks for ``steps`` steps drawn from another stream (``default_rng(seed)``), same law."""
        rng = np.random.default_rng(seed)
        return [
            mlp.sample_masks(self.sizes, self.keep_probs, self.batch, rng)
            for _ in range(self.n_steps if steps is None else steps)
        ]

    def train(
        self,
        variant: str,
        optimizer,
        *,
        masks: Sequence[list] | None = None,
        steps: int | None = None,
        start: Mapping[str, NDArray] | None = None,
        **train_kw: Any,
    ):
        """Train one net of ``variant`` from its start (``params_inv`` or ``params_std``).

        ``masks`` default to the shared ones; pass :meth:`mask_stream` for
        independent draws. Returns :class:`dropout_lib.exact.training.TrainResult`.
        """
        if start is None:
            start = self.params_inv if variant == "inverted" else self.params_std
        masks = self.masks if masks is None else masks
        return train(
            start,
            self.batches,
            masks,
            variant=variant,
            keep_probs=self.keep_probs,
            steps=len(masks) if steps is None else steps,
            optimizer=optimizer,
            loss=self.loss,
            **train_kw,
        )

    def control_gaps(
        self,
        reference: compare.Comparison,
        optimizer_standard,
        *,
        start: Mapping[str, NDArray] | None = None,
        steps: int | None = None,
        **train_kw: Any,
    ) -> NDArray[np.float64]:
        """Gaps of one more standard run to ``reference``'s inverted run, step by step.

        The standard net starts from ``start`` (default ``params_std``), is
        trained with ``optimizer_standard`` and ``train_kw`` (``l2=...``,
        ``constraints=...``), and after every step its parameters are mapped back
        (``W -> p W``) and compared with the inverted run's: the relative gap of
        :func:`dropout_lib.exact.compare.trajectory_gaps`, entry 0 the start.
        """
        steps = self.n_steps if steps is None else steps
        std = self.train("standard", optimizer_standard, start=start, steps=steps, **train_kw)
        return compare.trajectory_gaps(
            reference.inverted.history[: steps + 1], std.history, reference.to_inverted
        )[0]

    def predict(self, params: Mapping[str, NDArray], variant: str, x: NDArray | None = None) -> NDArray:
        """Test-time logits of a net of either variant (inverted: no scaling; standard: ``p h``)."""
        return mlp.predict(
            params, self.x_test if x is None else x, variant=variant, keep_probs=self.keep_probs
        )

    def disagreement(
        self, params_a: Mapping[str, NDArray], variant_a: str, params_b: Mapping[str, NDArray], variant_b: str
    ) -> float:
        """Share of held-out examples whose predicted class differs between two trained nets."""
        za, zb = self.predict(params_a, variant_a), self.predict(params_b, variant_b)
        return float(np.mean(za.argmax(axis=1) != zb.argmax(axis=1)))

    def glue_setup(self) -> None:
        """Glue the set-up's numbers under the names chapters 4-6 paste (all exact).

        ``net_shape``, ``p1``, ``p3``, ``rate1``, ``rate3`` (Keras's drop
        probabilities, rounded to 12 decimals so that ``1 - 0.8`` reads 0.2),
        ``batch``, ``n_batches``, ``n_steps`` and, with held-out data, ``n_test``.
        """
        from dropout_lib.book.publish import glue_exact_many

        values = {
            "net_shape": "-".join(map(str, self.sizes)),
            "p1": self.p1,
            "p3": self.p3,
            "rate1": round(1 - self.p1, 12),
            "rate3": round(1 - self.p3, 12),
            "batch": self.batch,
            "n_batches": self.n_batches,
            "n_steps": self.n_steps,
        }
        if len(self.x_test):
            values["n_test"] = len(self.x_test)
        glue_exact_many(values)


def toy_problem(
    n_steps: int = 500,
    *,
    n_test: int = 0,
    batch: int = 32,
    n_batches: int = 8,
    seed: int = 2014,
    sizes: Sequence[int] = SIZES,
    keep_probs: Sequence[float] = KEEP_PROBS,
) -> Toy:
    """Build the toy problem of chapters 4-6 from one seeded stream (see the module docstring).

    Parameters
    ----------
    n_steps
        Steps for which masks are drawn. The stream is consumed in a fixed
        order, so the first ``s`` steps' masks do not depend on ``n_steps``;
        the held-out set, drawn last, does.
    n_test
        Held-out examples from the same teacher (0: none).
    batch, n_batches, seed, sizes, keep_probs
        The problem's shape; the defaults are the chapters'.

    >>> toy = toy_problem(3, n_test=5)
    >>> toy.consumers, len(toy.masks), toy.x_test.shape
    ({'W1': 0.8, 'W3': 0.6}, 3, (5, 8))
    """
    sizes, keep_probs = tuple(int(n) for n in sizes), tuple(float(p) for p in keep_probs)
    if n_steps < 0 or n_test < 0:
        raise ValueError(f"n_steps and n_test must be >= 0; got {n_steps} and {n_test}.")
    rng = np.random.default_rng(seed)
    params_inv = mlp.init_params(sizes, rng, bias_scale=0.1)
    teacher = rng.normal(size=(sizes[0], sizes[-1]))

    def labelled(x: NDArray) -> tuple[NDArray, NDArray]:
        return x, np.eye(sizes[-1])[np.argmax(x @ teacher, axis=1)]

    batches = [labelled(x) for x in rng.normal(size=(n_batches, batch, sizes[0]))]
    masks = [mlp.sample_masks(sizes, keep_probs, batch, rng) for _ in range(n_steps)]
    x_test, y_test = labelled(rng.normal(size=(n_test, sizes[0])))
    return Toy(
        sizes=sizes,
        keep_probs=keep_probs,
        batch=batch,
        n_batches=n_batches,
        n_steps=n_steps,
        params_inv=params_inv,
        params_std=mlp.to_standard_params(params_inv, keep_probs),
        teacher=teacher,
        batches=batches,
        masks=masks,
        x_test=x_test,
        y_test=y_test,
        seed=seed,
    )


def adaptive_runs(
    toy: Toy, spec: tuple, controls: Mapping[str, Mapping[str, float]], *, steps=None, eps=None
) -> dict[str, compare.Comparison]:
    """Chapter 5's comparisons: one inverted run against standard runs with powers of ``p``.

    ``spec = (optimizer class, form, lr, eps)`` trains the inverted net with
    ``cls(lr, eps=eps, form=form)`` (``eps`` overrides the spec's); each entry
    ``{key: powers}`` of ``controls`` trains a standard net with
    :func:`dropout_lib.exact.adaptive.standard_optimizer` and those keywords
    (``lr_power``, ``eps_power``, ``accumulator_power``; ``{}`` is the exact map).
    """
    from dropout_lib.exact import adaptive

    cls, form, lr, spec_eps = spec
    eps = spec_eps if eps is None else eps
    standard = {
        key: adaptive.standard_optimizer(
            cls, toy.params_inv, toy.keep_probs, lr=lr, eps=eps, form=form, **powers
        )
        for key, powers in controls.items()
    }
    return toy.compare_many(cls(lr, eps=eps, form=form), standard, steps=steps)


def against_reruns(toy: Toy, spec: tuple, n_reruns: int) -> dict:
    """Chapter 5's noise floor: the unmapped standard run against reruns with other masks.

    ``spec = (optimizer class, form, lr, eps)``. Trains the inverted net with
    ``cls(lr, eps=eps, form=form)`` on the shared masks, the standard net from
    ``params_std`` with the *same* hyperparameters on the same masks (no map),
    and ``n_reruns`` inverted nets on masks from the streams
    ``default_rng(0), ..., default_rng(n_reruns - 1)`` (:meth:`Toy.mask_stream`,
    the same law). Distances are the relative parameter gap of
    :func:`dropout_lib.exact.mlp.relative_difference` (the standard run mapped
    back, ``W -> p W``), disagreements the share of held-out predictions
    (``toy.x_test``) whose class differs.

    Returns ``{"same": gap, "reruns": [gaps], "floor": their mean, "disagree":
    share, "rerun_disagree": [shares], "floor_disagree": their mean}``, all
    against the shared-mask inverted run.
    """
    if n_reruns < 1 or not len(toy.x_test):
        raise ValueError("against_reruns needs n_reruns >= 1 and a held-out set (toy_problem(n_test=...)).")
    cls, form, lr, eps = spec
    same = dict(lr_power=0, eps_power=0, accumulator_power=0)
    run = adaptive_runs(toy, spec, {"same": same})["same"]
    ref = run.inverted.params
    reruns = [
        toy.train("inverted", cls(lr, eps=eps, form=form), masks=toy.mask_stream(s), record=False).params
        for s in range(n_reruns)
    ]
    gaps = [float(mlp.relative_difference(r, ref)) for r in reruns]
    shares = [toy.disagreement(ref, "inverted", r, "inverted") for r in reruns]
    return dict(
        same=float(run.final),
        reruns=gaps,
        floor=float(np.mean(gaps)),
        disagree=toy.disagreement(ref, "inverted", run.standard.params, "standard"),
        rerun_disagree=shares,
        floor_disagree=float(np.mean(shares)),
    )


def unmapped_epsilon(toy: Toy, spec: tuple, *, eps: float, perturb_seed: int = 5) -> dict:
    """Chapter 5's forgotten epsilon: ``lr`` mapped, ``eps`` not, against a random perturbation.

    ``spec = (optimizer class, form, lr, _)``; ``eps`` replaces the spec's. The
    standard net gets ``lr / p_k`` on the consuming kernels but the inverted
    net's ``eps`` (``eps_power=0``). Returned: ``gaps`` (its relative gap to the
    inverted run after each step, entry 0 the start), ``flip`` (the first step
    at which some hidden ReLU unit is on for some example in one run and off in
    the other, :func:`dropout_lib.exact.divergence.first_flip`, or None) and
    ``perturbed``: the final gap of the fully mapped standard run started from
    ``params_std`` with every entry multiplied by ``1 +- gaps[1]`` (random
    signs from ``default_rng(perturb_seed)``), a perturbation of the same
    relative size as the first-step difference.
    """
    from dropout_lib.exact import adaptive, divergence

    cls, form, lr, _ = spec
    run = adaptive_runs(toy, spec, {"eps": dict(eps_power=0)}, eps=eps)["eps"]
    flips = divergence.activation_flips(run, toy.batches, toy.masks, keep_probs=toy.keep_probs)
    signs = np.random.default_rng(perturb_seed)
    start = {
        n: w * (1 + run.gaps[1] * signs.choice([-1, 1], size=w.shape)) for n, w in toy.params_std.items()
    }
    mapped = adaptive.standard_optimizer(cls, toy.params_inv, toy.keep_probs, lr=lr, eps=eps, form=form)
    return dict(
        gaps=run.gaps,
        flip=divergence.first_flip(flips),
        perturbed=float(toy.control_gaps(run, mapped, start=start)[-1]),
    )
