"""The scan page: where the super weights are (the paper's Figure 3), their residual trace, their rows."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from superweight.coordinates import SuperWeight
from superweight.detect.result import ScanResult
from superweight.report.explain import fmt_value, g, where
from superweight.report.pages import FigureSpec, Page
from superweight.report.style import (
    MARK_COLOR,
    PALETTE,
    MissingData,
    mark_candidates,
    mark_layers,
    maybe_log,
    new_figure,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def super_weight_layers(scan: ScanResult) -> list[int]:
    return sorted({w.layer for w in scan.super_weights})


def candidate_layers(scan: ScanResult) -> list[int]:
    """Layers of unconfirmed candidates only (a spike whose weight did not cost loss when zeroed)."""
    return sorted({w.layer for w in scan.unconfirmed} - set(super_weight_layers(scan)))


def _title(scan: ScanResult, what: str) -> str:
    return f"{what}: {scan.model}"


# ---------------------------------------------------------------- figures


def max_activations(scan: ScanResult) -> Figure:
    """Paper Fig. 3: the spike of max |down_proj input| and |output| at the super weight's layer."""
    if not scan.layers:
        raise MissingData("the scan has no per-layer activation maxima")
    xs = [s.layer for s in scan.layers]
    marks = super_weight_layers(scan)
    fig = new_figure(7.0, 5.0)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, name in ((axes[0], "input"), (axes[1], "output")):
        ys = [abs(s.max_input if name == "input" else s.max_output) for s in scan.layers]
        ax.plot(xs, ys, marker="o", markersize=3.5, color=PALETTE[0], label=f"max |down_proj {name}|")
        mark_layers(ax, marks)
        mark_candidates(ax, candidate_layers(scan))
        for layer in marks:
            if layer in xs:
                s = scan.layers[xs.index(layer)]
                channel = s.input_channel if name == "input" else s.output_channel
                ax.annotate(f"channel {channel}", (layer, ys[xs.index(layer)]), xytext=(8, -4),
                            textcoords="offset points", fontsize=9, color=MARK_COLOR)  # fmt: skip
        ax.set_ylabel(f"max |{name}|")
        ax.legend(loc="upper right")
    axes[0].set_title(_title(scan, "Down-projection activation maxima per layer"))
    axes[1].set_xlabel("layer")
    return fig


def residual(scan: ScanResult) -> Figure:
    """How the super activation, once created, persists in the residual stream through later layers."""
    acts = [a for a in scan.super_activations if a.residual]
    if not acts:
        raise MissingData("no super activation was found, so there is no residual-stream trace")
    fig = new_figure()
    ax = fig.subplots()
    values: list[float] = []
    for i, act in enumerate(acts[:6]):
        ys = [abs(v) for v in act.residual]
        values += ys
        token = f", token {act.tokens[0]}" if act.tokens else ""
        ax.plot(range(len(ys)), ys, marker="o", markersize=3, color=PALETTE[i % len(PALETTE)],
                label=f"channel {act.channel}{token}")  # fmt: skip
    maybe_log(ax, values)
    mark_layers(ax, super_weight_layers(scan))
    ax.set_xlabel("layer (residual stream after it)")
    ax.set_ylabel("|residual[channel]|")
    ax.set_title(_title(scan, "Super activation in the residual stream"))
    ax.legend(loc="best")
    return fig


def row_heatmap(scan: ScanResult) -> Figure:
    """|weight| along the super weight's row (log colour): a lone outlier, or a row full of large weights."""
    import numpy as np
    from matplotlib.colors import LogNorm

    if not scan.rows:
        raise MissingData("the scan found no candidate, so there is no row to draw")
    width = max(len(r.values) for r in scan.rows)
    data = np.full((len(scan.rows), width), np.nan)
    for i, r in enumerate(scan.rows):
        data[i, : len(r.values)] = np.abs(np.asarray(r.values, dtype=float))
    finite = data[np.isfinite(data) & (data > 0)]
    if finite.size == 0:
        raise MissingData("the super weight rows hold only zeros")
    vmax = float(finite.max())
    vmin = max(float(np.percentile(finite, 1)), vmax * 1e-4)
    fig = new_figure(7.0, 1.6 + 0.45 * len(scan.rows))
    ax = fig.subplots()
    ax.grid(False)
    im = ax.imshow(np.clip(data, vmin, None), aspect="auto", interpolation="nearest", cmap="viridis",
                   norm=LogNorm(vmin=vmin, vmax=vmax))  # fmt: skip
    for y, r in enumerate(scan.rows):
        for col in r.marks:
            ax.plot([col], [y], marker="o", markersize=9, markerfacecolor="none", markeredgecolor=MARK_COLOR,
                    markeredgewidth=1.8, linestyle="none", gid="marked-column")  # fmt: skip
    ax.set_yticks(range(len(scan.rows)), [r.label for r in scan.rows])
    ax.set_xlabel("column (intermediate channel)")
    fig.colorbar(im, ax=ax, label="|weight| (log scale)", shrink=0.9)
    ax.set_title(_title(scan, "Super weight rows (circles: the found weights)"))
    return fig


# ---------------------------------------------------------------- sentences


def summary(scan: ScanResult) -> list[str]:
    sws = scan.super_weights
    out = []
    if sws:
        top = max(sws, key=lambda sw: abs(sw.output_activation))
        out.append(
            f"{scan.model} has {len(sws)} super weight{'s' if len(sws) != 1 else ''}. The strongest is "
            f"{where(top)} with value {g(top.value)}: it multiplies an input of {g(top.input_activation)} "
            f"into an output of {g(top.output_activation)} at hidden channel {top.row}, token position(s) "
            f"{fmt_value(top.tokens)}."
        )
        out.append(f"Zeroing it alone raises the mean token loss by {g(top.loss_increase)} nats.")
        others = [sw for sw in sws if sw is not top]
        if others:
            out.append("The others: " + "; ".join(f"{where(sw)} = {g(sw.value)}" for sw in others) + ".")
    else:
        out.append(
            f"No super weight was confirmed in {scan.model}: no single down-projection weight turned out to hold "
            "the model's largest activation."
        )
    if scan.unconfirmed:
        out.append(
            f"{len(scan.unconfirmed)} further candidate(s) had a large activation but zeroing them did not hurt, "
            "so they are not counted as super weights."
        )
    for act in scan.super_activations[:3]:
        out.append(
            f"The super activation at hidden channel {act.channel} reaches {g(act.value)} after layer {act.layer} "
            f"(token position(s) {fmt_value(act.tokens)})."
        )
    out.append(f"It took {g(sum(v for k, v in scan.timings.items() if k.endswith('_s')))} s.")
    return out


def max_activations_caption(scan: ScanResult) -> str:
    text = (
        "Largest |value| entering (top) and leaving (bottom) each layer's down-projection, over the scan "
        "prompts; the dashed line marks the super weight's layer. "
    )
    layers = super_weight_layers(scan)
    by_layer = {s.layer: s for s in scan.layers}
    first = by_layer.get(layers[0]) if layers else None
    if first is None:
        return text + "No layer is marked because no super weight was confirmed."
    others = sorted(abs(s.max_output) for s in scan.layers if s.layer not in layers)
    median = others[len(others) // 2] if others else math.nan
    return text + (
        f"The spike at layer {layers[0]} is where the super weight turns a large input (channel "
        f"{first.input_channel}, |x| = {g(first.max_input)}) into an output of {g(first.max_output)} at channel "
        f"{first.output_channel}, {g(first.max_output / median)} times the median of the other layers "
        "(the paper's Figure 3)."
    )


def residual_caption(scan: ScanResult) -> str:
    acts = [a for a in scan.super_activations if a.residual]
    if not acts:
        return ""
    res = [abs(v) for v in acts[0].residual]
    peak = max(range(len(res)), key=lambda i: res[i])
    until = acts[0].persists_until
    text = (
        f"The magnitude of hidden channel {acts[0].channel} in the residual stream after each layer. "
        f"It peaks at {g(res[peak])} after layer {peak}"
    )
    if 0 <= until < len(res):
        text += f" and stays above half of its value until layer {until}: the skip connections carry it"
        if until + 1 < len(res):
            text += f"; after layer {until + 1} it is {g(res[until + 1])}"
    return text + "."


def row_caption(scan: ScanResult) -> str:
    """Is the super weight a lone outlier in its row, or one of many large weights?"""
    out = []
    for r in scan.rows:
        mags = sorted(abs(v) for v in r.values if v == v)
        if not mags or not r.marks:
            continue
        median = mags[len(mags) // 2] or math.nan
        top = max(abs(r.values[c]) for c in r.marks if c < len(r.values))
        big = sum(1 for v in mags if v >= 0.5 * top)
        out.append(
            f"{r.label}: the found weight is {g(top / median)} times the row's median |weight| ({g(median)}); "
            f"{big - 1} other of its {len(mags)} weights are at least half as large"
        )
    text = "|weight| along each super weight's row (log colour scale); circles mark the found weights."
    if out:
        text += (
            " "
            + "; ".join(out)
            + (
                ". Where many weights of a row are that large, holding out the single super weight barely changes "
                "a quantization range."
            )
        )
    return text


def strongest(weights: list[SuperWeight]) -> SuperWeight | None:
    return max(weights, key=lambda w: abs(w.value), default=None)


PAGES = {
    "scan": Page(
        "scan",
        read=ScanResult.from_dict,
        summary=summary,
        heading=lambda scan: scan.model,
        figures=(
            FigureSpec("scan_max_activations", "Activation maxima per layer", max_activations, max_activations_caption),
            FigureSpec("scan_residual", "Super activation in the residual stream", residual, residual_caption),
            FigureSpec("scan_row_heatmap", "The super weight's row", row_heatmap, row_caption),
        ),
    )
}
