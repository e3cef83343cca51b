"""Reproduce the quantization results in docs/quantize.md (tables + perplexity-vs-bits figure).

    python scripts/results_quantize.py           # SmolLM2, 8k WikiText-2 test tokens (1-2 h on 2 cores)
    python scripts/results_quantize.py --max-tokens 2048 --seq-len 512 --quick   # smaller

Runs ``superweight quantize`` for 4 and 3 bits over every method and block, plus W8A8, writes the run
folders under runs/quantize-*/, the figure docs/quantize_ppl_vs_bpw.png, and the tables between the
markers in docs/quantize.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "quantize.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
METHODS = "naive,sw,sw+clip,row,sparse:0.005,hqq,hqq+sw"


def _run(argv: list[str]) -> dict:
    from superweight.cli.main import main

    out = Path(argv[argv.index("--out") + 1])
    if main(argv) != 0:
        sys.exit(f"superweight {' '.join(argv)} failed")
    return json.loads((out / "results.json").read_text())


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by any other at fewer or equal bits (lower perplexity is better)."""
    front, best = [], math.inf
    for bpw, ppl in sorted(points):
        if ppl < best:
            front.append((bpw, ppl))
            best = ppl
    return front


def figure(payloads: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = [r for p in payloads for r in p["results"] if not r["method"].startswith("w8a8")]
    for method in sorted({r["method"] for r in rows}):
        pts = [(r["bits_per_weight"], r["perplexity"]["wikitext2"]) for r in rows if r["method"] == method]
        ax.scatter(*zip(*pts, strict=True), label=method, s=22)
    front = pareto([(r["bits_per_weight"], r["perplexity"]["wikitext2"]) for r in rows])
    ax.plot(*zip(*front, strict=True), "k--", lw=1, label="Pareto front")
    ax.axhline(payloads[0]["baseline"]["perplexity"]["wikitext2"], color="grey", lw=1, label="unquantized")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (codes + scales + sparse part)")
    ax.set_ylabel("WikiText-2 perplexity")
    ax.set_title(f"{payloads[0]['model']}: RTN methods around super weights")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ppl(row: dict) -> float:
    return row["perplexity"]["wikitext2"]


def findings(payloads: list[dict], w8: dict) -> list[str]:
    """What the measurements show, as sentences computed from them (never typed by hand)."""
    base = payloads[0]["baseline"]["perplexity"]["wikitext2"]
    out = []
    for payload in payloads:
        rows = payload["results"]
        bits = rows[0]["bits"]
        by = {(r["method"], str(r["block"])): r for r in rows}
        blocks = list(dict.fromkeys(str(r["block"]) for r in rows))
        lossless = [b for b in blocks if by.get(("naive", b)) and abs(_ppl(by[("naive", b)]) / base - 1) < 1e-3]
        if lossless:
            out.append(
                f"{bits}-bit naive RTN with block {', '.join(lossless)} reproduces the unquantized perplexity "
                f"exactly (KL {by[('naive', lossless[0])]['kl']:.1e}): the built-in model is itself dequantized "
                "from a block-32 asymmetric 4-bit GGUF (Q4_1), so its weights already lie on that grid."
            )
        for method, what in (("sw", "holding out the super weight"), ("row", "holding out its whole channel")):
            gains = [
                (b, _ppl(by[("naive", b)]) / _ppl(by[(method, b)]))
                for b in blocks
                if (method, b) in by and ("naive", b) in by and b not in lossless
            ]
            if gains:
                best = max(gains, key=lambda g: g[1])
                out.append(
                    f"{bits}-bit, {what} ({method}) changes naive perplexity by a factor of "
                    f"{min(g[1] for g in gains):.2f}-{best[1]:.2f} across blocks "
                    f"(best: block {best[0]}; >1 means better)."
                )
        for b in blocks:
            if b in lossless:
                continue
            cands = [r for r in rows if str(r["block"]) == b]
            win = min(cands, key=_ppl)
            naive = by.get(("naive", b))
            if naive:
                out.append(
                    f"{bits}-bit block {b}: best is {win['method']} ({_ppl(win):.4g} at {win['bits_per_weight']:.3f} "
                    f"bits/weight) against naive {_ppl(naive):.4g}."
                )
        front = pareto([(r["bits_per_weight"], _ppl(r)) for r in rows])
        names = [
            next(f"{r['method']}/{r['block']}" for r in rows if (r["bits_per_weight"], _ppl(r)) == pt) for pt in front
        ]
        out.append(f"{bits}-bit Pareto front (fewest bits for a given perplexity): {', '.join(names)}.")
    w = {r["method"]: _ppl(r) for r in w8["results"] if r["method"].startswith("w8a8")}
    if w:
        out.append(
            "W8A8: " + ", ".join(f"{m.split(':')[1]} {v:.4g}" for m, v in w.items()) + f" (unquantized {base:.4g})."
        )
    return out


def table(payload: dict) -> str:
    lines = ["| method | bits | block | bits/weight | perplexity | KL |", "|---|---:|---|---:|---:|---:|"]
    for r in sorted(payload["results"], key=lambda r: (-r["bits"], str(r["block"]), r["bits_per_weight"])):
        kl = "-" if r.get("kl") is None else f"{r['kl']:.4f}"
        lines.append(
            f"| {r['method']} | {r['bits']} | {r['block']} | {r['bits_per_weight']:.3f} | "
            f"{r['perplexity']['wikitext2']:.2f} | {kl} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--quick", action="store_true", help="4-bit, blocks 128 and channel, no HQQ")
    ap.add_argument("--from-runs", action="store_true", help="rewrite the docs from the saved runs/ folders")
    opts = ap.parse_args()
    common = [opts.model, "--data-dir", opts.data_dir, "--max-tokens", str(opts.max_tokens),
              "--seq-len", str(opts.seq_len), "-q"]  # fmt: skip
    runs_dir = REPO / "runs"
    scan_dir = runs_dir / f"scan-{opts.model}"
    from superweight.cli.main import main as cli

    bits = ["4"] if opts.quick else ["4", "3"]
    blocks = "128,channel" if opts.quick else "32,128,512,channel,tensor"
    methods = "naive,sw,sw+clip,row,sparse:0.005" if opts.quick else METHODS
    payloads = []
    w8_dir = runs_dir / f"quantize-{opts.model}-w8a8"
    if opts.from_runs:
        for b in bits:
            payloads.append(json.loads((runs_dir / f"quantize-{opts.model}-{b}bit" / "results.json").read_text()))
        w8 = json.loads((w8_dir / "results.json").read_text())
    else:
        cli(["scan", opts.model, "--out", str(scan_dir), "-q"])
        common += ["--scan", str(scan_dir / "results.json")]
        for b in bits:
            out = runs_dir / f"quantize-{opts.model}-{b}bit"
            payloads.append(_run(["quantize", *common, "--bits", b, "--block", blocks, "--methods", methods,
                                  "--out", str(out)]))  # fmt: skip
        w8 = _run(["quantize", *common, "--bits", "8", "--block", "tensor", "--methods", "naive", "--act", "w8a8",
                   "--out", str(w8_dir)])  # fmt: skip
    figure(payloads, DOC.parent / "quantize_ppl_vs_bpw.png")
    base = payloads[0]["baseline"]["perplexity"]["wikitext2"]
    data = payloads[0]["data"]
    cmd = "python scripts/results_quantize.py " + " ".join(a for a in sys.argv[1:] if a != "--from-runs")
    body = [
        f"Model `{opts.model}`, WikiText-2 test, {data['tokens']} tokens in windows of {data['seq_len']} "
        f"(sha256 {data['sha256'][:12]}), unquantized perplexity **{base:.2f}**. "
        f"Super weights used: {payloads[0]['super_weights']}. Reproduce with `{cmd.strip()}`.",
        "",
        "What the measurements show (sentences computed by the script from the tables below):",
        "",
        *[f"- {line}" for line in findings(payloads, w8)],
        "",
        *[table(p) + "\n" for p in payloads],
        "W8A8 (per-tensor INT8 weights, per-token INT8 inputs of every linear):",
        "",
        table(w8),
        "",
        "![perplexity against bits per weight](quantize_ppl_vs_bpw.png)",
    ]
    text = DOC.read_text(encoding="utf-8")
    if START not in text or END not in text:
        sys.exit(f"{DOC} lacks the {START} / {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    from superweight.io import atomic_write_text

    atomic_write_text(DOC, head + START + "\n" + "\n".join(body) + "\n" + END + tail)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
