"""The quantize page: perplexity by block size (the paper's Figure 7), the Pareto front, W8A8; the table.

Everything here reads a typed :class:`~superweight.quant.result.QuantizationResult`, one key per value:
perplexities on the result's ``source``, W8A8 variants told apart by ``Variant.is_activation``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from superweight.quant.result import QuantizationResult, Variant, pareto_front
from superweight.report.explain import g
from superweight.report.pages import FigureSpec, Page
from superweight.report.style import PALETTE, MissingData, maybe_log, new_figure, series_style
from superweight.report.tables import format_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BLOCK_WORD_ORDER = {"channel": 0, "tensor": 1}  # after every group size: wider ranges to the right


def block_order(block: str) -> tuple[int, float]:
    return (0, float(block)) if block.isdigit() else (1, BLOCK_WORD_ORDER.get(block, 2))


def _title(result: QuantizationResult, what: str) -> str:
    return f"{what}: {result.model}"


def _weight_only(result: QuantizationResult) -> list[Variant]:
    rows = result.weight_only()
    if not rows:
        raise MissingData("the quantization results hold no weight-only variants")
    return rows


def _baseline_line(ax, result: QuantizationResult, color: str = "black") -> float:
    base = result.ppl(result.baseline)
    ax.axhline(base, color=color, linewidth=0.9, linestyle=":", label=f"unquantized ({base:.2f})")
    return base


def quantize_block_size(result: QuantizationResult) -> Figure:
    """Paper Fig. 7: perplexity against block size per method (log scale); larger blocks to the right."""
    rows = _weight_only(result)
    blocks = sorted({r.block for r in rows}, key=block_order)
    if len(blocks) < 2:
        raise MissingData("only one block size was measured; a curve needs two or more")
    fig = new_figure(7.0, 4.0)
    ax = fig.subplots()
    series: dict[str, dict[str, float]] = {}
    for r in rows:
        series.setdefault(f"{r.method} ({r.bits}-bit)", {})[r.block] = result.ppl(r)
    for i, (label, points) in enumerate(series.items()):
        ax.plot([blocks.index(b) for b in blocks if b in points], [points[b] for b in blocks if b in points],
                label=label, **series_style(i))  # fmt: skip
    _baseline_line(ax, result)
    ax.set_yscale("log")
    ax.set_xticks(range(len(blocks)), blocks)
    ax.set_xlabel("block size (weights sharing a scale)")
    ax.set_ylabel(f"{result.source} perplexity (log scale)")
    ax.set_title(_title(result, "Round-to-nearest quantization by block size"))
    ax.legend(loc="best", ncols=2 if len(series) > 5 else 1)
    return fig


def quantize_pareto(result: QuantizationResult) -> Figure:
    """Perplexity against bits per weight (overheads included): a method wins only at equal bits."""
    rows = _weight_only(result)
    fig = new_figure(7.0, 4.0)
    ax = fig.subplots()
    for i, method in enumerate(dict.fromkeys(r.method for r in rows)):
        pts = [(r.bits_per_weight, result.ppl(r)) for r in rows if r.method == method]
        style = series_style(i)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=style["color"], marker=style["marker"],
                   s=style["markersize"] ** 2, label=method, zorder=3)  # fmt: skip
    front = pareto_front((r.bits_per_weight, result.ppl(r)) for r in rows)
    if front:
        line = ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linewidth=1,
                       label="Pareto front")[0]  # fmt: skip
        line.set_gid("pareto-front")
    _baseline_line(ax, result, "grey")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (incl. scales, zero points, sparse part)")
    ax.set_ylabel(f"{result.source} perplexity (log scale)")
    ax.set_title(_title(result, "Perplexity at equal bits"))
    ax.legend(loc="best")
    return fig


def quantize_activation(result: QuantizationResult) -> Figure:
    """W8A8: perplexity per method (naive, super activation held out, SmoothQuant) against unquantized."""
    rows = result.activation_variants()
    if not rows:
        raise MissingData("the quantization results hold no W8A8 (activation) variants")
    values = [result.ppl(r) for r in rows]
    fig = new_figure(6.0, 3.6)
    ax = fig.subplots()
    bars = ax.bar([r.method.removeprefix("w8a8:") for r in rows], [v if math.isfinite(v) else math.nan for v in values],
                  color=[PALETTE[i % len(PALETTE)] for i in range(len(rows))])  # fmt: skip
    ax.bar_label(bars, fmt="%.4g", fontsize=9)
    base = _baseline_line(ax, result)
    ax.legend(loc="best")
    maybe_log(ax, [*values, base], ratio=20)
    ax.set_xlabel("W8A8 method (per-tensor INT8 weights, per-token INT8 activations)")
    ax.set_ylabel(f"{result.source} perplexity")
    ax.set_title(_title(result, "Activation quantization"))
    return fig


def _lowest(result: QuantizationResult, rows: list[Variant]) -> Variant:
    return min(rows, key=lambda r: result.ppl(r) if math.isfinite(result.ppl(r)) else math.inf)


def quantize_summary(result: QuantizationResult) -> list[str]:
    """What the sweep shows, as sentences computed from its numbers."""
    out = [f"Unquantized {result.source} perplexity: {g(result.ppl(result.baseline), 4)}."]
    weight = result.weight_only()
    for bits in sorted({r.bits for r in weight}):
        at = [r for r in weight if r.bits == bits]
        best = _lowest(result, at)
        out.append(
            f"At {bits} bits the lowest perplexity is {g(result.ppl(best), 4)}: method {best.method}, "
            f"block {best.block}, {g(best.bits_per_weight, 3)} bits per weight."
        )
        for block in dict.fromkeys(r.block for r in at):
            naive = [r for r in at if r.method == "naive" and r.block == block]
            others = [r for r in at if r.method != "naive" and r.block == block]
            if naive and others:
                top = _lowest(result, others)
                out.append(
                    f"{bits}-bit, block {block}: naive {g(result.ppl(naive[0]), 4)}, "
                    f"best other {top.method} {g(result.ppl(top), 4)}."
                )
    act = result.activation_variants()
    if act:
        listed = ", ".join(f"{r.method} {g(result.ppl(r), 4)}" for r in act)
        out.append(f"W8A8 (weights and activations in INT8): {listed}.")
    return out


def quantization_text(result: QuantizationResult) -> str:
    """The terminal view: one line per variant (bits per weight, perplexity per source, KL, accuracy)."""
    sources = list(result.baseline.perplexity)
    tasks = list(result.baseline.accuracy)
    headers = ["method", "bits", "block", "bits/w", *(f"ppl {s}" for s in sources), "KL", *tasks]
    cells = [["unquantized", None, None, None, *(result.baseline.perplexity.get(s) for s in sources), None,
              *(result.baseline.accuracy.get(t) for t in tasks)]]  # fmt: skip
    for r in result.variants:
        cells.append([r.method, r.bits, r.block, r.bits_per_weight, *(r.perplexity.get(s) for s in sources),
                      None if r.kl is None else r.kl.mean, *(r.accuracy.get(t) for t in tasks)])  # fmt: skip
    out = format_table(headers, cells, title=f"{result.model}: quantization ({result.modules} linears)")
    for r in result.variants:
        if r.checkpoint is not None:
            out += f"checkpoint {r.checkpoint['path']}: {r.checkpoint['bytes']['total']:,} bytes\n"
    return out


def _fixed(text: str):
    return lambda _result: text


PAGES = {
    "quantize": Page(
        "quantize",
        read=QuantizationResult.from_dict,
        summary=quantize_summary,
        heading=lambda r: r.model,
        figures=(
            FigureSpec(
                "quantize_block_size",
                "Perplexity by block size",
                quantize_block_size,
                _fixed(
                    "Perplexity against block size for each method (the paper's Figure 7): larger "
                    "blocks mean fewer scales but wider ranges, which outliers stretch."
                ),
            ),
            FigureSpec(
                "quantize_pareto",
                "Perplexity against bits per weight",
                quantize_pareto,
                _fixed(
                    "Every method and block size as a point at its true cost in bits per weight; "
                    "the step line is the Pareto front: a method is better only if it is lower at equal "
                    "bits."
                ),
            ),
            FigureSpec(
                "quantize_activation",
                "W8A8 activation quantization",
                quantize_activation,
                _fixed("W8A8: perplexity per method against the unquantized model."),
            ),
        ),
    )
}
