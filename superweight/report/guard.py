"""The guard pages: attack (damage and which check caught it), diff, verify, fingerprint, repair.

Each page reads its typed result (``AttackReport``, ``DiffReport``, ``VerifyReport``,
``FingerprintResult``, ``RepairResult``) once; every sentence and figure reads one field per value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from superweight.guard.attacks import AttackReport, AttackResult
from superweight.guard.diff import DiffReport
from superweight.guard.fingerprint import FingerprintResult
from superweight.guard.quantized_attacks import QuantAttackReport
from superweight.guard.repair import RepairResult
from superweight.guard.verify import VerifyReport
from superweight.report.explain import fmt_value
from superweight.report.explain import g as _g
from superweight.report.pages import FigureSpec, Page
from superweight.report.style import PALETTE, MissingData, maybe_log, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NOT_CAUGHT = "not caught"
DAMAGE_LABEL = "perplexity / clean perplexity"


def caught_label(row: AttackResult) -> str:
    checks = [k for k, v in row.caught.items() if v]
    return f"caught by {', '.join(checks)}" if checks else NOT_CAUGHT


def attack_damage(report: AttackReport) -> Figure:
    """Damage per attack, coloured by the set of checks that caught it (grey: none did)."""
    from matplotlib.patches import Patch

    rows = report.results
    if not rows:
        raise MissingData("the results list no attacks")
    groups = list(dict.fromkeys(caught_label(r) for r in rows))
    groups.sort(key=lambda g: (g == NOT_CAUGHT, g))
    color = {g: ("#999999" if g == NOT_CAUGHT else PALETTE[i % len(PALETTE)]) for i, g in enumerate(groups)}
    values = [r.ratio for r in rows]
    fig = new_figure(max(6.0, 0.7 * len(rows) + 3), 4.4)
    ax = fig.subplots()
    bars = ax.bar(range(len(rows)), values, color=[color[caught_label(r)] for r in rows])
    for bar, r in zip(bars, rows, strict=True):
        bar.set_gid(caught_label(r))
    ax.bar_label(bars, fmt="%.3g", fontsize=8)
    maybe_log(ax, values, ratio=20)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(rows)), [r.attack for r in rows], rotation=25, ha="right", fontsize=8)
    ax.set_xlabel("attack")
    ax.set_ylabel(DAMAGE_LABEL)
    ax.legend(handles=[Patch(color=color[g], label=g) for g in groups], loc="best")
    ax.set_title(f"Damage per attack, by the checks that caught it: {report.model}")
    return fig


def diff_changes(report: DiffReport) -> Figure:
    """The tensors that changed most (relative norm of the change), largest on top."""
    rows = sorted((t for t in report.tensors if t.rel_change > 0), key=lambda t: -t.rel_change)[:20]
    if not rows:
        raise MissingData("no tensor changed between the two checkpoints")
    values = [t.rel_change for t in rows]
    fig = new_figure(7.0, 1.5 + 0.28 * len(rows))
    ax = fig.subplots()
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, values, color=PALETTE[0])
    ax.set_yticks(ys, [t.name for t in rows], fontsize=8)
    if min(values) > 0 and max(values) / min(values) > 100:
        ax.set_xscale("log")
    ax.set_xlabel("relative change ||B - A|| / ||A||")
    ax.set_ylabel("tensor")
    ax.set_title(f"Largest changes between the checkpoints: {report.model_a} vs {report.model_b}")
    return fig


def _attack_summary(r: AttackReport) -> list[str]:
    if not r.results:
        return ["No attack results."]
    out = [f"Clean perplexity: {_g(r.clean_perplexity, 4)} over {r.eval_tokens} tokens."]
    for a in r.results[:12]:
        out.append(f"{a.attack}: {DAMAGE_LABEL} {_g(a.ratio)}, {caught_label(a)}.")
    return out


def _diff_summary(r: DiffReport) -> list[str]:
    changed = [t for t in r.tensors if t.changed]
    out = [f"{len(changed)} of {len(r.tensors)} tensors differ between {r.model_a} and {r.model_b}."]
    if changed:
        top = max(changed, key=lambda t: t.rel_change)
        out.append(f"The largest relative change is {_g(top.rel_change)} in {top.name}.")
    for fate in r.super_weights[:6]:
        out.append(f"Super weight layer {fate.layer} [{fate.row}, {fate.col}]: {fate.fate} "
                   f"({_g(fate.value_a)} -> {_g(fate.value_b)}).")  # fmt: skip
    return out + list(r.notes)


def _verify_summary(r: VerifyReport) -> list[str]:
    verdict = "matches its manifest" if r.ok else "does NOT match its manifest"
    out = [f"{r.model} {verdict}: " + "; ".join(f"{k} {v}" for k, v in r.checks.items()) + "."]
    for sw in [s for s in r.super_weights if s.status == "changed"][:6]:
        out.append(f"Super weight layer {sw.layer} [{sw.row}, {sw.col}] changed from {_g(sw.old_value)} to "
                   f"{_g(sw.new_value)} (bits flipped: {fmt_value(sw.flipped_bits)}).")  # fmt: skip
    if r.changed:
        out.append(f"{len(r.changed)} tensor(s) changed; they are listed below.")
    return out + list(r.notes)


def _fingerprint_summary(r: FingerprintResult) -> list[str]:
    m = r.manifest
    return [f"Manifest {r.manifest_path} for {m.model.spec}: {m.model.num_tensors} tensors, "
            f"{len(m.super_weights)} super weight(s), signed: {r.signed}."]  # fmt: skip


def _repair_summary(r: RepairResult) -> list[str]:
    out = [f"{r.model} repaired into {r.out}: {len(r.restored)} super weight(s) and "
           f"{len(r.tensors_restored)} tensor(s) restored; bit-exact to the manifest: {r.verified}."]  # fmt: skip
    if r.perplexity_before is not None and r.perplexity_after is not None:
        out.append(f"Perplexity {_g(r.perplexity_before, 4)} before the repair, {_g(r.perplexity_after, 4)} after.")
    return out + [f"Still differs: {name}." for name in r.unrepaired] + list(r.notes)


def _quantized_summary(r: QuantAttackReport) -> list[str]:
    out = [f"Bit flips in the block scales and zero points of {r.model} ({r.format}, {r.dtype})."]
    for target in ("super weight", "random"):
        rates = ", ".join(f"{c} {r.rate(target, c):.0%}" for c in ("hash", "super_weight", "canary"))
        out.append(f"Attacks on {target} blocks caught: {rates}.")
    return out


def _fixed(text: str):
    return lambda _result: text


ATTACK_CAPTION = "Damage of each simulated attack, coloured by the checks that caught it."
DIFF_CAPTION = "The tensors that changed most between the two checkpoints."


def fingerprint_heading(r: FingerprintResult) -> str:
    return r.manifest.model.spec


PAGES = {
    "attack": Page(
        "attack",
        read=AttackReport.from_dict,
        summary=_attack_summary,
        heading=lambda r: r.model,
        figures=(FigureSpec("attack_damage", "Damage per attack", attack_damage, _fixed(ATTACK_CAPTION)),),
    ),
    "diff": Page(
        "diff",
        read=DiffReport.from_dict,
        summary=_diff_summary,
        heading=lambda r: f"{r.model_a} vs {r.model_b}",
        figures=(FigureSpec("diff_changes", "Largest changes", diff_changes, _fixed(DIFF_CAPTION)),),
    ),
    "quantized-attack": Page(
        "quantized-attack", read=QuantAttackReport.from_dict, summary=_quantized_summary, heading=lambda r: r.model
    ),
    "repair": Page("repair", read=RepairResult.from_dict, summary=_repair_summary, heading=lambda r: r.model),
    "verify": Page("verify", read=VerifyReport.from_dict, summary=_verify_summary, heading=lambda r: r.model),
    "fingerprint": Page(
        "fingerprint", read=FingerprintResult.from_dict, summary=_fingerprint_summary, heading=fingerprint_heading
    ),
}
