"""The house style and the marks shared by every page's figures.

Figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot, no global state, Agg only),
so tests can inspect axes, labels and marks before anything is saved. A figure whose data is absent
raises :class:`MissingData`, whose message becomes the report's sentence about the skipped figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Okabe-Ito: distinguishable for colour-blind readers and in greyscale print.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


def series_style(i: int) -> dict[str, Any]:
    """Colour, marker and line style of series ``i``: earlier series get bigger markers, so series
    that coincide (naive and sw often do) stay visible one inside the other."""
    return {
        "color": PALETTE[i % len(PALETTE)],
        "marker": MARKERS[i % len(MARKERS)],
        "markersize": max(4.0, 9.0 - 1.5 * i),
        "linestyle": LINESTYLES[i % len(LINESTYLES)],
    }


MARK_COLOR = "#D55E00"
MARK_GID = "marked-layer"  # gid of every vertical line that marks a super weight's layer
CANDIDATE_GID = "candidate-layer"  # gid of the lines marking unconfirmed candidates

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "legend.fontsize": 9,
    "svg.fonttype": "none",  # text stays text in the SVG: searchable, smaller
    "svg.hashsalt": "superweight",  # deterministic ids, so re-rendering gives the same file
}


class MissingData(Exception):
    """The payload lacks what this figure needs; the message says what, for the report."""


@contextmanager
def style() -> Iterator[None]:
    """The house style, scoped: library users' own rcParams are left alone."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(width: float = 7.0, height: float = 3.6) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def num(value: Any) -> float:
    """A number from JSON, where non-finite values were written as strings ("nan", "inf")."""
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def mark_candidates(ax: Axes, layers: list[int]) -> None:
    """A dotted grey line at each unconfirmed candidate's layer, so a second spike is explained."""
    for i, layer in enumerate(layers):
        line = ax.axvline(
            layer,
            color="grey",
            linestyle=":",
            linewidth=1.0,
            label="candidate, not confirmed" if i == 0 else None,
        )
        line.set_gid(CANDIDATE_GID)


def mark_layers(ax: Axes, layers: list[int], label: bool = True) -> None:
    """A dashed vertical line at each super weight's layer; tests find them by ``MARK_GID``."""
    for i, layer in enumerate(layers):
        line = ax.axvline(
            layer,
            color=MARK_COLOR,
            linestyle="--",
            linewidth=1.2,
            alpha=0.9,
            label=f"super weight (layer {layer})" if label and i == 0 else None,
        )
        line.set_gid(MARK_GID)


def marked_layers(fig: Figure) -> list[list[float]]:
    """Per axes, the x positions of the super-weight marks (for tests and the report)."""
    return [[line.get_xdata()[0] for line in ax.get_lines() if line.get_gid() == MARK_GID] for ax in fig.axes]


def maybe_log(ax: Axes, values: list[float], axis: str = "y", ratio: float = 100.0) -> None:
    """Log scale when positive values span more than ``ratio``: collapses and spikes stay readable."""
    pos = [v for v in values if v > 0 and math.isfinite(v)]
    if pos and len(pos) == len([v for v in values if math.isfinite(v)]) and max(pos) / min(pos) > ratio:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
