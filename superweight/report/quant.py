"""The quantize page: perplexity by block size (the paper's Figure 7), the Pareto front, W8A8.

(Reads the results document as a dict until the quantization sweep returns a typed result.)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from superweight.report.explain import g as _g
from superweight.report.pages import FigureSpec, Page
from superweight.report.style import PALETTE, MissingData, maybe_log, new_figure, num, series_style

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def need(payload: dict[str, Any], key: str, what: str) -> Any:
    value = payload.get(key)
    if value in (None, [], {}):
        raise MissingData(f"the results have no {what} ({key!r})")
    return value


def model_title(payload: dict[str, Any], what: str) -> str:
    model = payload.get("model")
    return f"{what}: {model}" if model else what


def _ppl_of(row: dict[str, Any]) -> tuple[str, float] | None:
    ppl = row.get("perplexity")
    if isinstance(ppl, dict) and ppl:
        key = "wikitext2" if "wikitext2" in ppl else next(iter(ppl))
        return key, num(ppl[key])
    return None


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


def quantize_block_size(payload: dict[str, Any]) -> Figure:
    """Paper Fig. 7: perplexity against block size per method (log scale); larger blocks to the right."""
    rows = quant_results(payload)
    blocks = sorted({str(r.get("block")) for r in rows}, key=block_order)
    if len(blocks) < 2:
        raise MissingData("only one block size was measured; a curve needs two or more")
    fig = new_figure(7.0, 4.0)
    ax = fig.subplots()
    series: dict[str, dict[str, float]] = {}
    for r in rows:
        label = f"{r['method']} ({r['bits']}-bit)" if r.get("bits") is not None else str(r["method"])
        series.setdefault(label, {})[str(r.get("block"))] = ppl_value(r)
    for i, (label, points) in enumerate(series.items()):
        xs = [blocks.index(b) for b in blocks if b in points]
        ys = [points[b] for b in blocks if b in points]
        ax.plot(xs, ys, label=label, **series_style(i))
    base = baseline_ppl(payload)
    if base is not None:
        ax.axhline(base, color="black", linewidth=0.9, linestyle=":", label=f"unquantized ({base:.2f})")
    ax.set_yscale("log")
    ax.set_xticks(range(len(blocks)), blocks)
    ax.set_xlabel("block size (weights sharing a scale)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(model_title(payload, "Round-to-nearest quantization by block size"))
    ax.legend(loc="best", ncols=2 if len(series) > 5 else 1)
    return fig


def quantize_pareto(payload: dict[str, Any]) -> Figure:
    """Perplexity against bits per weight (overheads included): a method wins only at equal bits."""
    rows = [r for r in quant_results(payload) if r.get("bits_per_weight") is not None]
    if not rows:
        raise MissingData("the quantization results carry no bits per weight")
    fig = new_figure(7.0, 4.0)
    ax = fig.subplots()
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    for i, method in enumerate(methods):
        pts = [(num(r["bits_per_weight"]), ppl_value(r)) for r in rows if str(r["method"]) == method]
        style = series_style(i)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=style["color"], marker=style["marker"],
                   s=style["markersize"] ** 2, label=method, zorder=3)  # fmt: skip
    all_pts = [(num(r["bits_per_weight"]), ppl_value(r)) for r in rows]
    pts = sorted(p for p in all_pts if math.isfinite(p[0]) and math.isfinite(p[1]) and p[1] > 0)
    front, best = [], math.inf
    for x, y in pts:
        if y < best:
            front.append((x, y))
            best = y
    if front:
        line = ax.step(
            [p[0] for p in front],
            [p[1] for p in front],
            where="post",
            color="black",
            linewidth=1,
            label="Pareto front",
        )[0]
        line.set_gid("pareto-front")
    base = baseline_ppl(payload)
    if base is not None:
        ax.axhline(base, color="grey", linewidth=0.9, linestyle=":", label=f"unquantized ({base:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (incl. scales, zero points, sparse part)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(model_title(payload, "Perplexity at equal bits"))
    ax.legend(loc="best")
    return fig


def quantize_activation(payload: dict[str, Any]) -> Figure:
    """W8A8: perplexity per method (naive, super activation held out, SmoothQuant) against unquantized."""
    rows = quant_results(payload, activation=True)
    names = [str(r["method"]).removeprefix("w8a8:") for r in rows]
    values = [ppl_value(r) for r in rows]
    fig = new_figure(6.0, 3.6)
    ax = fig.subplots()
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(rows))]
    bars = ax.bar(names, [v if math.isfinite(v) else math.nan for v in values], color=colors)
    ax.bar_label(bars, fmt="%.4g", fontsize=9)
    base = baseline_ppl(payload)
    if base is not None:
        ax.axhline(base, color="black", linewidth=0.9, linestyle=":", label=f"unquantized ({base:.2f})")
        ax.legend(loc="best")
    maybe_log(ax, values + ([base] if base else []), ratio=20)
    ax.set_xlabel("W8A8 method (per-tensor INT8 weights, per-token INT8 activations)")
    ax.set_ylabel("perplexity")
    ax.set_title(model_title(payload, "Activation quantization"))
    return fig


def _quantize_summary(p: dict[str, Any]) -> list[str]:
    import math

    def ppl(r: dict[str, Any]) -> float:
        value = _ppl_of(r)[1]
        return value if math.isfinite(value) else math.inf

    rows = [r for r in p.get("results") or [] if isinstance(r, dict) and _ppl_of(r)]
    weight_rows = [r for r in rows if not is_activation_quant(r)]
    out = []
    base = _ppl_of(p.get("baseline") or {}) if p.get("baseline") else None
    if base:
        out.append(f"Unquantized {base[0]} perplexity: {_g(base[1], 4)}.")
    for bits in sorted({r.get("bits") for r in weight_rows if r.get("bits") is not None}):
        at = [r for r in weight_rows if r.get("bits") == bits]
        best = min(at, key=ppl)
        bpw = f", {_g(best.get('bits_per_weight'), 3)} bits per weight" if best.get("bits_per_weight") else ""
        out.append(
            f"At {bits} bits the lowest perplexity is {_g(_ppl_of(best)[1], 4)}: "
            f"method {best.get('method')}, block {best.get('block')}{bpw}."
        )
        for block in dict.fromkeys(str(r.get("block")) for r in at):
            naive = [r for r in at if r.get("method") == "naive" and str(r.get("block")) == block]
            others = [r for r in at if r.get("method") != "naive" and str(r.get("block")) == block]
            if naive and others:
                top = min(others, key=ppl)
                out.append(
                    f"{bits}-bit, block {block}: naive {_g(_ppl_of(naive[0])[1], 4)}, "
                    f"best other {top.get('method')} {_g(_ppl_of(top)[1], 4)}."
                )
    act = [r for r in rows if is_activation_quant(r)]
    if act:
        listed = ", ".join(f"{r.get('method')} {_g(_ppl_of(r)[1], 4)}" for r in act)
        out.append(f"W8A8 (weights and activations in INT8): {listed}.")
    return out or ["The quantization results carry no perplexities."]


def _fixed(text: str):
    return lambda _result: text


PAGES = {
    "quantize": Page(
        "quantize",
        read=lambda doc: doc,
        summary=_quantize_summary,
        heading=lambda doc: doc["model"],
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
