"""Figures of ablate and scale (paper Table 1, Figs. 4-6), quantize (Fig. 7), attack, diff."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from superweight.report.style import (
    MARK_COLOR,
    NOT_CAUGHT,
    PALETTE,
    MissingData,
    attack_name,
    attack_rows,
    baseline_ppl,
    block_order,
    caught_label,
    damage,
    maybe_log,
    model_title,
    need,
    new_figure,
    num,
    ppl_value,
    quant_results,
    series_style,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


# ---------------------------------------------------------------- ablate / scale


def _conditions(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return need(payload, "conditions", "ablation conditions")


def _metric_names(rows: list[dict[str, Any]], group: str) -> list[str]:
    names: list[str] = []
    for row in rows:
        for name in row.get(group) or {}:
            if name not in names:
                names.append(name)
    return names


def _grouped_bars(ax: Axes, groups: list[str], series: dict[str, list[float]]) -> None:
    n = max(len(series), 1)
    width = 0.8 / n
    for i, (label, values) in enumerate(series.items()):
        offsets = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        finite = [v if math.isfinite(v) else math.nan for v in values]
        ax.bar(offsets, finite, width, label=label, color=PALETTE[i % len(PALETTE)])
        for x, v in zip(offsets, values, strict=True):
            if not math.isfinite(v):  # a diverged run: say so where its bar would be
                ax.annotate("∞" if v > 0 else "n/a", (x, 0.02), xycoords=("data", "axes fraction"), ha="center")
    ax.set_xticks(range(len(groups)), groups)


def ablate_metrics(payload: dict[str, Any]) -> Figure:
    """Paper Table 1 as bars: perplexity (log) and zero-shot accuracy, per condition."""
    conds = _conditions(payload)
    names = [str(c.get("name")) for c in conds]
    ppl = _metric_names(conds, "perplexity")
    acc = _metric_names(conds, "accuracy")
    if not ppl and not acc:
        raise MissingData("the conditions have neither perplexity nor accuracy")
    panels = [(g, m) for g, m in (("perplexity", ppl), ("accuracy", acc)) if m]
    fig = new_figure(4.0 + 3.0 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (group, metrics) in zip(axes, panels, strict=True):
        series = {m: [num((c.get(group) or {}).get(m)) for c in conds] for m in metrics}
        _grouped_bars(ax, names, series)
        ax.set_xlabel("condition")
        if group == "perplexity":
            ax.set_yscale("log")
            ax.set_ylabel("perplexity (log scale, lower is better)")
        else:
            ax.set_ylabel("accuracy (higher is better)")
            ax.set_ylim(0, 1)
        ax.legend(loc="best")
        ax.tick_params(axis="x", labelrotation=20)
    fig.suptitle(model_title(payload, "Ablation: each metric per condition"))
    return fig


def ablate_super_activation(payload: dict[str, Any]) -> Figure:
    """Paper Fig. 4: zeroing the super weight removes the super activation; restoring puts it back."""
    conds = [c for c in _conditions(payload) if c.get("super_activation") is not None]
    if not conds:
        raise MissingData("no condition records the super activation's magnitude ('super_activation')")
    fig = new_figure(6.0, 3.6)
    ax = fig.subplots()
    values = [abs(num(c["super_activation"])) for c in conds]
    bars = ax.bar(
        [str(c.get("name")) for c in conds],
        values,
        color=[PALETTE[i % len(PALETTE)] for i in range(len(conds))],
    )
    ax.bar_label(bars, fmt="%.4g", fontsize=9)
    maybe_log(ax, values)
    ax.set_xlabel("condition")
    ax.set_ylabel("|super activation|")
    ax.set_title(model_title(payload, "Super activation per condition"))
    ax.tick_params(axis="x", labelrotation=20)
    return fig


def _token_shift_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    shift = payload.get("token_shift") or payload.get("token_probability_shift")
    if isinstance(shift, dict):
        shift = shift.get("tokens") or shift.get("top") or shift.get("increased")
    if not shift:
        raise MissingData("the results have no token-probability shift ('token_shift')")
    return list(shift)


def ablate_token_shift(payload: dict[str, Any]) -> Figure:
    """Paper Fig. 5: without the super weight, probability mass moves to stopwords."""
    rows = _token_shift_rows(payload)[:15]
    labels, before, after = [], [], []
    for r in rows:
        labels.append(repr(str(r.get("text", r.get("token", "?")))))
        before.append(num(r.get("p_original", r.get("original"))))
        after.append(num(r.get("p_edited", r.get("no_sw"))))
    fig = new_figure(7.0, 1.5 + 0.28 * len(rows))
    ax = fig.subplots()
    ys = list(range(len(rows)))[::-1]
    ax.barh([y + 0.2 for y in ys], before, 0.4, label="original", color=PALETTE[0])
    ax.barh([y - 0.2 for y in ys], after, 0.4, label="super weights zeroed", color=PALETTE[1])
    ax.set_yticks(ys, labels)
    ax.set_xlabel("mean probability of the token")
    ax.set_ylabel("token")
    ax.set_title(model_title(payload, "Tokens that gain probability without the super weights"))
    ax.legend(loc="lower right")
    return fig


def scale_points(payload: dict[str, Any]) -> list[dict[str, Any]]:
    for key in ("alphas", "results", "points", "scales"):
        value = payload.get(key)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return value
    raise MissingData("the results have no per-alpha measurements ('alphas')")


def scale_curve(payload: dict[str, Any]) -> Figure:
    """Paper Fig. 6: the metric as the super weights are scaled, best alpha marked."""
    points = sorted(scale_points(payload), key=lambda p: num(p.get("alpha")))
    alphas = [num(p.get("alpha")) for p in points]
    ppl = _metric_names(points, "perplexity")
    acc = _metric_names(points, "accuracy")
    panels = [(g, m) for g, m in (("perplexity", ppl), ("accuracy", acc)) if m]
    if not panels:
        raise MissingData("the alpha points have neither perplexity nor accuracy")
    fig = new_figure(4.0 + 3.0 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    best = payload.get("best_alpha")
    for ax, (group, metrics) in zip(axes, panels, strict=True):
        values: list[float] = []
        for i, m in enumerate(metrics):
            ys = [num((p.get(group) or {}).get(m)) for p in points]
            values += ys
            ax.plot(alphas, ys, marker="o", color=PALETTE[i % len(PALETTE)], label=m)
        if group == "perplexity":
            maybe_log(ax, values, ratio=20)
            ax.set_ylabel("perplexity (lower is better)")
        else:
            ax.set_ylabel("accuracy (higher is better)")
        ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":", label="alpha = 1 (original)")
        if best is not None:
            line = ax.axvline(num(best), color=MARK_COLOR, linestyle="--", label=f"best alpha = {num(best):g}")
            line.set_gid("best-alpha")
        ax.set_xlabel("alpha (super weights scaled by)")
        ax.legend(loc="best")
    fig.suptitle(model_title(payload, "Scaling the super weights"))
    return fig


# ---------------------------------------------------------------- quantize


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


def attack_damage(payload: dict[str, Any]) -> Figure:
    """Damage per attack, coloured by the set of checks that caught it (grey: none did)."""
    from matplotlib.patches import Patch

    rows = attack_rows(payload)
    groups = list(dict.fromkeys(caught_label(r) for r in rows))
    groups.sort(key=lambda g: (g == NOT_CAUGHT, g))
    color = {g: ("#999999" if g == NOT_CAUGHT else PALETTE[i % len(PALETTE)]) for i, g in enumerate(groups)}
    values = [damage(r)[0] for r in rows]
    fig = new_figure(max(6.0, 0.7 * len(rows) + 3), 4.4)
    ax = fig.subplots()
    bars = ax.bar(range(len(rows)), values, color=[color[caught_label(r)] for r in rows])
    for bar, r in zip(bars, rows, strict=True):
        bar.set_gid(caught_label(r))
    ax.bar_label(bars, fmt="%.3g", fontsize=8)
    maybe_log(ax, values, ratio=20)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(rows)), [attack_name(r) for r in rows], rotation=25, ha="right", fontsize=8)
    ax.set_xlabel("attack")
    ax.set_ylabel(damage(rows[0])[1])
    ax.legend(handles=[Patch(color=color[g], label=g) for g in groups], loc="best")
    ax.set_title(model_title(payload, "Damage per attack, by the checks that caught it"))
    return fig


def _change_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    rows = payload.get("tensors") or payload.get("changed") or payload.get("changes")
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
        raise MissingData("the results list no changed tensors")
    return rows


def diff_changes(payload: dict[str, Any]) -> Figure:
    """The tensors that changed most (relative norm of the change), largest on top."""
    rows = [r for r in _change_rows(payload) if num(r.get("rel_change", r.get("relative_change"))) > 0]
    if not rows:
        raise MissingData("no tensor changed between the two checkpoints")
    rows = sorted(rows, key=lambda r: -num(r.get("rel_change", r.get("relative_change"))))[:20]
    values = [num(r.get("rel_change", r.get("relative_change"))) for r in rows]
    fig = new_figure(7.0, 1.5 + 0.28 * len(rows))
    ax = fig.subplots()
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, values, color=PALETTE[0])
    ax.set_yticks(ys, [str(r.get("name", r.get("tensor", "?"))) for r in rows], fontsize=8)
    if min(values) > 0 and max(values) / min(values) > 100:
        ax.set_xscale("log")
    ax.set_xlabel("relative change ||B - A|| / ||A||")
    ax.set_ylabel("tensor")
    ax.set_title(model_title(payload, "Largest changes between the checkpoints"))
    return fig
