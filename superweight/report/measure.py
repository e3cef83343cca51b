"""The ablate and scale pages: the paper's Table 1 and Figures 4-6, from typed results."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from superweight.measure.ablation import AblationResult, ConditionResult, ScalingResult
from superweight.report.explain import g
from superweight.report.pages import FigureSpec, Page
from superweight.report.style import MARK_COLOR, PALETTE, MissingData, maybe_log, new_figure
from superweight.report.tables import format_table

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _names(rows: list[dict[str, float]]) -> list[str]:
    return list(dict.fromkeys(name for row in rows for name in row))


def _grouped_bars(ax: Axes, groups: list[str], series: dict[str, list[float]]) -> None:
    n = max(len(series), 1)
    width = 0.8 / n
    for i, (label, values) in enumerate(series.items()):
        offsets = [x + (i - (n - 1) / 2) * width for x in range(len(groups))]
        ax.bar(offsets, [v if math.isfinite(v) else math.nan for v in values], width, label=label,
               color=PALETTE[i % len(PALETTE)])  # fmt: skip
        for x, v in zip(offsets, values, strict=True):
            if not math.isfinite(v):  # a diverged run: say so where its bar would be
                ax.annotate("∞" if v > 0 else "n/a", (x, 0.02), xycoords=("data", "axes fraction"), ha="center")
    ax.set_xticks(range(len(groups)), groups)


def _panels(rows: list[ConditionResult] | list) -> list[tuple[str, list[str]]]:
    ppl = _names([r.perplexity for r in rows])
    acc = _names([r.accuracy for r in rows])
    panels = [(group, names) for group, names in (("perplexity", ppl), ("accuracy", acc)) if names]
    if not panels:
        raise MissingData("the results have neither perplexity nor accuracy")
    return panels


# ---------------------------------------------------------------- ablate


def ablate_metrics(result: AblationResult) -> Figure:
    """Paper Table 1 as bars: perplexity (log) and zero-shot accuracy, per condition."""
    conds = result.conditions
    panels = _panels(conds)
    fig = new_figure(4.0 + 3.0 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (group, metrics) in zip(axes, panels, strict=True):
        series = {m: [getattr(c, group).get(m, math.nan) for c in conds] for m in metrics}
        _grouped_bars(ax, [c.name for c in conds], series)
        ax.set_xlabel("condition")
        if group == "perplexity":
            ax.set_yscale("log")
            ax.set_ylabel("perplexity (log scale, lower is better)")
        else:
            ax.set_ylabel("accuracy (higher is better)")
            ax.set_ylim(0, 1)
        ax.legend(loc="best")
        ax.tick_params(axis="x", labelrotation=20)
    fig.suptitle(f"Ablation: each metric per condition: {result.model}")
    return fig


def ablate_super_activation(result: AblationResult) -> Figure:
    """Paper Fig. 4: zeroing the super weight removes the super activation; restoring puts it back."""
    conds = [c for c in result.conditions if c.super_activation is not None]
    if not conds:
        raise MissingData("no super activation was found, so none was measured per condition")
    fig = new_figure(6.0, 3.6)
    ax = fig.subplots()
    values = [abs(c.super_activation) for c in conds]
    bars = ax.bar([c.name for c in conds], values, color=[PALETTE[i % len(PALETTE)] for i in range(len(conds))])
    ax.bar_label(bars, fmt="%.4g", fontsize=9)
    maybe_log(ax, values)
    ax.set_xlabel("condition")
    ax.set_ylabel("|super activation|")
    ax.set_title(f"Super activation per condition: {result.model}")
    ax.tick_params(axis="x", labelrotation=20)
    return fig


def ablate_token_shift(result: AblationResult) -> Figure:
    """Paper Fig. 5: without the super weight, probability mass moves to stopwords."""
    rows = result.token_shift[:15]
    if not rows:
        raise MissingData("the token-probability shift was not measured (it needs the original and no-sw conditions)")
    fig = new_figure(7.0, 1.5 + 0.28 * len(rows))
    ax = fig.subplots()
    ys = list(range(len(rows)))[::-1]
    ax.barh([y + 0.2 for y in ys], [r.p_original for r in rows], 0.4, label="original", color=PALETTE[0])
    ax.barh([y - 0.2 for y in ys], [r.p_edited for r in rows], 0.4, label="super weights zeroed", color=PALETTE[1])
    ax.set_yticks(ys, [repr(r.text) for r in rows])
    ax.set_xlabel("mean probability of the token")
    ax.set_ylabel("token")
    ax.set_title(f"Tokens that gain probability without the super weights: {result.model}")
    ax.legend(loc="lower right")
    return fig


def _first_ppl(row: ConditionResult) -> tuple[str, float] | None:
    return next(iter(row.perplexity.items()), None)


def ablate_summary(result: AblationResult) -> list[str]:
    out = []
    orig, nosw, nosa = (result.condition(n) for n in ("original", "no-sw", "no-sw+sa"))
    if orig and nosw and _first_ppl(orig) and _first_ppl(nosw):
        (src, a), (_, b) = _first_ppl(orig), _first_ppl(nosw)
        out.append(f"Zeroing the super weights raises {src} perplexity from {g(a)} to {g(b)} ({g(b / a)} times).")
        if nosa and _first_ppl(nosa):
            out.append(
                f"Restoring the super activation while the weights stay zeroed brings it to {g(_first_ppl(nosa)[1])}."
            )
    if result.recovery is not None:
        out.append(f"Restoring the super activation recovers {result.recovery:.0%} of the damage.")
    for name, what in (("top-k", "the largest other weights"), ("random-k", "random weights")):
        c = result.condition(name)
        if c and _first_ppl(c):
            out.append(f"Control: zeroing {result.k} of {what} instead gives perplexity {g(_first_ppl(c)[1])}.")
    if orig and nosw and orig.accuracy and nosw.accuracy:
        mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
        out.append(
            f"Mean zero-shot accuracy over {len(orig.accuracy)} task(s): {mean(orig.accuracy):.3f} originally, "
            f"{mean(nosw.accuracy):.3f} without the super weights."
        )
    out.append(f"It took {g(result.provenance.seconds)} s.")
    return out


# ---------------------------------------------------------------- scale


def scale_curve(result: ScalingResult) -> Figure:
    """Paper Fig. 6: the metric as the super weights are scaled, best alpha marked."""
    points = sorted(result.points, key=lambda p: p.alpha)
    alphas = [p.alpha for p in points]
    panels = _panels(points)
    fig = new_figure(4.0 + 3.0 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (group, metrics) in zip(axes, panels, strict=True):
        values: list[float] = []
        for i, m in enumerate(metrics):
            ys = [getattr(p, group).get(m, math.nan) for p in points]
            values += ys
            ax.plot(alphas, ys, marker="o", color=PALETTE[i % len(PALETTE)], label=m)
        if group == "perplexity":
            maybe_log(ax, values, ratio=20)
            ax.set_ylabel("perplexity (lower is better)")
        else:
            ax.set_ylabel("accuracy (higher is better)")
        ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":", label="alpha = 1 (original)")
        line = ax.axvline(
            result.best_alpha, color=MARK_COLOR, linestyle="--", label=f"best alpha = {result.best_alpha:g}"
        )
        line.set_gid("best-alpha")
        ax.set_xlabel("alpha (super weights scaled by)")
        ax.legend(loc="best")
    fig.suptitle(f"Scaling the super weights: {result.model}")
    return fig


def scale_summary(result: ScalingResult) -> list[str]:
    shown = f"{result.gain:+.1%}" if result.lower_is_better else f"{result.gain:+.4f}"
    return [
        f"Over {len(result.points)} alphas the best {result.metric} is {g(result.best_value, 4)} at alpha = "
        f"{result.best_alpha:g}, against {g(result.baseline_value, 4)} at alpha = 1: gain {shown} "
        f"({result.gain_meaning}).",
        f"It took {g(result.provenance.seconds)} s.",
    ]


# ---------------------------------------------------------------- terminal


def _metrics_table(first: str, labels: list, rows: list, title: str) -> str:
    """One line per condition (or alpha): perplexity per source, accuracy per task, the super activation."""
    sources = _names([r.perplexity for r in rows])
    tasks = _names([r.accuracy for r in rows])
    headers = [first, *(f"ppl {s}" for s in sources), *tasks, "super act."]
    cells = [
        [label, *(r.perplexity.get(s) for s in sources), *(r.accuracy.get(t) for t in tasks), r.super_activation]
        for label, r in zip(labels, rows, strict=True)
    ]
    return format_table(headers, cells, title=title)


def ablation_text(result: AblationResult) -> str:
    """The terminal view: the Table 1 grid, recovery, token shift, continuations."""
    sws = ", ".join(f"{w.module}[{w.row}, {w.col}]" for w in result.super_weights)
    out = f"{result.model}: super weight(s) {sws}\n"
    title = f"ablation (top-k / random-k: k={result.k}, {result.scope})"
    out += _metrics_table("condition", [c.name for c in result.conditions], result.conditions, title)
    if result.recovery is not None:
        out += f"\nrestoring the super activation recovers {result.recovery:.1%} of the loss zeroing added\n"
    if result.token_shift:
        shift = [[repr(t.text), t.p_original, t.p_edited, t.ratio] for t in result.token_shift[:10]]
        out += "\n" + format_table(
            ["token", "p original", "p no-sw", "ratio"], shift, title="tokens whose mean probability grew most"
        )
    for c in result.continuations:
        out += f"\n{c.prompt!r}\n  original: {c.original!r}\n  {c.condition + ':':<9} {c.edited!r}\n"
    hits = result.provenance.baseline_cache_hits
    out += f"\n{result.provenance.seconds:.0f} s" + (f"; baseline from cache: {', '.join(hits)}" if hits else "")
    return out + "\n"


def scaling_text(result: ScalingResult) -> str:
    """The terminal view: the metric per alpha and the best alpha's gain."""
    title = f"{result.model}: super weights scaled by alpha"
    out = _metrics_table("alpha", [p.alpha for p in result.points], result.points, title)
    shown = f"{result.gain:+.1%}" if result.lower_is_better else f"{result.gain:+.4f}"
    out += (
        f"\nbest alpha {result.best_alpha:g}: {result.metric} {result.best_value:.4g} "
        f"(alpha=1: {result.baseline_value:.4g}; gain {shown}, {result.gain_meaning})\n"
    )
    return out


def _fixed(text: str):
    return lambda _result: text


PAGES = {
    "ablate": Page(
        "ablate",
        read=AblationResult.from_dict,
        summary=ablate_summary,
        heading=lambda r: r.model,
        figures=(
            FigureSpec(
                "ablate_metrics",
                "Metrics per condition",
                ablate_metrics,
                _fixed("Each metric per condition (the paper's Table 1); perplexity on a log scale."),
            ),
            FigureSpec(
                "ablate_super_activation",
                "Super activation per condition",
                ablate_super_activation,
                _fixed(
                    "The super activation's magnitude under each condition (the paper's Figure 4): "
                    "zeroing the super weights removes it, restoring it puts it back by construction."
                ),
            ),
            FigureSpec(
                "ablate_token_shift",
                "Token-probability shift",
                ablate_token_shift,
                _fixed(
                    "Mean probability of the tokens that gained most when the super weights were "
                    "zeroed (the paper's Figure 5): the mass moves to stopwords."
                ),
            ),
        ),
    ),
    "scale": Page(
        "scale",
        read=ScalingResult.from_dict,
        summary=scale_summary,
        heading=lambda r: r.model,
        figures=(
            FigureSpec(
                "scale_curve",
                "Metric against alpha",
                scale_curve,
                _fixed(
                    "The metric as the super weights are multiplied by alpha (the paper's Figure 6); "
                    "the dashed line marks the best alpha."
                ),
            ),
        ),
    ),
}
