"""One matplotlib figure per result a person should look at, drawn from a command's JSON payload.

Figures are built from the saved payload only (never from a live model), so ``superweight report``
can redraw them from ``results.json`` later. ``FIGURES`` maps a command to its figure specs; a spec
whose data is absent raises :class:`MissingData`, and the report says why that figure was skipped.
This module holds the registry, the scan and comparison figures, and rendering to PNG/SVG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from superweight.report.figures_eval import (
    ablate_metrics,
    ablate_super_activation,
    ablate_token_shift,
    attack_damage,
    diff_changes,
    quantize_activation,
    quantize_block_size,
    quantize_pareto,
    scale_curve,
)
from superweight.report.style import (
    MARK_COLOR,
    MARK_GID,
    PALETTE,
    FigureSpec,
    MissingData,
    candidate_layers,
    mark_candidates,
    mark_layers,
    marked_layers,
    maybe_log,
    model_title,
    need,
    new_figure,
    num,
    style,
    super_weight_layers,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FIGURES", "DrawnFigure", "FigureSpec", "MissingData", "draw_all", "marked_layers", "render"]

# ---------------------------------------------------------------- scan


def scan_max_activations(payload: dict[str, Any]) -> Figure:
    """Paper Fig. 3: the spike of max |down_proj input| and |output| at the super weight's layer."""
    layers = need(payload, "layers", "per-layer activation maxima")
    xs = [int(r["layer"]) for r in layers]
    marks = super_weight_layers(payload)
    fig = new_figure(7.0, 5.0)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, key, channel_key, name in (
        (axes[0], "max_input", "input_channel", "input"),
        (axes[1], "max_output", "output_channel", "output"),
    ):
        ys = [abs(num(r.get(key))) for r in layers]
        ax.plot(xs, ys, marker="o", markersize=3.5, color=PALETTE[0], label=f"max |down_proj {name}|")
        mark_layers(ax, marks)
        mark_candidates(ax, candidate_layers(payload))
        for layer in marks:
            if layer in xs:
                row = layers[xs.index(layer)]
                channel = row.get(channel_key)
                if channel is not None:
                    ax.annotate(
                        f"channel {channel}",
                        (layer, abs(num(row.get(key)))),
                        xytext=(8, -4),
                        textcoords="offset points",
                        fontsize=9,
                        color=MARK_COLOR,
                    )
        ax.set_ylabel(f"max |{name}|")
        ax.legend(loc="upper right")
    axes[0].set_title(model_title(payload, "Down-projection activation maxima per layer"))
    axes[1].set_xlabel("layer")
    return fig


def scan_residual(payload: dict[str, Any]) -> Figure:
    """How the super activation, once created, persists in the residual stream through later layers."""
    acts = [a for a in need(payload, "super_activations", "super activations") if a.get("residual")]
    if not acts:
        raise MissingData("no super activation carries its residual-stream trace ('residual')")
    fig = new_figure()
    ax = fig.subplots()
    all_values: list[float] = []
    for i, act in enumerate(acts[:6]):
        ys = [abs(num(v)) for v in act["residual"]]
        all_values += ys
        token = act.get("tokens", [None])
        token_text = f", token {token[0]}" if token and token[0] is not None else ""
        ax.plot(
            range(len(ys)),
            ys,
            marker="o",
            markersize=3,
            color=PALETTE[i % len(PALETTE)],
            label=f"channel {act.get('channel')}{token_text}",
        )
    maybe_log(ax, all_values)
    mark_layers(ax, super_weight_layers(payload))
    ax.set_xlabel("layer (residual stream after it)")
    ax.set_ylabel("|residual[channel]|")
    ax.set_title(model_title(payload, "Super activation in the residual stream"))
    ax.legend(loc="best")
    return fig


def _row_values(payload: dict[str, Any]) -> tuple[list[list[float]], list[str], list[list[int]]]:
    """Rows for the heat map, their labels and marked columns.

    From ``payload["row_values"]`` (``{"labels", "values", "marks"}`` as :func:`super_weight_rows`
    writes it, or one bare list) or, failing that, from a ``row_values`` list on each super weight.
    """
    raw = payload.get("row_values")
    rows: list[list[float]] = []
    labels: list[str] = []
    marks: list[list[int]] = []
    if isinstance(raw, dict) and raw.get("values"):
        vals = raw["values"]
        rows = vals if isinstance(vals[0], list) else [vals]
        labels = [str(x) for x in raw.get("labels") or []]
        marks = [[int(c) for c in m] for m in raw.get("marks") or []]
    elif isinstance(raw, list) and raw:
        rows = raw if isinstance(raw[0], list) else [raw]
    else:
        for sw in payload.get("super_weights") or []:
            if sw.get("row_values"):
                rows.append(sw["row_values"])
                labels.append(f"layer {sw.get('layer')} row {sw.get('row')}")
                marks.append([int(sw["col"])] if sw.get("col") is not None else [])
    if not rows:
        raise MissingData("the results carry no super weight row ('row_values'); scan does not save it by default")
    labels += [f"row {i}" for i in range(len(labels), len(rows))]
    marks += [[] for _ in range(len(marks), len(rows))]
    width = max(len(r) for r in rows)
    return [[num(v) for v in r] + [math.nan] * (width - len(r)) for r in rows], labels, marks


def super_weight_rows(model: Any, super_weights: list[dict[str, Any]], down_proj: str | None = None) -> dict:
    """The rows the heat map draws, for a command to add to its payload as ``row_values``.

    One row per (module, row) among the super weights and candidates, with their columns as marks,
    rounded to 5 significant digits so results.json stays small (a SmolLM2 row is 1536 numbers).
    """
    from superweight.model.architectures import down_projections, find_down_proj

    sites = down_projections(model, down_proj)
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for sw in super_weights:
        key = (str(sw["module"]), int(sw["row"]))
        if key not in out:
            site = find_down_proj(sites, key[0], sw.get("expert"))
            row = site.weight[key[1]].detach().float().cpu().tolist()
            kind = "super weight" if sw.get("confirmed", True) else "not confirmed"
            label = f"layer {sw['layer']} row {key[1]} ({kind})"
            out[key] = {"label": label, "values": [float(f"{v:.5g}") for v in row], "marks": []}
        out[key]["marks"].append(int(sw["col"]))
    rows = list(out.values())
    return {
        "labels": [r["label"] for r in rows],
        "values": [r["values"] for r in rows],
        "marks": [r["marks"] for r in rows],
    }


def scan_row_heatmap(payload: dict[str, Any]) -> Figure:
    """|weight| along the super weight's row (log colour): a lone outlier, or a row full of large weights."""
    import numpy as np
    from matplotlib.colors import LogNorm

    rows, labels, marks = _row_values(payload)
    data = np.abs(np.asarray(rows, dtype=float))
    finite = data[np.isfinite(data) & (data > 0)]
    if finite.size == 0:
        raise MissingData("the super weight row holds only zeros")
    vmax = float(finite.max())
    vmin = max(float(np.percentile(finite, 1)), vmax * 1e-4)
    fig = new_figure(7.0, 1.6 + 0.45 * len(rows))
    ax = fig.subplots()
    ax.grid(False)
    im = ax.imshow(
        np.clip(data, vmin, None),
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        norm=LogNorm(vmin=vmin, vmax=vmax),
    )
    for y, cols in enumerate(marks):
        for col in cols:
            ax.plot([col], [y], marker="o", markersize=9, markerfacecolor="none", markeredgecolor=MARK_COLOR,
                    markeredgewidth=1.8, linestyle="none", gid="marked-column")  # fmt: skip
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("column (intermediate channel)")
    fig.colorbar(im, ax=ax, label="|weight| (log scale)", shrink=0.9)
    ax.set_title(model_title(payload, "Super weight rows (circles: the found weights)"))
    return fig


def compare_max_output(payload: dict[str, Any]) -> Figure:
    """Several models on one axis: max |down_proj output| per layer against relative depth."""
    runs = [r for r in need(payload, "runs", "runs to compare") if r.get("layers")]
    if not runs:
        raise MissingData("none of the compared runs is a scan with per-layer maxima")
    fig = new_figure(7.0, 4.0)
    ax = fig.subplots()
    values: list[float] = []
    for i, run in enumerate(runs):
        n = max(len(run["layers"]) - 1, 1)
        xs = [int(r["layer"]) / n for r in run["layers"]]
        ys = [abs(num(r.get("max_output"))) for r in run["layers"]]
        values += ys
        color = PALETTE[i % len(PALETTE)]
        model, label = run.get("model"), run.get("label")
        name = f"{model} ({label})" if model and label and model != label else str(model or label)
        ax.plot(xs, ys, marker="o", markersize=3, color=color, label=name)
        for layer in super_weight_layers(run):
            ax.axvline(layer / n, color=color, linestyle="--", linewidth=1).set_gid(MARK_GID)
    maybe_log(ax, values)
    ax.set_xlabel("relative depth (layer / last layer)")
    ax.set_ylabel("max |down_proj output|")
    ax.set_title("Down-projection output maxima across models (dashed: super weight layers)")
    ax.legend(loc="best")
    return fig


FIGURES: dict[str, list[FigureSpec]] = {
    "scan": [
        FigureSpec("scan_max_activations", "Activation maxima per layer", scan_max_activations),
        FigureSpec("scan_residual", "Super activation in the residual stream", scan_residual),
        FigureSpec("scan_row_heatmap", "The super weight's row", scan_row_heatmap),
    ],
    "ablate": [
        FigureSpec("ablate_metrics", "Metrics per condition", ablate_metrics),
        FigureSpec("ablate_super_activation", "Super activation per condition", ablate_super_activation),
        FigureSpec("ablate_token_shift", "Token-probability shift", ablate_token_shift),
    ],
    "scale": [FigureSpec("scale_curve", "Metric against alpha", scale_curve)],
    "quantize": [
        FigureSpec("quantize_block_size", "Perplexity by block size", quantize_block_size),
        FigureSpec("quantize_pareto", "Perplexity against bits per weight", quantize_pareto),
        FigureSpec("quantize_activation", "W8A8 activation quantization", quantize_activation),
    ],
    "attack": [FigureSpec("attack_damage", "Damage per attack", attack_damage)],
    "verify": [],
    "fingerprint": [],
    "diff": [FigureSpec("diff_changes", "Largest changes", diff_changes)],
    "compare": [FigureSpec("compare_max_output", "Models side by side", compare_max_output)],
}


@dataclass
class DrawnFigure:
    """A figure of a run: drawn (``figure``), or skipped with the reason in one sentence."""

    spec: FigureSpec
    figure: Figure | None = None
    skipped: str | None = None


def draw_all(command: str, payload: dict[str, Any]) -> list[DrawnFigure]:
    """Every figure of ``command``; absent data or a drawing bug skips that figure, never the run."""
    out: list[DrawnFigure] = []
    with style():
        for spec in FIGURES.get(command, []):
            try:
                out.append(DrawnFigure(spec, figure=spec.draw(payload)))
            except MissingData as exc:
                out.append(DrawnFigure(spec, skipped=str(exc)))
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                out.append(DrawnFigure(spec, skipped=f"it could not be drawn ({type(exc).__name__}: {exc})"))
    return out


def render(fig: Figure, fmt: str) -> bytes:
    """The figure as PNG or SVG bytes (in the house style)."""
    import io

    buf = io.BytesIO()
    with style():
        fig.savefig(buf, format=fmt, metadata={"Software": "superweight"} if fmt == "png" else {"Date": None})
    return buf.getvalue()
