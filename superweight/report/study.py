"""The study pages: recovery after a lost super weight, and prevention by training (docs/study.md)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from superweight.report.explain import g
from superweight.report.pages import FigureSpec, Page
from superweight.report.style import PALETTE, MissingData, new_figure, series_style
from superweight.report.tables import format_table
from superweight.study.prevention import PreventionResult
from superweight.study.recovery import RecoveryResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.0f}%"


# ------------------------------------------------------------------------------------------ recovery


def recovery_curve(result: RecoveryResult) -> Figure:
    """The share of the perplexity (and accuracy) loss recovered per step, beside the references."""
    fig = new_figure(7.5, 4.0)
    ax = fig.subplots()
    metrics = [("nll", "perplexity (nats)")]
    if result.references["original"].mean_accuracy is not None:
        metrics.append(("acc", "mean zero-shot accuracy"))
    drawn = False
    for i, (metric, label) in enumerate(metrics):
        curve = result.curve(metric)
        steps = [c[0] for c in curve]
        for j, (index, against) in enumerate(((1, "vs fine-tuned control"), (2, "vs untouched original"))):
            values = [math.nan if c[index] is None else c[index] for c in curve]
            if all(math.isnan(v) for v in values) or (index == 1 and not result.control):
                continue
            ax.plot(steps, values, label=f"fine-tuning, {label}, {against}", **series_style(2 * i + j))
            drawn = True
    if not drawn:
        raise MissingData("zeroing the super weights did not raise the loss, so there is no loss to recover")
    refs = [("restored-activation", "restore the super activation"),
            ("final-restored-weight", "fine-tuned, then super weights restored")]  # fmt: skip
    for k, (name, label) in enumerate(refs):
        share = result.reference_share(name)
        if share is not None and math.isfinite(share):
            ax.axhline(share, color=PALETTE[4 + k], linestyle=":", label=f"{label} ({_pct(share)})")
    ax.axhline(result.seed_recovery, color="grey", linestyle="--", linewidth=1, label="the seed's ~40%")
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("share of the damage recovered")
    ax.set_title(f"Recovery after zeroing the super weights: {result.model} ({result.settings.method})")
    ax.legend(loc="best", fontsize=8)
    return fig


def recovery_metrics(result: RecoveryResult) -> Figure:
    """Perplexity (and accuracy) per step: the damaged model and the control, with the step-0 references."""
    has_acc = result.references["original"].mean_accuracy is not None
    fig = new_figure(7.5 if not has_acc else 11.0, 3.8)
    axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
    panels = [("perplexity", lambda p: p.perplexity)]
    if has_acc:
        panels.append(("mean zero-shot accuracy", lambda p: p.mean_accuracy))
    for ax, (label, get) in zip(axes, panels, strict=True):
        for i, (name, points) in enumerate((("damaged, fine-tuned", result.damaged),
                                            ("undamaged, fine-tuned (control)", result.control))):  # fmt: skip
            if points:
                ax.plot([p.step for p in points], [get(p) for p in points], label=name, **series_style(i))
        for k, name in enumerate(("original", "restored-activation")):
            value = get(result.references[name]) if name in result.references else None
            if value is not None:
                ax.axhline(value, color=PALETTE[4 + k], linestyle=":", label=f"{name} (step 0)")
        if label == "perplexity":
            ax.set_yscale("log")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel(label)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"Test-split metrics while fine-tuning: {result.model}")
    return fig


def recovery_weights(result: RecoveryResult) -> Figure:
    """Do the zeroed weights come back? Their values per step, and the super activation's magnitude."""
    fig = new_figure(11.0, 3.8)
    left, right = fig.subplots(1, 2)
    steps = [p.step for p in result.damaged]
    for i, sw in enumerate(result.super_weights):
        style = series_style(i)
        label = f"layer {sw.layer} [{sw.row}, {sw.col}]"
        left.plot(steps, [p.weights[i] for p in result.damaged], label=label, **style)
        left.axhline(result.original_values[i], color=style["color"], linestyle=":", linewidth=1)
    left.axhline(0, color="black", linewidth=0.6)
    left.set_xlabel("fine-tuning step")
    left.set_ylabel("value (dotted: the original)")
    left.set_title("zeroed super weights while fine-tuning")
    left.legend(loc="best", fontsize=8)
    if result.damaged[0].super_activation is None:
        right.set_axis_off()
        right.text(0.5, 0.5, "no super activation was found", ha="center")
    else:
        for i, (name, points) in enumerate((("damaged", result.damaged), ("control", result.control))):
            if points:
                right.plot([p.step for p in points], [p.super_activation for p in points], label=name,
                           **series_style(i))  # fmt: skip
        original = result.references["original"].super_activation
        right.axhline(original, color=PALETTE[4], linestyle=":", label="original")
        right.set_xlabel("fine-tuning step")
        right.set_ylabel("|super activation|")
        right.set_title("super activation")
        right.legend(loc="best", fontsize=8)
    return fig


def recovery_summary(result: RecoveryResult) -> list[str]:
    orig, dmg = result.references["original"], result.references["damaged"]
    last = result.damaged[-1]
    out = [
        f"Zeroing {len(result.super_weights)} super weight(s) raises test perplexity from {g(orig.perplexity)} "
        f"to {g(dmg.perplexity)}; after {last.step} steps of {result.settings.method} fine-tuning it is "
        f"{g(last.perplexity)}."
    ]
    curve = result.curve("nll")
    if curve[-1][1] is not None and result.control:
        ctrl = result.control[-1]
        out.append(
            f"The undamaged model fine-tuned the same way reaches {g(ctrl.perplexity)}, so fine-tuning recovered "
            f"{_pct(curve[-1][1])} of the loss (in nats) that zeroing added; counted against the untouched "
            f"original instead it would be {_pct(curve[-1][2])}."
        )
    sa = result.reference_share("restored-activation")
    if sa is not None:
        out.append(f"Restoring only the super activation recovers {_pct(sa)}.")
    final = result.reference_share("final-restored-weight")
    if final is not None:
        out.append(f"Putting the super weights back into the fine-tuned damaged model recovers {_pct(final)}.")
    moved = ", ".join(f"{g(v)} (was {g(o)})" for v, o in zip(last.weights, result.original_values, strict=True))
    out.append(f"The zeroed weights' values after fine-tuning: {moved}.")
    out.append(f"The seed article reports about {_pct(result.seed_recovery)} recovered.")
    return out


def recovery_text(result: RecoveryResult) -> str:
    """The terminal view: one row per evaluation."""
    control = {p.step: p for p in result.control}
    shares = {c[0]: c for c in result.curve("nll")}
    rows = []
    for name, p in result.references.items():
        rows.append([name, 0, g(p.perplexity, 4), g(p.mean_accuracy), g(p.super_activation), g(p.weights[0]), ""])
    for p in result.damaged:
        c = control.get(p.step)
        share = f"{_pct(shares[p.step][1])} (control ppl {g(c.perplexity, 4) if c else '-'})"
        rows.append(["fine-tuned damaged", p.step, g(p.perplexity, 4), g(p.mean_accuracy), g(p.super_activation),
                     g(p.weights[0]), share])  # fmt: skip
    if result.final_restored_weight is not None:
        p = result.final_restored_weight
        rows.append(["+ sw restored", p.step, g(p.perplexity, 4), g(p.mean_accuracy), g(p.super_activation),
                     g(p.weights[0]), _pct(result.reference_share("final-restored-weight"))])  # fmt: skip
    headers = ["model state", "step", "ppl", "mean acc", "super act.", "weight[0]", "recovered"]
    return format_table(headers, rows, title=f"{result.model}: recovery ({result.settings.method})") + "\n"


def _fixed(text: str):
    return lambda _result: text


# fmt: off
PAGES = {
    "study-recovery": Page(
        "study-recovery",
        read=RecoveryResult.from_dict,
        summary=recovery_summary,
        heading=lambda r: r.model,
        figures=(
            FigureSpec("recovery_curve", "Share of the damage recovered", recovery_curve,
                       _fixed("1 - (damaged - control) / (damaged at step 0 - original), in nats of test loss; the "
                              "dotted lines are references measured in the same run.")),
            FigureSpec("recovery_metrics", "Metrics while fine-tuning", recovery_metrics,
                       _fixed("Test-split perplexity (log) and zero-shot accuracy per step.")),
            FigureSpec("recovery_weights", "Zeroed weights and the super activation", recovery_weights,
                       _fixed("Left: the zeroed coordinates' values (through the LoRA adapter when there is one). "
                              "Right: the super activation's magnitude on the first detection prompt.")),
        ),
    ),
}
# fmt: on


# ---------------------------------------------------------------------------------------- prevention


def prevention_curves(result: PreventionResult) -> Figure:
    """Per variant over training: the largest activation over the median (log), and test perplexity."""
    fig = new_figure(11.0, 3.8)
    left, right = fig.subplots(1, 2)
    for i, v in enumerate(result.variants):
        steps = [s.step for s in v.snapshots]
        left.plot(steps, [s.max_ratio for s in v.snapshots], label=v.name, **series_style(i))
        right.plot(steps, [s.perplexity for s in v.snapshots], label=v.name, **series_style(i))
        for s in v.snapshots:
            if s.super_weights:
                left.annotate("SW", (s.step, s.max_ratio), textcoords="offset points", xytext=(0, 6), ha="center",
                              fontsize=7)  # fmt: skip
    left.axhline(result.massive_ratio, color="grey", linestyle="--", linewidth=1,
                 label=f"massive ({result.massive_ratio:g}x median)")  # fmt: skip
    left.set_yscale("log")
    left.set_xlabel("training step")
    left.set_ylabel("max |h| / median |h| (largest layer)")
    left.set_title("residual-stream outliers ('SW': a super weight confirmed)")
    left.legend(loc="best", fontsize=8)
    right.set_yscale("log")
    right.set_xlabel("training step")
    right.set_ylabel("test perplexity (bytes)")
    right.set_title("what each variant costs")
    right.legend(loc="best", fontsize=8)
    fig.suptitle(f"Prevention: {result.model}")
    return fig


def prevention_layers(result: PreventionResult) -> Figure:
    """At the last checkpoint: max|h| / median|h| per layer, per variant."""
    if not result.variants or not result.variants[0].snapshots[-1].ratios:
        raise MissingData("no residual-stream measurement")
    fig = new_figure(7.0, 3.6)
    ax = fig.subplots()
    for i, v in enumerate(result.variants):
        ratios = v.final.ratios
        ax.plot(range(len(ratios)), ratios, label=f"{v.name} (step {v.final.step})", **series_style(i))
    ax.axhline(result.massive_ratio, color="grey", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("decoder layer (output)")
    ax.set_ylabel("max |h| / median |h|")
    ax.set_title("Residual-stream outliers per layer at the end of training")
    ax.legend(loc="best", fontsize=8)
    return fig


def prevention_summary(result: PreventionResult) -> list[str]:
    s = result.settings
    out = [
        f"{len(result.variants)} variant(s) of a {s.layers}-layer, {s.hidden}-wide Llama trained from scratch for "
        f"{s.train.steps} steps of {s.train.batch_size} x {s.train.seq_len} bytes (seed {s.train.seed})."
    ]
    for v in result.variants:
        f = v.final
        first_sw, first_massive = v.first_super_weight(), v.first_massive()
        sw = f"a super weight confirmed from step {first_sw}" if first_sw is not None else "no super weight confirmed"
        massive = (f"massive from step {first_massive}" if first_massive is not None
                   else f"never massive (largest ratio {g(max(x.max_ratio for x in v.snapshots))})")  # fmt: skip
        cost = result.cost(v.name)
        price = "" if v.name == "baseline" or cost is None else f", perplexity x{g(cost)} the baseline's"
        out.append(f"{v.name}: final perplexity {g(f.perplexity)}{price}; max|h|/median {g(f.max_ratio)}; "
                   f"{massive}; {sw}.")  # fmt: skip
    if not any(v.first_massive() is not None or v.first_super_weight() is not None for v in result.variants):
        out.append(
            "Nothing massive formed at this scale, with or without a regularizer: a negative result. Massive "
            "activations are reported in models of ~100 M parameters and more, trained on billions of tokens "
            "(Sun et al. 2024); a test of prevention needs that scale (a GPU: raise --hidden, --layers, --steps)."
        )
    return out


def prevention_text(result: PreventionResult) -> str:
    rows = []
    for v in result.variants:
        for s in v.snapshots:
            sws = "; ".join(f"L{w['layer']}[{w['row']},{w['col']}]={g(w['value'])}" for w in s.super_weights)
            rows.append([v.name, s.step, g(s.train_loss, 4), g(s.perplexity, 4), g(s.max_activation), g(s.max_ratio),
                         g(s.max_down_output), sws or "-", s.candidates])  # fmt: skip
    headers = ["variant", "step", "train loss", "test ppl", "max |h|", "max/median", "max down out", "super weights",
               "unconfirmed"]  # fmt: skip
    return format_table(headers, rows, title=f"{result.model}: prevention") + "\n"


PAGES["study-prevention"] = Page(
    "study-prevention",
    read=PreventionResult.from_dict,
    summary=prevention_summary,
    heading=lambda r: r.model,
    figures=(
        FigureSpec("prevention_curves", "Outliers and perplexity while training", prevention_curves,
                   _fixed("Left: the largest residual-stream activation over the median, per checkpoint (log); the "
                          "dashed line marks 'massive'. Right: test perplexity per checkpoint.")),
        FigureSpec("prevention_layers", "Outliers per layer", prevention_layers,
                   _fixed("max |h| / median |h| after each decoder layer at the last checkpoint.")),
    ),
)  # fmt: skip
