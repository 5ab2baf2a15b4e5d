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
  lies within ``noise`` of a rounding boundary the call raises, and the author
  shows fewer digits or a bound. So when this call succeeds on one machine,
  every machine whose value is within ``noise`` stores the same text;
* :func:`stable_floor` and :func:`stable_ceil`: a lower or upper bound at a
  stated number of decimals, for prose that says "at least" or "within",
  where rounding to nearest could be false; the same margin rule;
* :func:`glue_bound`: a value at the rounding level (a gap between two runs
  that agree to float64 precision, a float32 discrepancy), asserted against a
  bound justified in the chapter; the *bound* is stored, the value is not.

:func:`stable_text` formats a number for a printed table under the same rule
as :func:`glue_rounded`.

The strict assert stays in the chapter's cell; only what is stored changes.
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
stored number."""


def round_stable(value: float, digits: int, noise: float, *, name: str = "value") -> float:
    """Return ``value`` rounded to ``digits`` significant digits, if that is stable.

    Stable means: every ``v`` with ``|v - value| <= noise * |value|`` rounds to
    the same number. ``noise`` is the largest relative difference the chapter
    expects between correct runs on different machines (state why, next to the
    call). Raises ``ValueError`` if ``value`` is within that distance of a
    rounding boundary, or is not finite. When the chapter is being executed
    to be stored (:data:`STORING` set), the margin demanded is ``2 * noise``,
    so that every machine within ``noise`` of the stored run passes this check
    too.

    >>> round_stable(0.20343311779680032, 4, 1e-9)
    0.2034
    >>> round_stable(4147.099777915082, 6, 1e-9)
    4147.1
    >>> round_stable(0.12345, 4, 1e-3)
    Traceback (most recent call last):
    ...
    ValueError: value = 0.12345 is within a relative 0.001 of a rounding boundary at 4 significant
    digits (0.1233 .. 0.1236): glue it with fewer digits, or as a bound with glue_bound
    """
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} = {value!r} is not finite; glue a finite number or a string that says why")
    if not (isinstance(digits, numbers.Integral) and digits >= 1):
        raise ValueError(f"digits must be a positive integer; got {digits!r}")
    if not (0 <= noise < 1):
        raise ValueError(f"noise is a relative difference in [0, 1); got {noise!r}")

    def rounded(v: float) -> float:
        return float(f"{v:.{digits - 1}e}")

    margin = abs(value) * noise * (2 if os.environ.get(STORING) else 1)
    low, mid, high = rounded(value - margin), rounded(value), rounded(value + margin)
    if not (low == mid == high):
        raise ValueError(
            f"{name} = {value!r} is within a relative {margin / abs(value):g} of a rounding boundary at "
            f"{digits} significant digits ({low:.{digits}g} .. {high:.{digits}g}): glue it with "
            "fewer digits, or as a bound with glue_bound"
        )
    return mid


def _stable_step(value: float, decimals: int, noise: float, up: bool) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"value must be finite; got {value!r}.")
    if not (0 <= noise < 1):
        raise ValueError(f"noise is a relative difference in [0, 1); got {noise!r}.")
    scale = 10.0**decimals
    step = math.ceil if up else math.floor
    margin = abs(value) * noise * (2 if os.environ.get(STORING) else 1)
    low, high = step((value - margin) * scale), step((value + margin) * scale)
    if low != high:
        raise ValueError(
            f"value = {value!r} is within a relative {margin / abs(value):g} of a multiple of {1 / scale:g}: "
            "its bound at this precision differs between machines; use fewer decimals"
        )
    return low / scale


def stable_floor(value: float, decimals: int, noise: float) -> float:
    """A lower bound of ``value`` with ``decimals`` decimals, the same on every machine.

    For prose that says "at least" (glue it with :func:`glue_exact`); the
    margin rule is :func:`round_stable`'s.

    ``floor(value * 10**decimals) / 10**decimals``, provided every ``v`` within
    a relative ``noise`` of ``value`` gives the same number (else ``ValueError``):
    for prose that says "at least", where a rounding up would be false.

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
    >>> stable_ceil(2.0, 1, 1e-9)
    Traceback (most recent call last):
    ...
    ValueError: value = 2.0 is within a relative 1e-09 of a multiple of 0.1: its bound at this
    precision differs between machines; use fewer decimals
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
