"""The house style and payload helpers shared by every figure module.

Figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot, no global state, Agg only),
so tests can inspect axes, labels and marks before anything is saved. A figure whose data is absent
raises :class:`MissingData`, whose message becomes the report's sentence about the skipped figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class FigureSpec:
    """A figure of one command: ``draw(payload) -> Figure`` (or MissingData), saved as ``name``.png/.svg."""

    name: str
    title: str
    draw: Callable[[dict[str, Any]], Figure]


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


# ---------------------------------------------------------------- payload helpers


def need(payload: dict[str, Any], key: str, what: str) -> Any:
    value = payload.get(key)
    if value in (None, [], {}):
        raise MissingData(f"the results have no {what} ({key!r})")
    return value


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


def super_weight_layers(payload: dict[str, Any]) -> list[int]:
    """Layers holding a confirmed super weight (all listed ones when none says ``confirmed``)."""
    sws = payload.get("super_weights") or []
    confirmed = [sw for sw in sws if sw.get("confirmed", True)]
    return sorted({int(sw["layer"]) for sw in confirmed if sw.get("layer") is not None})


def candidate_layers(payload: dict[str, Any]) -> list[int]:
    """Layers of unconfirmed candidates only (a spike whose weight did not cost loss when zeroed)."""
    sws = [sw for sw in payload.get("super_weights") or [] if sw.get("confirmed") is False]
    return sorted({int(sw["layer"]) for sw in sws if sw.get("layer") is not None} - set(super_weight_layers(payload)))


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


def model_title(payload: dict[str, Any], what: str) -> str:
    model = payload.get("model")
    return f"{what}: {model}" if model else what


def block_order(block: str) -> tuple[int, float]:
    b = str(block)
    if b.isdigit():
        return (0, float(b))
    return (1, {"channel": 0, "row": 0, "tensor": 1}.get(b, 2))


def is_activation_quant(row: dict[str, Any]) -> bool:
    """W8A8 rows quantize activations too: they are not comparable with weight-only points."""
    return str(row.get("method", "")).startswith("w8a8") or "activation" in row


def quant_results(payload: dict[str, Any], activation: bool = False) -> list[dict[str, Any]]:
    """Weight-only rows (or, with ``activation``, the W8A8 rows) that name a method."""
    rows = [
        r
        for r in need(payload, "results", "quantization results")
        if r.get("method") is not None and is_activation_quant(r) == activation
    ]
    if not rows:
        kind = "W8A8 (activation)" if activation else "weight-only"
        raise MissingData(f"the quantization results hold no {kind} rows")
    return rows


def ppl_value(row: dict[str, Any]) -> float:
    p = row.get("perplexity")
    if isinstance(p, dict):
        return num(p.get("wikitext2", next(iter(p.values()), None)))
    return num(p)


def baseline_ppl(payload: dict[str, Any]) -> float | None:
    base = payload.get("baseline") or {}
    value = ppl_value(base) if base else math.nan
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------- attack / verify / diff

NOT_CAUGHT = "not caught"


def caught_by(row: dict[str, Any]) -> list[str]:
    """The checks that caught an attack: ``caught`` as {check: bool}, a list, or one name."""
    caught = row.get("caught_by", row.get("caught"))
    if isinstance(caught, dict):
        return [str(k) for k, v in caught.items() if v is True]
    if isinstance(caught, str):
        return [caught] if caught and caught != "none" else []
    if isinstance(caught, list):
        return [str(c) for c in caught]
    return []


def caught_label(row: dict[str, Any]) -> str:
    checks = caught_by(row)
    return f"caught by {', '.join(checks)}" if checks else NOT_CAUGHT


def attack_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Attack results: ``results`` (as attack writes them) or ``attacks``."""
    rows = payload.get("attacks") or payload.get("results")
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
        raise MissingData("the results list no attacks")
    return rows


def attack_name(row: dict[str, Any]) -> str:
    return str(row.get("attack") or row.get("name") or f"{row.get('kind')} {row.get('target')} n={row.get('n')}")


def damage(row: dict[str, Any]) -> tuple[float, str]:
    """How much an attack hurt: perplexity ratio to the clean model where recorded, else perplexity."""
    for key in ("ratio", "ppl_ratio", "perplexity_ratio"):
        if row.get(key) is not None:
            return num(row[key]), "perplexity / clean perplexity"
    return ppl_value(row), "perplexity after the attack"
