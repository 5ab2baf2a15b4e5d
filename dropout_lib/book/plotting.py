"""The book's plotting style: one look for every figure.

Use :func:`figure` to start a figure; it applies the house style and returns
``(fig, ax)`` or ``(fig, axes)``. Colours are fixed per variant so that the
standard (paper) and inverted (Keras) variants look the same in every chapter.
"""

from __future__ import annotations

from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt

__all__ = ["COLORS", "STYLE", "figure"]

#: One colour per thing the book compares, used by every chapter.
COLORS: dict[str, str] = {
    "standard": "#1f77b4",   # the paper's dropout
    "inverted": "#d62728",   # Keras's dropout
    "mapped": "#2ca02c",     # standard dropout with mapped hyperparameters
    "control": "#7f7f7f",    # negative controls, no dropout
    "theory": "#000000",     # exact formulas
}

STYLE: dict[str, Any] = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "svg.hashsalt": "dropout-book",
}


def figure(ncols: int = 1, nrows: int = 1, width: float = 6.4, height: float = 3.2, **kwargs: Any):
    """Return ``plt.subplots(nrows, ncols)`` in the book's style and size (inches)."""
    mpl.rcParams.update(STYLE)
    return plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", **kwargs)
