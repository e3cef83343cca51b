"""The guard pages: attack (damage and which check caught it), diff, verify, fingerprint.

(Reads the results documents as dicts until the guard's results are typed.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from superweight.report.explain import fmt_value
from superweight.report.explain import g as _g
from superweight.report.pages import FigureSpec, Page
from superweight.report.style import PALETTE, MissingData, maybe_log, new_figure, num

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def model_title(payload: dict[str, Any], what: str) -> str:
    model = payload.get("model")
    return f"{what}: {model}" if model else what


def ppl_value(row: dict[str, Any]) -> float:
    p = row.get("perplexity")
    if isinstance(p, dict):
        return num(p.get("wikitext2", next(iter(p.values()), None)))
    return num(p)


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


def _attack_summary(p: dict[str, Any]) -> list[str]:
    try:
        rows = attack_rows(p)
    except MissingData:
        return ["No attack results."]
    out = []
    if p.get("clean_perplexity") is not None:
        out.append(f"Clean perplexity: {_g(p['clean_perplexity'], 4)} over {p.get('eval_tokens', '?')} tokens.")
    for r in rows[:12]:
        value, label = damage(r)
        out.append(f"{attack_name(r)}: {label} {_g(value)}, {caught_label(r)}.")
    return out


def _diff_summary(p: dict[str, Any]) -> list[str]:
    tensors = p.get("tensors") or []
    changed = [t for t in tensors if t.get("changed")]
    out = [f"{len(changed)} of {len(tensors)} tensors differ between {p.get('model_a')} and {p.get('model_b')}."]
    if changed:
        top = max(changed, key=lambda t: float(t.get("rel_change") or 0))
        out.append(f"The largest relative change is {_g(top.get('rel_change'))} in {top.get('name')}.")
    for fate in (p.get("super_weights") or [])[:6]:
        out.append(
            f"Super weight layer {fate.get('layer')} [{fate.get('row')}, {fate.get('col')}]: "
            f"{fate.get('fate')} ({_g(fate.get('value_a'))} -> {_g(fate.get('value_b'))})."
        )
    return out + [str(n) for n in p.get("notes") or []]


def _verify_summary(p: dict[str, Any]) -> list[str]:
    checks = p.get("checks") or {}
    verdict = "matches its manifest" if p.get("ok") else "does NOT match its manifest"
    out = [f"{p.get('model', 'The model')} {verdict}: " + "; ".join(f"{k} {v}" for k, v in checks.items()) + "."]
    changed = [sw for sw in p.get("super_weights") or [] if sw.get("status") == "changed"]
    for sw in changed[:6]:
        out.append(
            f"Super weight layer {sw.get('layer')} [{sw.get('row')}, {sw.get('col')}] changed from "
            f"{_g(sw.get('old_value'))} to {_g(sw.get('new_value'))} "
            f"(bits flipped: {fmt_value(sw.get('flipped_bits'))})."
        )
    if p.get("changed"):
        out.append(f"{len(p['changed'])} tensor(s) changed; they are listed below.")
    return out + [str(n) for n in p.get("notes") or []]


def _fixed(text: str):
    return lambda _result: text


def _fingerprint_summary(p: dict[str, Any]) -> list[str]:
    return [
        f"Manifest {p.get('manifest')} for {p['model'].get('spec')}: {p.get('num_tensors')} tensors, "
        f"{len(p.get('super_weights') or [])} super weight(s), signed: {p.get('signed')}."
    ]


ATTACK_CAPTION = "Damage of each simulated attack, coloured by the first check that caught it."


def _diff_heading(doc: dict[str, Any]) -> str:
    return f"{doc['model_a']} vs {doc['model_b']}"


PAGES = {
    "attack": Page(
        "attack",
        read=lambda doc: doc,
        summary=_attack_summary,
        heading=lambda doc: doc["model"],
        figures=(FigureSpec("attack_damage", "Damage per attack", attack_damage, _fixed(ATTACK_CAPTION)),),
    ),
    "diff": Page(
        "diff",
        read=lambda doc: doc,
        summary=_diff_summary,
        heading=_diff_heading,
        figures=(
            FigureSpec(
                "diff_changes",
                "Largest changes",
                diff_changes,
                _fixed("The tensors that changed most between the two checkpoints."),
            ),
        ),
    ),
    "verify": Page("verify", read=lambda doc: doc, summary=_verify_summary, heading=lambda doc: doc["model"]),
    "fingerprint": Page(
        "fingerprint", read=lambda doc: doc, summary=_fingerprint_summary, heading=lambda doc: doc["model"]["spec"]
    ),
}
