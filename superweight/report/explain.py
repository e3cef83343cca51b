"""Sentences that say what each result shows, built from the numbers in a payload, never typed in.

``summary(command, payload)`` opens the report; ``captions(command, payload)`` goes under each figure.
Every function tolerates missing keys: a sentence that cannot be written is left out, not invented.
"""

from __future__ import annotations

from typing import Any


def fmt_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        if len(value) > 8:
            return f"[{len(value)} values]"
        return ", ".join(f"[{fmt_value(v)}]" if isinstance(v, list) else fmt_value(v) for v in value)
    if isinstance(value, dict):
        if any(isinstance(v, (dict, list)) for v in value.values()):
            return f"{{{len(value)} entries: see results.json}}"
        return "; ".join(f"{k}: {fmt_value(v)}" for k, v in list(value.items())[:8])
    return str(value)


def _g(value: Any, digits: int = 3) -> str:
    try:
        return f"{float(value):.{digits}g}"
    except (TypeError, ValueError):
        return str(value)


def _ppl_of(row: dict[str, Any]) -> tuple[str, float] | None:
    """The first perplexity of a row (wikitext2 preferred): (source, value)."""
    from superweight.report.style import num

    ppl = row.get("perplexity")
    if isinstance(ppl, dict) and ppl:
        key = "wikitext2" if "wikitext2" in ppl else next(iter(ppl))
        return key, num(ppl[key])
    if ppl is not None:
        return "text", num(ppl)
    return None


def _sw_where(sw: dict[str, Any]) -> str:
    module = sw.get("module") or f"layer {sw.get('layer')}"
    return f"{module} [row {sw.get('row')}, column {sw.get('col')}]"


def _scan_summary(p: dict[str, Any]) -> list[str]:
    model = p.get("model") or "the model"
    sws = [sw for sw in p.get("super_weights") or [] if sw.get("confirmed", True)]
    out = []
    if sws:
        top = max(sws, key=lambda sw: abs(float(sw.get("output_activation") or sw.get("value") or 0)))
        out.append(
            f"{model} has {len(sws)} super weight{'s' if len(sws) != 1 else ''}. The strongest is "
            f"{_sw_where(top)} with value {_g(top.get('value'))}: it multiplies an input of "
            f"{_g(top.get('input_activation'))} into an output of {_g(top.get('output_activation'))} "
            f"at hidden channel {top.get('row')}, token position(s) {fmt_value(top.get('tokens'))}."
        )
        if top.get("loss_increase") is not None:
            out.append(f"Zeroing it alone raises the mean token loss by {_g(top.get('loss_increase'))} nats.")
        others = [sw for sw in sws if sw is not top]
        if others:
            out.append("The others: " + "; ".join(f"{_sw_where(sw)} = {_g(sw.get('value'))}" for sw in others) + ".")
    else:
        out.append(
            f"No super weight was confirmed in {model}: no single down-projection weight turned out to hold "
            "the model's largest activation."
        )
    unconfirmed = p.get("unconfirmed") or [sw for sw in p.get("super_weights") or [] if sw.get("confirmed") is False]
    if unconfirmed:
        out.append(
            f"{len(unconfirmed)} further candidate(s) had a large activation but zeroing them did not hurt, "
            "so they are not counted as super weights."
        )
    for act in (p.get("super_activations") or [])[:3]:
        out.append(
            f"The super activation at hidden channel {act.get('channel')} reaches {_g(act.get('value'))} "
            f"after layer {act.get('layer')} (token position(s) {fmt_value(act.get('tokens'))})."
        )
    return out


def _scan_captions(p: dict[str, Any]) -> dict[str, str]:
    from superweight.report.style import num, super_weight_layers

    layers = super_weight_layers(p)
    rows = {int(r["layer"]): r for r in p.get("layers") or [] if r.get("layer") is not None}
    first = rows.get(layers[0]) if layers else None
    if first:
        others = [abs(num(r.get("max_output"))) for k, r in rows.items() if k not in layers]
        others.sort()
        median = others[len(others) // 2] if others else float("nan")
        spike = (
            f"The spike at layer {layers[0]} is where the super weight turns a large input (channel "
            f"{first.get('input_channel')}, |x| = {_g(abs(num(first.get('max_input'))))}) into an output of "
            f"{_g(abs(num(first.get('max_output'))))} at channel {first.get('output_channel')}, "
            f"{_g(abs(num(first.get('max_output'))) / median)} times the median of the other layers "
            "(the paper's Figure 3)."
        )
    else:
        spike = "No layer is marked because no super weight was confirmed."
    caps = {
        "scan_max_activations": "Largest |value| entering (top) and leaving (bottom) each layer's "
        "down-projection, over the scan prompts; the dashed line marks the super weight's layer. " + spike,
    }
    acts = [a for a in p.get("super_activations") or [] if a.get("residual")]
    if acts:
        res = [abs(num(v)) for v in acts[0]["residual"]]
        peak = max(range(len(res)), key=lambda i: res[i])
        until = acts[0].get("persists_until")
        text = (
            f"The magnitude of hidden channel {acts[0].get('channel')} in the residual stream after each "
            f"layer. It peaks at {_g(res[peak])} after layer {peak}"
        )
        if isinstance(until, int) and 0 <= until < len(res):
            text += f" and stays above half of its value until layer {until}: the skip connections carry it"
            if until + 1 < len(res):
                text += f"; after layer {until + 1} it is {_g(res[until + 1])}"
        caps["scan_residual"] = text + "."
    caps["scan_row_heatmap"] = (
        "|weight| along each super weight's row (log colour scale); circles mark the found weights. " + _row_sentence(p)
    )
    return caps


def _row_sentence(p: dict[str, Any]) -> str:
    """Is the super weight a lone outlier in its row, or one of many large weights?"""
    from superweight.report.figures import _row_values
    from superweight.report.style import MissingData

    try:
        rows, labels, marks = _row_values(p)
    except MissingData:
        return ""
    out = []
    for row, label, cols in zip(rows, labels, marks, strict=True):
        mags = sorted(abs(v) for v in row if v == v)
        if not mags or not cols:
            continue
        median = mags[len(mags) // 2] or float("nan")
        top = max(abs(row[c]) for c in cols if c < len(row))
        big = sum(1 for v in mags if v >= 0.5 * top)
        out.append(
            f"{label}: the found weight is {_g(top / median)} times the row's median |weight| "
            f"({_g(median)}); {big - 1} other of its {len(mags)} weights are at least half as large"
        )
    if not out:
        return ""
    return "; ".join(out) + (
        ". Where many weights of a row are that large, holding out the single super weight barely changes "
        "a quantization range."
    )


def _cond(p: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((c for c in p.get("conditions") or [] if c.get("name") == name), None)


def _ablate_summary(p: dict[str, Any]) -> list[str]:
    out = []
    orig, nosw, nosa = _cond(p, "original"), _cond(p, "no-sw"), _cond(p, "no-sw+sa")
    if orig and nosw and _ppl_of(orig) and _ppl_of(nosw):
        src, a = _ppl_of(orig)
        _, b = _ppl_of(nosw)
        out.append(f"Zeroing the super weights raises {src} perplexity from {_g(a)} to {_g(b)} ({_g(b / a)} times).")
        if nosa and _ppl_of(nosa):
            out.append(
                f"Restoring the super activation while the weights stay zeroed brings it to {_g(_ppl_of(nosa)[1])}."
            )
    if p.get("recovery") is not None:
        out.append(f"Restoring the super activation recovers {float(p['recovery']):.0%} of the damage.")
    for name, what in (("top-k", "the largest other weights"), ("random-k", "random weights")):
        c = _cond(p, name)
        if c and _ppl_of(c):
            out.append(f"Control: zeroing {what} instead gives perplexity {_g(_ppl_of(c)[1])}.")
    accs = {c.get("name"): c.get("accuracy") for c in p.get("conditions") or [] if c.get("accuracy")}
    if "original" in accs and "no-sw" in accs:
        mean = lambda d: sum(float(v) for v in d.values()) / len(d)  # noqa: E731
        out.append(
            f"Mean zero-shot accuracy over {len(accs['original'])} task(s): {mean(accs['original']):.3f} "
            f"originally, {mean(accs['no-sw']):.3f} without the super weights."
        )
    return out or ["The ablation results carry no original/no-sw pair to compare."]


def _scale_summary(p: dict[str, Any]) -> list[str]:
    from superweight.report.figures_eval import scale_points
    from superweight.report.style import MissingData

    try:
        points = scale_points(p)
    except MissingData:
        return ["The results carry no per-alpha measurements."]
    if all(p.get(k) is not None for k in ("metric", "best_alpha", "best_value", "baseline_value", "gain")):
        gain = float(p["gain"])
        shown = f"{gain:+.1%}" if str(p["metric"]).startswith("perplexity") else f"{gain:+.4f}"
        meaning = f" ({p['gain_meaning']})" if p.get("gain_meaning") else ""
        return [
            f"Over {len(points)} alphas the best {p['metric']} is {_g(p['best_value'], 4)} at alpha = "
            f"{float(p['best_alpha']):g}, against {_g(p['baseline_value'], 4)} at alpha = 1: "
            f"gain {shown}{meaning}."
        ]
    scored = [(float(pt["alpha"]), _ppl_of(pt)) for pt in points if pt.get("alpha") is not None and _ppl_of(pt)]
    if not scored:
        return [f"{len(points)} alphas were measured."]
    best = min(scored, key=lambda s: s[1][1])
    one = next((s for s in scored if s[0] == 1.0), None)
    text = f"Over {len(scored)} alphas the lowest {best[1][0]} perplexity, {_g(best[1][1])}, is at alpha = {best[0]:g}"
    if one:
        text += f", against {_g(one[1][1])} at alpha = 1 ({(one[1][1] - best[1][1]) / one[1][1]:.1%} lower)"
    return [text + "."]


def _quantize_summary(p: dict[str, Any]) -> list[str]:
    import math

    from superweight.report.style import is_activation_quant

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


def _attack_summary(p: dict[str, Any]) -> list[str]:
    from superweight.report.style import MissingData, attack_name, attack_rows, caught_label, damage

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


def _generic_summary(command: str, p: dict[str, Any]) -> list[str]:
    for key in ("ok", "passed", "verified", "match"):
        if isinstance(p.get(key), bool):
            verdict = "everything matches" if p[key] else "differences were found (listed below)"
            return [f"{command}: {verdict}."]
    return [f"The results of superweight {command} are listed below."]


def _compare_summary(p: dict[str, Any]) -> list[str]:
    out = []
    for run in p.get("runs") or []:
        sws = run.get("super_weights") or []
        name = run.get("model") or run.get("label")
        if not sws:
            out.append(f"{name}: no super weight confirmed ({run.get('command')} run {run.get('label')}).")
            continue
        n_layers = run.get("num_layers")
        where = "; ".join(
            f"{_sw_where(sw)} = {_g(sw.get('value'))}"
            + (
                f" (depth {int(sw['layer']) / max(n_layers - 1, 1):.0%})"
                if n_layers and sw.get("layer") is not None
                else ""
            )
            for sw in sws
        )
        out.append(f"{name}: {len(sws)} super weight(s): {where}.")
    return out


def summary(command: str, payload: dict[str, Any]) -> list[str]:
    """Sentences that say what the results of ``command`` show, built from the numbers in ``payload``."""
    try:
        if command == "scan":
            sentences = _scan_summary(payload)
        elif command == "ablate":
            sentences = _ablate_summary(payload)
        elif command == "scale":
            sentences = _scale_summary(payload)
        elif command == "quantize":
            sentences = _quantize_summary(payload)
        elif command == "attack":
            sentences = _attack_summary(payload)
        elif command == "diff":
            sentences = _diff_summary(payload)
        elif command == "verify":
            sentences = _verify_summary(payload)
        elif command == "compare":
            sentences = _compare_summary(payload)
        else:
            sentences = _generic_summary(command, payload)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError, IndexError) as exc:
        sentences = [f"(the summary could not be written: {type(exc).__name__}: {exc})"]
    timings = payload.get("timings")
    if isinstance(timings, dict) and timings:
        total = timings.get("total_s", sum(float(v) for v in timings.values() if isinstance(v, (int, float))))
        sentences.append(f"It took {_g(total)} s.")
    return sentences


def captions(command: str, payload: dict[str, Any]) -> dict[str, str]:
    """A caption per figure name: what is drawn and what it shows, with the numbers."""
    generic = {
        "ablate_metrics": "Each metric per condition (the paper's Table 1); perplexity on a log scale.",
        "ablate_super_activation": "The super activation's magnitude under each condition (the paper's "
        "Figure 4): zeroing the super weights removes it, restoring it puts it back by construction.",
        "ablate_token_shift": "Mean probability of the tokens that gained most when the super weights were "
        "zeroed (the paper's Figure 5): the mass moves to stopwords.",
        "scale_curve": "The metric as the super weights are multiplied by alpha (the paper's Figure 6); "
        "the dashed line marks the best alpha.",
        "quantize_block_size": "Perplexity against block size for each method (the paper's Figure 7): larger "
        "blocks mean fewer scales but wider ranges, which outliers stretch.",
        "quantize_pareto": "Every method and block size as a point at its true cost in bits per weight; "
        "the step line is the Pareto front: a method is better only if it is lower at equal bits.",
        "attack_damage": "Damage of each simulated attack, coloured by the first check that caught it.",
        "diff_changes": "The tensors that changed most between the two checkpoints.",
        "compare_max_output": "Max |down-projection output| per layer for each model, at relative depth; "
        "dashed lines mark each model's super weight layers.",
    }
    try:
        specific = _scan_captions(payload) if command == "scan" else {}
    except (KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError, IndexError):
        specific = {}
    return {**generic, **specific}
