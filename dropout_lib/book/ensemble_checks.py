"""How the ensemble chapter decides: twins, rounding bounds, convergence rates.

The exact sums live in :mod:`dropout_lib.theory.ensemble`; this module holds what the
chapter needs to turn them into checks that can fail:

* :func:`inverted_twin` and :func:`standard_twin`: the reparameterisation
  ``W_inv = p * W_std`` (biases unchanged) of a :class:`~dropout_lib.theory.ensemble.DropoutNet`
  that makes a standard-dropout net (the paper's) and an inverted-dropout net
  (Keras's) define the same sub-networks;
* :func:`enumeration_rounding_bound`: a worst-case bound on the float64
  rounding error of an enumerated NWGM (or AM) against the weight-scaled net,
  so that "equal to machine precision" becomes an assert with a derived tolerance;
* :func:`fit_mc_rate`: the fitted log-log slope of Monte Carlo dropout's error
  against the number of draws ``T``, with a bootstrap standard error over the
  independent runs, and the measured-over-predicted mean squared error with
  its standard error;
* :func:`he_dropout_net` (a random test net) and :func:`deep_ensembles` (one
  such net enumerated under several dropout configurations, with the gaps the
  chapter asserts on);
* :func:`rounding_noise`: the relative difference two correct float64 machines
  can show in an enumerated quantity, for :func:`dropout_lib.book.publish.glue_rounded`.

Notation: ``keep_prob`` / ``p`` is the paper's keep probability; Keras's
``rate`` is ``1 - p``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dropout_lib.book.publish import stable_ceil, stable_floor  # noqa: F401  (the chapters use them from here too)
from dropout_lib.reference import Variant, check_keep_prob, check_variant
from dropout_lib.theory.ensemble import DropoutNet, EnsembleResult, MCErrorCurve, enumerate_ensemble

__all__ = [
    "UNIT_ROUNDOFF",
    "inverted_twin",
    "standard_twin",
    "he_dropout_net",
    "enumeration_rounding_bound",
    "MCRateFit",
    "fit_mc_rate",
    "rounding_noise",
    "stable_floor",
    "stable_ceil",
    "DeepRow",
    "deep_ensembles",
]

#: ``u = 2^-53``, the unit roundoff of float64 (half the machine epsilon ``2^-52``).
UNIT_ROUNDOFF: float = 2.0**-53

#: Roundings a term can see outside the dot products and the two summation
#: stages: the mask probability (a power, a product per dropped layer), the
#: product ``P(m) * z``, the log-sum-exp, the final subtraction, log and exp.
#: Generous on purpose; it is small next to the block sizes.
_EXTRA_ROUNDINGS = 16


# --------------------------------------------------------------------------- #
# The two parameterisations of one ensemble
# --------------------------------------------------------------------------- #


def inverted_twin(net: DropoutNet) -> DropoutNet:
    """Return the inverted-dropout net with the same sub-networks as the standard ``net``.

    Layer ``l`` gets weights ``p_l * W_l`` and keeps its bias ``b_l``. For every
    mask ``m``, ``(m * h / p_l) @ (p_l W_l) + b_l = (m * h) @ W_l + b_l``, and at
    test time ``h @ (p_l W_l) = (p_l h) @ W_l``: the two nets compute the same
    function for every mask and the same test-time function.

    Parameters
    ----------
    net
        The standard (paper's) net: sub-networks ``m * h``, test ``p * h``.

    Returns
    -------
    DropoutNet
        To be evaluated with ``variant="inverted"`` (Keras's): sub-networks
        ``m * h / p``, test ``h``. Same keep probabilities.
    """
    if not isinstance(net, DropoutNet):
        raise TypeError(f"net must be a DropoutNet; got {type(net).__name__}.")
    ws = [p * w for w, p in zip(net.weights, net.keep_probs)]
    return DropoutNet(ws, net.biases, net.keep_probs)


def standard_twin(net: DropoutNet) -> DropoutNet:
    """Return the standard-dropout net with the same sub-networks as the inverted ``net``.

    The inverse of :func:`inverted_twin`: layer ``l`` gets weights ``W_l / p_l``
    and keeps its bias.
    """
    if not isinstance(net, DropoutNet):
        raise TypeError(f"net must be a DropoutNet; got {type(net).__name__}.")
    ws = [w / p for w, p in zip(net.weights, net.keep_probs)]
    return DropoutNet(ws, net.biases, net.keep_probs)


def he_dropout_net(
    widths: Sequence[int],
    keep_probs: Sequence[float],
    rng: np.random.Generator | int | None = None,
    bias_scale: float = 0.1,
) -> DropoutNet:
    """A random ReLU net with He-initialised weights, for experiments and tests.

    ``W_l ~ N(0, 2 / n_l)`` entrywise (He et al.'s scale for ReLU nets) with
    shape ``(n_l, n_{l+1})``, ``b_l ~ N(0, bias_scale^2)``.

    Parameters
    ----------
    widths
        ``(n_0, n_1, ..., n_L)``: input width, hidden widths, number of classes.
    keep_probs
        ``L`` keep probabilities, one per layer, applied to that layer's inputs
        (``1.0``: no dropout there; Keras's ``rate`` is ``1 - p``).
    rng
        A ``numpy.random.Generator``, or an integer seed for a new one.
    bias_scale
        Standard deviation of the biases (non-negative).
    """
    ns = [int(n) for n in widths]
    if len(ns) < 2 or any(n < 1 for n in ns):
        raise ValueError(
            f"widths must list at least two positive layer widths (inputs, ..., classes); got {list(widths)}."
        )
    if len(keep_probs) != len(ns) - 1:
        raise ValueError(
            f"keep_probs needs one entry per layer, {len(ns) - 1} for widths {ns}; got {len(keep_probs)}."
        )
    if not (math.isfinite(bias_scale) and bias_scale >= 0):
        raise ValueError(f"bias_scale must be a finite number >= 0; got {bias_scale!r}.")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    ws = [gen.normal(size=(a, b)) * math.sqrt(2.0 / a) for a, b in zip(ns, ns[1:])]
    bs = [bias_scale * gen.normal(size=b) for b in ns[1:]]
    return DropoutNet(ws, bs, [check_keep_prob(p) for p in keep_probs])


# --------------------------------------------------------------------------- #
# Rounding
# --------------------------------------------------------------------------- #


def enumeration_rounding_bound(
    net: DropoutNet,
    x: ArrayLike,
    chunk: int,
    variant: Variant = "standard",
) -> float:
    """Bound the float64 rounding error of an enumerated ensemble mean.

    For ``enumerate_ensemble(net, x, variant, chunk)``, each computed mean
    (``AM``, ``NWGM``, and the test-time ``WS``) is within a relative error
    ``2 gamma_D M`` of its exact value, to first order in ``u = 2^-53``. Two
    computed means whose exact values agree (``NWGM`` and ``WS`` of one
    softmax layer; a mean of a standard net and of its :func:`inverted_twin`)
    therefore satisfy ``max_c |A_c / A'_c - 1| <= bound`` (and, as
    probabilities are at most 1, ``max_c |A_c - A'_c| <= bound``) with

    .. math::

        \\text{bound} = 4\\,\\gamma_D\\,M, \\qquad
        \\gamma_D = \\frac{D u}{1 - D u}, \\qquad
        D = \\sum_\\ell (n_\\ell + 2) + k + B + 16,

    where

    * ``n_l`` is the input width of layer ``l``: a layer is a dot product of
      ``n_l`` terms plus a bias and a dropout scale, ``n_l + 2`` roundings;
    * ``k = 2^c`` is the block size (``chunk`` rounded down to a power of two,
      at most ``2^n``) and ``B = 2^n / k`` the number of blocks: the sum over
      masks is a dot product within a block (at most ``k`` roundings in any
      order) accumulated over the blocks (``B`` more);
    * 16 covers the rest (mask probabilities, log-sum-exp, log and exp);
    * ``M = max|z| + log C + 1``. ``max|z|`` is the largest entry of the
      magnitude bound ``a_L``: ``a_0 = |x|``, ``a_{l+1} = (s_l a_l) @ |W_l| + |b_l|``
      with ``s_l = 1`` (standard: ``m h`` and ``p h`` are at most ``h``) or
      ``1 / p_l`` (inverted), ReLU never increasing a magnitude; it bounds every
      logit of every sub-network and of the test-time net. ``log C`` more bounds
      every log-sum-exp; the ``+1`` covers the sums of probabilities.

    Why: Higham's bound for a sum of ``N`` products in any order,
    ``|fl(s) - s| <= gamma_N sum |terms|``, propagated through the layers (an
    error ``e_l <= G_l a_l`` gives ``e_{l+1} <= (G_l + gamma_{n_l+2}) a_{l+1}``)
    and then through the two summation stages over masks, bounds every logit,
    and every accumulated ``E[z_c]``, by ``gamma_D M`` in absolute value.
    ``E[log-sum-exp]`` is common to all classes and cancels in the NWGM's
    normalisation; a softmax entry moves relatively by at most twice the largest
    logit error, hence ``2 gamma_D M`` per mean; the ``AM``'s sum of
    ``P(m) s_c(m)`` adds ``gamma_{k+B}`` relative, covered by the ``+1`` in ``M``.
    Comparing two means doubles it: ``4 gamma_D M``.

    It is a worst-case bound: rounding errors of opposite signs cancel, and the
    measured errors are typically orders of magnitude smaller.

    Parameters
    ----------
    net
        The network enumerated.
    x
        Its input, shape ``(n_inputs,)`` or ``(batch, n_inputs)``.
    chunk
        The ``chunk`` passed to ``enumerate_ensemble`` (an integer: the block
        structure fixes the summation depth; ``None`` is not accepted here).
    variant
        ``"standard"`` or ``"inverted"``.

    Returns
    -------
    float
        The bound: a tolerance for ``max_c |A_c / A'_c - 1|`` and for
        ``max_c |A_c - A'_c|`` between two computed means that agree exactly.
    """
    v = check_variant(variant)
    if not isinstance(net, DropoutNet):
        raise TypeError(f"net must be a DropoutNet; got {type(net).__name__}.")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(
            f"chunk must be the positive integer passed to enumerate_ensemble(); got "
            f"{chunk!r}. The bound depends on the block size, so chunk=None (automatic) "
            "cannot be bounded: pass an explicit chunk to both."
        )
    xs, _ = net._check_x(x)
    n = net.n_dropped
    c = min(n, int(chunk).bit_length() - 1)
    k, blocks = 1 << c, 1 << (n - c)
    depth = sum(w.shape[0] + 2 for w in net.weights) + k + blocks + _EXTRA_ROUNDINGS
    u = UNIT_ROUNDOFF
    if depth * u >= 0.5:
        raise ValueError(f"summation depth {depth} is too large for a first-order bound.")
    gamma = depth * u / (1.0 - depth * u)
    mag = np.abs(xs)
    for w, b, p in zip(net.weights, net.biases, net.keep_probs):
        scale = 1.0 if (v == "standard" or p == 1.0) else 1.0 / p
        mag = (mag * scale) @ np.abs(w) + np.abs(b)
    big = float(mag.max()) + math.log(net.n_classes) + 1.0
    return 4.0 * gamma * big


# --------------------------------------------------------------------------- #
# Monte Carlo convergence rate
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, eq=False)
class MCRateFit:
    """The convergence rate of Monte Carlo dropout, fitted with its uncertainty.

    Attributes
    ----------
    slope
        Least-squares slope of ``log rms_error`` against ``log T``; the
        ``1/sqrt(T)`` law predicts ``-1/2``.
    slope_stderr
        Standard deviation of the slope over bootstrap resamples of the
        independent runs (rows of :attr:`MCErrorCurve.errors`). Resampling whole
        runs keeps the correlation between a run's nested prefixes.
    mse_ratio
        ``mean_r(err^2) / predicted^2`` per ``T``: the measured over the
        predicted mean squared error, expectation exactly 1 for every ``T``.
    mse_ratio_stderr
        Its standard error, ``std_r(err^2 / predicted^2) / sqrt(R)`` (sample
        standard deviation over the ``R`` runs).
    """

    slope: float
    slope_stderr: float
    mse_ratio: NDArray[np.float64]
    mse_ratio_stderr: NDArray[np.float64]

    def slope_z(self, expected: float = -0.5) -> float:
        """``(slope - expected) / slope_stderr``: the slope's distance in standard errors."""
        return (self.slope - expected) / self.slope_stderr

    def mse_ratio_z(self) -> NDArray[np.float64]:
        """``(mse_ratio - 1) / mse_ratio_stderr`` per ``T``."""
        return (self.mse_ratio - 1.0) / self.mse_ratio_stderr


def fit_mc_rate(
    curve: MCErrorCurve,
    n_boot: int = 2000,
    rng: np.random.Generator | int | None = None,
) -> MCRateFit:
    """Fit ``rms_error ~ T^slope`` and bootstrap the slope over independent runs.

    Each of the ``R`` runs in ``curve.errors`` is one stream of sampled
    sub-networks read at every ``T``. Since ``E||MC_T - AM||^2 = sum_c Var[s_c] / T``
    exactly (a mean of ``T`` i.i.d. draws), the rms error is
    ``predicted_rms = sqrt(sum_c Var[s_c] / T)`` in expectation of its square, and
    the log-log slope is ``-1/2``. The slope's standard error comes from
    ``n_boot`` resamples (with replacement) of the ``R`` runs, each refitted.

    Parameters
    ----------
    curve
        From :func:`dropout_lib.theory.ensemble.mc_error_curve`, with at least 2 runs
        and 2 sample sizes.
    n_boot
        Number of bootstrap resamples (at least 10).
    rng
        A ``numpy.random.Generator``, or an integer seed for a new one.

    Returns
    -------
    MCRateFit
    """
    if not isinstance(curve, MCErrorCurve):
        raise TypeError(f"curve must be an MCErrorCurve; got {type(curve).__name__}.")
    errors = np.asarray(curve.errors, dtype=np.float64)
    reps, n_t = errors.shape
    if reps < 2 or n_t < 2:
        raise ValueError(
            f"need at least 2 runs and 2 sample sizes to fit a rate with an error; "
            f"got {reps} runs and {n_t} sample sizes. Raise n_repeats or add sample sizes."
        )
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 10:
        raise ValueError(f"n_boot must be an integer >= 10; got {n_boot!r}.")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    log_t = np.log(np.asarray(curve.sample_sizes, dtype=np.float64))
    slope = float(np.polyfit(log_t, np.log(curve.rms_error), 1)[0])
    idx = gen.integers(0, reps, size=(int(n_boot), reps))
    rms_boot = np.sqrt((errors[idx] ** 2).mean(axis=1))  # (n_boot, n_t)
    slopes = np.polyfit(log_t, np.log(rms_boot).T, 1)[0]
    ratios = errors**2 / np.asarray(curve.predicted_rms) ** 2  # (R, n_t)
    return MCRateFit(
        slope=slope,
        slope_stderr=float(slopes.std(ddof=1)),
        mse_ratio=ratios.mean(axis=0),
        mse_ratio_stderr=ratios.std(axis=0, ddof=1) / math.sqrt(reps),
    )


# --------------------------------------------------------------------------- #
# What a stored number may differ by between machines
# --------------------------------------------------------------------------- #


def rounding_noise(value: float, bound: float, floor: float = 1e-12) -> float:
    """Relative difference two correct float64 runs can show in an enumerated gap.

    ``bound`` is :func:`enumeration_rounding_bound`: the computed difference of
    two ensemble means (or of a mean and the weight-scaled net) is within
    ``bound`` of its exact value on *any* machine, whatever its summation order,
    so two machines differ by at most ``2 * bound`` in absolute terms, a relative
    ``2 * bound / |value|``. Returns that, but at least ``floor`` (the noise of
    the few float operations that follow), for
    :func:`dropout_lib.book.publish.glue_rounded`.

    >>> rounding_noise(0.1, 2.5e-11)
    5e-10
    """
    value, bound = float(value), float(bound)
    if not (math.isfinite(value) and value != 0.0):
        raise ValueError(f"value must be finite and nonzero; got {value!r}.")
    if not (math.isfinite(bound) and bound >= 0):
        raise ValueError(f"bound must be a finite number >= 0; got {bound!r}.")
    return max(2.0 * bound / abs(value), float(floor))


@dataclass(frozen=True, eq=False)
class DeepRow:
    """One dropout configuration of a net, enumerated.

    Attributes
    ----------
    net
        The net (standard parameterisation, the paper's).
    result
        Its :class:`~dropout_lib.theory.ensemble.EnsembleResult`.
    nwgm_gap, am_gap
        ``max |NWGM - WS|`` and ``max |AM - WS|`` over inputs and classes.
    bound
        :func:`enumeration_rounding_bound` of the enumeration: a gap at most
        this large is rounding, a larger one is real.
    """

    net: DropoutNet
    result: EnsembleResult
    nwgm_gap: float
    am_gap: float
    bound: float

    @property
    def closer(self) -> str:
        """The mean the weight-scaled net is closer to: ``"NWGM"``, ``"AM"``, or a tie.

        Each computed gap is within :attr:`bound` of its exact value, so the
        order is decided only when the gaps differ by more than ``2 * bound``;
        otherwise ``"NWGM and AM alike (within rounding)"``. A measured property
        of this net at these keep probabilities, not a rule.
        """
        if abs(self.nwgm_gap - self.am_gap) <= 2 * self.bound:
            return "NWGM and AM alike (within rounding)"
        return "NWGM" if self.nwgm_gap < self.am_gap else "AM"


def deep_ensembles(
    widths: Sequence[int],
    configs: Mapping[str, Sequence[float]],
    x: ArrayLike,
    chunk: int,
    seed: int = 0,
) -> dict[str, DeepRow]:
    """Enumerate one random ReLU net under several dropout configurations.

    Every configuration gets the *same* weights, :func:`he_dropout_net` with
    ``rng=seed`` (an untrained, He-initialised net), and its own keep
    probabilities (one per layer, Keras's ``rate`` is ``1 - p``). Returns, per
    configuration, the enumeration and the gaps of the weight-scaled net to the
    two ensemble means with their rounding bound (:class:`DeepRow`).
    """
    rows: dict[str, DeepRow] = {}
    for name, keep_probs in configs.items():
        net = he_dropout_net(widths, keep_probs, rng=seed)
        res = enumerate_ensemble(net, x, chunk=chunk)
        rows[name] = DeepRow(
            net=net,
            result=res,
            nwgm_gap=float(np.abs(res.nwgm - res.weight_scaled).max()),
            am_gap=float(np.abs(res.arithmetic_mean - res.weight_scaled).max()),
            bound=enumeration_rounding_bound(net, x, chunk),
        )
    return rows
