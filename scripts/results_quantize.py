"""Reproduce the quantization results in docs/quantize.md (tables + perplexity-vs-bits figure).

    python scripts/results_quantize.py --max-tokens 4096   # SmolLM2, 4k WikiText-2 test tokens (~1-2 h on 2 cores)
    python scripts/results_quantize.py --max-tokens 2048 --seq-len 512 --quick   # smaller
    python scripts/results_quantize.py --from-runs         # rewrite the docs from the saved runs/ folders

Runs the library's quantization sweep (``superweight.quant.sweep.run_quantization``) for 4 and 3 bits over
every method and block, plus W8A8, writes the run folders under runs/quantize-*/, the figure
docs/quantize_ppl_vs_bpw.png, and the tables between the markers in docs/quantize.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "quantize.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
METHODS = ("naive", "sw", "sw+clip", "row", "sparse:0.005", "hqq", "hqq+sw")


def figure(results: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from superweight.quant.result import pareto_front

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = [(res, r) for res in results for r in res.weight_only()]
    for method in sorted({r.method for _, r in rows}):
        pts = [(r.bits_per_weight, res.ppl(r)) for res, r in rows if r.method == method]
        ax.scatter(*zip(*pts, strict=True), label=method, s=22)
    front = pareto_front((r.bits_per_weight, res.ppl(r)) for res, r in rows)
    ax.plot(*zip(*front, strict=True), "k--", lw=1, label="Pareto front")
    ax.axhline(results[0].ppl(results[0].baseline), color="grey", lw=1, label="unquantized")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (codes + scales + sparse part)")
    ax.set_ylabel("WikiText-2 perplexity")
    ax.set_title(f"{results[0].model}: RTN methods around super weights")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def findings(results: list, w8) -> list[str]:
    """What the measurements show, as sentences computed from them (never typed by hand)."""
    from superweight.quant.result import pareto_front

    base = results[0].ppl(results[0].baseline)
    out = []
    for res in results:
        rows = res.weight_only()
        bits = rows[0].bits
        by = {(r.method, r.block): r for r in rows}
        blocks = list(dict.fromkeys(r.block for r in rows))
        lossless = [b for b in blocks if ("naive", b) in by and abs(res.ppl(by[("naive", b)]) / base - 1) < 1e-3]
        if lossless:
            kl = by[("naive", lossless[0])].kl
            out.append(
                f"{bits}-bit naive RTN with block {', '.join(lossless)} reproduces the unquantized perplexity "
                f"exactly (KL {kl.mean if kl else float('nan'):.1e}): the built-in model is itself dequantized "
                "from a block-32 asymmetric 4-bit GGUF (Q4_1), so its weights already lie on that grid."
            )
        for method, what in (("sw", "holding out the super weight"), ("row", "holding out its whole channel")):
            gains = [(b, res.ppl(by[("naive", b)]) / res.ppl(by[(method, b)]))
                     for b in blocks if (method, b) in by and ("naive", b) in by and b not in lossless]  # fmt: skip
            if gains:
                best = max(gains, key=lambda g: g[1])
                out.append(
                    f"{bits}-bit, {what} ({method}) changes naive perplexity by a factor of "
                    f"{min(g[1] for g in gains):.2f}-{best[1]:.2f} across blocks "
                    f"(best: block {best[0]}; >1 means better)."
                )
        for b in blocks:
            naive = by.get(("naive", b))
            if b in lossless or naive is None:
                continue
            win = min((r for r in rows if r.block == b), key=res.ppl)
            out.append(
                f"{bits}-bit block {b}: best is {win.method} ({res.ppl(win):.4g} at {win.bits_per_weight:.3f} "
                f"bits/weight) against naive {res.ppl(naive):.4g}."
            )
        front = pareto_front((r.bits_per_weight, res.ppl(r)) for r in rows)
        names = [next(f"{r.method}/{r.block}" for r in rows if (r.bits_per_weight, res.ppl(r)) == pt) for pt in front]
        out.append(f"{bits}-bit Pareto front (fewest bits for a given perplexity): {', '.join(names)}.")
    listed = ", ".join(f"{r.method.removeprefix('w8a8:')} {w8.ppl(r):.4g}" for r in w8.activation_variants())
    if listed:
        out.append(f"W8A8: {listed} (unquantized {base:.4g}).")
    return out


def table(res) -> str:
    lines = ["| method | bits | block | bits/weight | perplexity | KL |", "|---|---:|---|---:|---:|---:|"]
    for r in sorted(res.variants, key=lambda r: (-r.bits, r.block, r.bits_per_weight)):
        kl = "-" if r.kl is None else f"{r.kl.mean:.4f}"
        lines.append(f"| {r.method} | {r.bits} | {r.block} | {r.bits_per_weight:.3f} | {res.ppl(r):.2f} | {kl} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--data-dir", default=None, help="data folder (default: $SUPERWEIGHT_DATA)")
    ap.add_argument("--quick", action="store_true", help="4-bit, blocks 128 and channel, no HQQ")
    ap.add_argument("--from-runs", action="store_true", help="rewrite the docs from the saved runs/ folders")
    opts = ap.parse_args()

    from superweight.io import atomic_write_text
    from superweight.quant.result import QuantizationResult, QuantPlan
    from superweight.results import read_document

    runs_dir = REPO / "runs"
    bits = (4,) if opts.quick else (4, 3)
    folders = [runs_dir / f"quantize-{opts.model}-{b}bit" for b in bits]
    w8_dir = runs_dir / f"quantize-{opts.model}-w8a8"
    if opts.from_runs:
        results = [QuantizationResult.from_dict(read_document(f, "quantize")) for f in folders]
        w8 = QuantizationResult.from_dict(read_document(w8_dir, "quantize"))
    else:
        from superweight import find_super_weights, load_model
        from superweight.measure.settings import EvalSettings
        from superweight.quant.sweep import run_quantization
        from superweight.report.runs import write_run

        settings = EvalSettings(data_dir=opts.data_dir, max_tokens=opts.max_tokens, seq_len=opts.seq_len)
        settings.check_data()
        blocks = (128, "channel") if opts.quick else (32, 128, 512, "channel", "tensor")
        methods = METHODS[:5] if opts.quick else METHODS
        lm = load_model(opts.model)
        scan = find_super_weights(lm.model, lm.tokenizer, model_name=lm.spec)
        results = []
        for b, folder in zip(bits, folders, strict=True):
            results.append(run_quantization(lm, scan, settings, QuantPlan(bits=(b,), blocks=blocks, methods=methods)))
            write_run(folder, "quantize", results[-1])
        w8 = run_quantization(lm, scan, settings, QuantPlan(bits=(8,), blocks=("tensor",), methods=("naive",),
                                                            activation=True))  # fmt: skip
        write_run(w8_dir, "quantize", w8)
    figure(results, DOC.parent / "quantize_ppl_vs_bpw.png")
    data = results[0].provenance.data[results[0].source]
    sws = [list(w.coordinate) for w in results[0].super_weights]
    cmd = "python scripts/results_quantize.py " + " ".join(a for a in sys.argv[1:] if a != "--from-runs")
    body = [
        f"Model `{opts.model}`, WikiText-2 test, {data['tokens']} tokens in windows of {data['seq_len']} "
        f"(sha256 {data['sha256'][:12]}), unquantized perplexity **{results[0].ppl(results[0].baseline):.2f}**. "
        f"Super weights used: {sws}. Reproduce with `{cmd.strip()}`.",
        "",
        "What the measurements show (sentences computed by the script from the tables below):",
        "",
        *[f"- {line}" for line in findings(results, w8)],
        "",
        *[table(r) + "\n" for r in results],
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
    atomic_write_text(DOC, head + START + "\n" + "\n".join(body) + "\n" + END + tail)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
