"""The book's plotting style: one look for every figure.

Use :func:`figure` to start a figure; it applies the house style and returns
``(fig, ax)`` or ``(fig, axes)``. Colours are fixed per variant so that the
standard (paper) and inverted (Keras) variants look the same in every chapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["COLORS", "STYLE", "figure", "gap_panels"]

#: One colour per thing the book compares, used by every chapter.
COLORS: dict[str, str] = {
    "standard": "#1f77b4",  # the paper's dropout
    "inverted": "#d62728",  # Keras's dropout
    "mapped": "#2ca02c",  # standard dropout with mapped hyperparameters
    "control": "#7f7f7f",  # negative controls, no dropout
    "theory": "#000000",  # exact formulas
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


#: Legend text size (points): one step below the labels' 10, legible at the page's width.
LEGEND_SIZE: float = 9.0


def figure(ncols: int = 1, nrows: int = 1, width: float = 6.4, height: float = 3.2, **kwargs: Any):
    """Return ``plt.subplots(nrows, ncols)`` in the book's style and size (inches)."""
    mpl.rcParams.update(STYLE)
    return plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", **kwargs)


def gap_panels(
    panels: Mapping[str, Sequence[tuple[str, Any, str, str]]],
    *,
    ncols: int = 1,
    nrows: int = 1,
    width: float = 6.4,
    height: float = 3.2,
    steps: Any = None,
    tolerance: float | None = None,
    guides: Mapping[str, Any] | None = None,
    floor: float = 1e-17,
    xlog: bool = True,
    xlabel: str = "step $t$",
    ylabel: str = "relative gap to the inverted run",
    legend: str = "figure",
):
    """Plot trajectory gaps, one panel per entry of ``panels``; return ``(fig, axes)``.

    Parameters
    ----------
    panels
        ``{title: [(label, gaps, color, linestyle), ...]}``; ``gaps[t]`` is the
        relative gap after step ``t`` (entry 0, the start, is not drawn when
        ``steps`` is None, so that a log step axis starts at 1). ``color`` is a
        key of :data:`COLORS` or a colour. Panels fill the grid row by row.
    steps
        The x values; default ``1, ..., len(gaps) - 1`` (then ``gaps[1:]`` is drawn).
    tolerance
        Draw the check's tolerance as a dotted line in the mapped colour.
    guides
        ``{label: values}``: reference curves (rounding growth such as
        ``sqrt(t) u``), drawn thin in the theory colour, one line style each.
    floor
        Gaps are drawn as ``max(gap, floor)`` (an exact 0 has no logarithm).
    legend
        ``"figure"``: one legend below all panels; ``"first"``: in the first panel.
    xlabel, ylabel
        Axis labels: x under each bottom panel; y beside the single panel or,
        with several rows, once for the whole figure, so that the long labels
        of panels above each other cannot overlap.
    """
    fig, axes = figure(
        ncols=ncols, nrows=nrows, width=width, height=height, sharex=True, sharey=True, squeeze=False
    )
    guide_styles = iter((":", "-.", "--"))
    guides = {label: (values, next(guide_styles)) for label, values in (guides or {}).items()}
    for ax, (title, lines) in zip(axes.flat, panels.items()):
        for label, gaps, color, style in lines:
            gaps = np.asarray(gaps, dtype=float)
            x, y = (np.arange(1, len(gaps)), gaps[1:]) if steps is None else (steps, gaps)
            ax.plot(x, np.maximum(y, floor), color=COLORS.get(color, color), linestyle=style, label=label)
        for label, (values, style) in guides.items():
            values = np.asarray(values, dtype=float)
            ax.plot(
                np.arange(1, len(values) + 1) if steps is None else steps,
                values,
                color=COLORS["theory"],
                linewidth=0.8,
                linestyle=style,
                label=label,
            )
        if tolerance is not None:
            ax.axhline(
                tolerance,
                color=COLORS["mapped"],
                linewidth=0.8,
                linestyle=":",
                label=f"tolerance $10^{{{np.log10(tolerance):.0f}}}$",
            )
        ax.set(yscale="log", xscale="log" if xlog else "linear", title=title if len(panels) > 1 else "")
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    if nrows > 1:
        fig.supylabel(ylabel, fontsize=STYLE["axes.labelsize"])
    else:
        axes[0, 0].set_ylabel(ylabel)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}
    if legend == "figure":
        fig.legend(
            handles.values(),
            handles.keys(),
            loc="outside lower center",
            ncol=min(3, len(handles)),
            fontsize=LEGEND_SIZE,
        )
    else:
        axes.flat[0].legend(handles.values(), handles.keys(), loc="best", fontsize=LEGEND_SIZE)
    return fig, axes if axes.size > 1 else axes[0, 0]
