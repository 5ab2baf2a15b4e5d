"""Glue a number into the book in a form that every correct machine reproduces.

A chapter is stored executed, and strict nbval compares every stored output
with a fresh run, byte for byte. A glued float is stored as its ``repr``
(17 significant digits), so a quantity at the rounding level, or one that
inherits rounding through a long or chaotic run, changes its stored text from
one BLAS kernel, thread count or CPU to the next although every check still
holds. This module decides what a stored number may be:

* :func:`glue_exact`: a value that is the same on every machine by
  construction (a count, a shape, a keep probability typed in the chapter, a
  result that is exact in floating point), stored as it is;
* :func:`glue_rounded`: a value that varies between machines by at most a
  stated relative ``noise``, stored rounded to ``digits`` significant digits,
  and only if *no* value within that noise rounds differently. If the value
  lies within ``noise`` of a rounding boundary while the chapter is executed
  to be stored (:data:`STORING`), the call raises, and the author shows fewer
  digits or a bound. So a stored text is the text every machine whose value
  is within ``noise`` stores;
* :func:`stable_floor` and :func:`stable_ceil`: a lower or upper bound at a
  stated number of decimals, for prose that says "at least" or "within",
  where rounding to nearest could be false; the same margin rule;
* :func:`glue_bound`: a value at the rounding level (a gap between two runs
  that agree to float64 precision, a float32 discrepancy), asserted against a
  bound justified in the chapter; the *bound* is stored, the value is not.

:func:`stable_text` formats a number for a printed table under the same rule
as :func:`glue_rounded`.

The strict assert stays in the chapter's cell; only what is stored changes.

**Who is stopped by a value near a rounding boundary.** Only the run that
stores the chapter (``tools/execute_notebooks.py``, which sets
:data:`STORING`): there the rounding functions raise ``ValueError``. In every
other run (a reader who changed a number and runs the chapter in JupyterLab,
nbval, the book build) they warn (:class:`UnstableRoundingWarning`, shown
under the cell) and use fewer digits, so the chapter runs on. nbval still
fails on such a value: the warning and the shorter number are outputs the
stored chapter does not have, and nbval compares every output.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

__all__ = [
    "glue_bound",
    "glue_exact",
    "glue_exact_many",
    "glue_rounded",
    "round_stable",
    "stable_ceil",
    "stable_floor",
    "stable_text",
    "UnstableRoundingWarning",
]


# myst-nb's glue protocol: a display_data output whose mime types carry this
# prefix and whose metadata names the value (myst_nb.ext.glue.GLUE_PREFIX).
GLUE_PREFIX = "application/papermill.record/"


def _glue(name: str, value: Any) -> None:
    """Exactly what ``myst_nb.glue(name, value, display=False)`` displays.

    Written out, not imported: ``myst_nb.ext.glue`` imports nbformat, hence
    jsonschema, hence rfc3987-syntax, which builds its IRI parsers on import
    (about 3 s; python-jsonschema/jsonschema#1428), in every chapter's kernel.
    ``tests/test_glued.py`` checks that both display the same output.
    """
    from IPython.core.formatters import format_display_data
    from IPython.display import display

    bundle, metadata = format_display_data(value)
    metadata["scrapbook"] = {"name": name, "mime_prefix": GLUE_PREFIX}
    display({GLUE_PREFIX + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)


STORING = "DROPOUT_BOOK_STORING"
"""Environment variable set (to ``1``) while chapters are executed to be stored.

``tools/execute_notebooks.py`` sets it for ``make refresh``. While it is set,
:func:`round_stable` demands twice the margin: a value stored with a margin of
``2 * noise`` to the nearest rounding boundary keeps a margin of at least
``noise`` on any machine whose value differs by at most ``noise``, so the
check that runs there (nbval, the book build) passes and rounds to the same
stored number. And only while it is set does a value too close to a boundary
raise; in any other run it warns and is shown with fewer digits."""


class UnstableRoundingWarning(UserWarning):
    """A value too close to a rounding boundary, in a run that does not store the chapter.

    Shown, for instance, when a reader changes a number and a glued value lands
    near a boundary; the value is glued with fewer digits and the chapter runs
    on. While storing (:data:`STORING`) the same value raises ``ValueError``.
    """


def _storing() -> bool:
    return bool(os.environ.get(STORING))


def _too_close(message: str, fallback: float, fewer: str) -> float:
    """Raise ``ValueError(message)`` while storing; else warn, and return ``fallback``."""
    if _storing():
        raise ValueError(message)
    import sys
    import warnings

    level, frame = 1, sys._getframe(0)
    while frame is not None and frame.f_globals.get("__name__") == __name__:  # to the caller's line
        level, frame = level + 1, frame.f_back
    warnings.warn(
        f"{message}. Not storing this run, so it continues with {fewer}.",
        UnstableRoundingWarning,
        stacklevel=level,
    )
    return fallback


def round_stable(value: float, digits: int, noise: float, *, name: str = "value") -> float:
    """Return ``value`` rounded to ``digits`` significant digits, if that is stable.

    Stable means: every ``v`` with ``|v - value| <= noise * |value|`` rounds to
    the same number. ``noise`` is the largest relative difference the chapter
    expects between correct runs on different machines (state why, next to the
    call). Raises ``ValueError`` if ``value`` is not finite.

    If ``value`` is within that distance of a rounding boundary: while the
    chapter is executed to be stored (:data:`STORING` set) this raises
    ``ValueError``, and the margin demanded is ``2 * noise``, so that every
    machine within ``noise`` of the stored run passes this check too. In any
    other run (a reader's changed chapter, nbval, the book build) it warns
    (:class:`UnstableRoundingWarning`) and returns the value at the most
    digits below ``digits`` that are stable (at 1 digit if none is), so the
    chapter runs on; nbval fails on the changed output.

    >>> round_stable(0.20343311779680032, 4, 1e-9)
    0.2034
    >>> round_stable(4147.099777915082, 6, 1e-9)
    4147.1
    >>> round_stable(0.12345, 4, 1e-3)  # too close at 4 and 3 digits: a warning, 2 digits
    0.12
    """
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} = {value!r} is not finite; glue a finite number or a string that says why")
    if not (isinstance(digits, numbers.Integral) and digits >= 1):
        raise ValueError(f"digits must be a positive integer; got {digits!r}")
    if not (0 <= noise < 1):
        raise ValueError(f"noise is a relative difference in [0, 1); got {noise!r}")

    def rounded(v: float, d: int) -> float:
        return float(f"{v:.{d - 1}e}")

    margin = abs(value) * noise * (2 if _storing() else 1)

    def stable(d: int) -> bool:
        return rounded(value - margin, d) == rounded(value, d) == rounded(value + margin, d)

    if stable(digits):
        return rounded(value, digits)
    low, high = rounded(value - margin, digits), rounded(value + margin, digits)
    fewer = next((d for d in range(digits - 1, 0, -1) if stable(d)), 1)
    return _too_close(
        f"{name} = {value!r} is within a relative {margin / abs(value):g} of a rounding boundary at "
        f"{digits} significant digits ({low:.{digits}g} .. {high:.{digits}g}): glue it with "
        "fewer digits, or as a bound with glue_bound",
        rounded(value, fewer),
        f"{fewer} significant digit(s)",
    )


def _stable_step(value: float, decimals: int, noise: float, up: bool) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"value must be finite; got {value!r}.")
    if not (0 <= noise < 1):
        raise ValueError(f"noise is a relative difference in [0, 1); got {noise!r}.")
    step = math.ceil if up else math.floor
    margin = abs(value) * noise * (2 if _storing() else 1)

    def bound(d: int) -> float | None:  # the bound at d decimals, if every value within margin agrees
        scale = 10.0**d
        low, high = step((value - margin) * scale), step((value + margin) * scale)
        return low / scale if low == high else None

    stable = bound(decimals)
    if stable is not None:
        return stable
    # fewer decimals: still a bound of value, rounded in the same direction
    fewer = next((d for d in range(decimals - 1, decimals - 16, -1) if bound(d) is not None), None)
    return _too_close(
        f"value = {value!r} is within a relative {margin / abs(value):g} of a multiple of "
        f"{10.0**-decimals:g}: its bound at this precision differs between machines; use fewer decimals",
        step(value * 10.0**decimals) / 10.0**decimals if fewer is None else bound(fewer),
        "this run's bound" if fewer is None else f"{fewer} decimal(s)",
    )


def stable_floor(value: float, decimals: int, noise: float) -> float:
    """A lower bound of ``value`` with ``decimals`` decimals, the same on every machine.

    For prose that says "at least" (glue it with :func:`glue_exact`); the
    margin rule is :func:`round_stable`'s.

    ``floor(value * 10**decimals) / 10**decimals``, provided every ``v`` within
    a relative ``noise`` of ``value`` gives the same number (else, while
    storing, ``ValueError``; in other runs a warning and the bound at fewer
    decimals, which is still a lower bound): for prose that says "at least",
    where a rounding up would be false.

    >>> stable_floor(26.6, 0, 1e-9)
    26.0
    >>> stable_floor(-0.4891, 2, 1e-9)
    -0.49
    """
    return _stable_step(value, decimals, noise, up=False)


def stable_ceil(value: float, decimals: int, noise: float) -> float:
    """An upper bound of ``value`` with ``decimals`` decimals, the same on every machine.

    As :func:`stable_floor`, rounding up: for prose that says "within" or
    "at most", where a rounding down would be false.

    >>> stable_ceil(1.3349, 2, 1e-9)
    1.34
    >>> stable_ceil(1.33, 2, 1e-9)  # at a multiple of 0.01, not storing: a warning, 1 decimal
    1.4
    """
    return _stable_step(value, decimals, noise, up=True)


def stable_text(value: float, digits: int, noise: float) -> str:
    """``value`` as text with ``digits`` significant digits, under :func:`round_stable`'s rule.

    >>> stable_text(1.0000000000000004, 3, 1e-12)
    '1'
    >>> stable_text(2.338904456123756e-14, 2, 1e-6)
    '2.3e-14'
    """
    return f"{round_stable(value, digits, noise):.{digits}g}"


def glue_exact(name: str, value: Any) -> None:
    """Glue a value that every correct run reproduces exactly, as it is.

    For counts, shapes, strings, booleans, hyperparameters typed in the chapter
    and results exact in floating point (state why in the cell). A float that
    is not exactly reproducible belongs in :func:`glue_rounded` or
    :func:`glue_bound`.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} = {value!r} is not finite")
    _glue(name, value)


def glue_rounded(name: str, value: float, digits: int, noise: float) -> None:
    """Glue ``value`` rounded to ``digits`` significant digits, stable to relative ``noise``.

    Returns None (so that a cell ending with the call displays nothing); use
    :func:`round_stable` for the stored number. See :func:`round_stable` for
    the rule and the error raised when the value sits too close to a rounding
    boundary.
    """
    _glue(name, round_stable(value, digits, noise, name=name))


def glue_bound(name: str, value: float, bound: float, *, what: str = "") -> None:
    """Assert ``0 <= value <= bound`` and glue the bound (the value is machine-dependent).

    ``bound`` is the justified tolerance of the check (machine epsilon times a
    stated factor, a number of standard errors); the prose then says the value
    is at most the glued bound. Raises ``AssertionError`` with ``what`` (what a
    failure would mean) when the value exceeds the bound. Returns None.
    """
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise AssertionError(f"{name} = {value!r}: expected a finite non-negative size. {what}".strip())
    if value > bound:
        raise AssertionError(f"{name} = {value!r} exceeds its bound {bound!r}. {what}".strip())
    _glue(name, bound)


def glue_exact_many(values: Mapping[str, Any]) -> None:
    """:func:`glue_exact` for each ``name: value`` of a mapping."""
    for name, value in values.items():
        glue_exact(name, value)
