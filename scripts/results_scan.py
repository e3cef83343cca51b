"""Scan the built-in models and write the results into docs/detect.md (block `scan`).

Reproduce with:  SUPERWEIGHT_DATA=... python scripts/results_scan.py [--models smollm2-135m,gemma3-270m] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from superweight import find_super_weights, load_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "detect.md"
START, END = "<!-- results:scan:start -->", "<!-- results:scan:end -->"


def _n(x: float, digits: int = 3) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


def scan_lines(spec: str) -> tuple[list[str], list[str], str]:
    lm = load_model(spec)
    result = find_super_weights(lm.model, lm.tokenizer, model_name=spec)
    rows, notes = [], []
    for w in result.super_weights + result.unconfirmed:
        ev = result.evidence_for(w)
        assert ev is not None
        verdict = f"yes ({ev.confirmed_by})" if w.confirmed else "no"
        lo, hi = ev.effect_interval or [float("nan")] * 2
        rows.append(
            f"| {spec} | {w.layer} | {w.row} | {w.col} | {w.value:.3f} | {w.output_activation:,.0f} | {ev.group} | "
            f"{_n(ev.share, 2)} | {_n(ev.loss_alone)} | {_n(ev.loss_marginal)} | {_n(ev.loss_leave_one_out)} | "
            f"{_n(ev.effect)} [{_n(lo)}, {_n(hi)}] | {ev.null_ratio:.3g} | {verdict} | {ev.label or ''} |"
        )
    for g in result.groups:
        shares = ", ".join(f"{c}: {s:.2f}" for c, s in zip(g.members, g.shares, strict=True))
        notes.append(
            f"- {spec}: group {g.group} (layer {g.layer}, row {g.row}, activation {g.activation:,.0f} at token "
            f"{g.token}): members {shares}; zeroed together +{g.joint_loss:.3f} nats."
        )
    if result.groups:
        notes.append(f"- {spec}: every candidate zeroed at once: +{result.set_loss:.3f} nats.")
    for a in result.super_activations:
        notes.append(
            f"- {spec}: super activation in layer {a.layer}, hidden channel {a.channel}, value {a.value:,.0f} at "
            f"token(s) {a.tokens}; it stays in the residual stream up to layer {a.persists_until} of "
            f"{len(result.layers) - 1}."
        )
    m = result.massive
    if m.get("builders"):
        built = "; ".join(
            f"layer {b['layer']} adds {b['added']:,.0f}"
            + (f" (down_proj {b['down_proj']:.3g} x `{b['norm']}` gain {b['gain']:.3g})" if "gain" in b else "")
            for b in m["builders"]
        )
        notes.append(
            f"- {spec}: no confirmed super weight. The residual stream's largest value is {m['value']:,.0f} "
            f"(hidden channel {m['channel']}, token {m['token']}, after layer {m['layer']}, "
            f"{m['ratio_to_median']:,.0f}x its token's median); it is built by {built}."
        )
        check = m.get("causal_check")
        if check:
            notes.append(
                f"  Causal check: `{check['parameter']}` {check['gain']:.3g} -> {check['set_to']:.3g} (the norm's "
                f"median gain) moves it {check['value_before']:,.0f} -> {check['value_after']:,.0f} and raises the "
                f"probe loss by {check['loss_increase']:.3f} nats."
            )
    f = result.fp16
    notes.append(
        f"- {spec}: largest |value| {f['max_abs']:,.0f} ({f['where']}, layer {f['layer']}): "
        + (
            "**overflows float16** (65,504)."
            if f["overflows_fp16"]
            else f"{f['headroom']:.1f}x below float16's 65,504."
        )
    )
    t = result.timings
    windows = result.probe["windows"]
    probe = f"{windows} x {result.probe['tokens'] // windows} tokens of {result.probe['source']}"
    return rows, notes, f"{spec}: probe {probe}, {t['forward_passes']} forward passes"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/detect.md")
    args = parser.parse_args()
    rows: list[str] = []
    notes: list[str] = []
    probes: list[str] = []
    for spec in args.models.split(","):
        r, n, p = scan_lines(spec)
        rows += r
        notes += n
        probes.append(p)
    text = "\n".join(
        [
            "Written by `python scripts/results_scan.py`. Losses are probe-loss increases (nats) with the weight",
            "zeroed alone, given the earlier candidates zeroed (marginal), and left out of the whole set; 'effect'",
            "is the one judged, with its 95% bootstrap interval over probe windows; 'null x' is the effect over",
            "the largest effect of magnitude-matched random weights of the same tensor. SmolLM2's weights are a",
            "dequantized Q4_1 GGUF (a 4-bit grid), Gemma 3's a Q4_K_M one.",
            "",
            "| model | layer | row | col | weight | output act | group | share | alone | marginal | leave-one-out "
            "| effect [95% CI] | null x | confirmed | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            *notes,
            "",
            *[f"- {p}." for p in probes],
        ]
    )
    print(text)
    if not args.no_write:
        doc = DOC.read_text(encoding="utf-8")
        if START not in doc or END not in doc:
            print(f"{DOC} has no result markers", file=sys.stderr)
            return 1
        head, rest = doc.split(START, 1)
        DOC.write_text(head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1], encoding="utf-8")
        print(f"wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
