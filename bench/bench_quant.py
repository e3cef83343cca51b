"""Quantization time per billion parameters, and each method's perplexity gap as a ratio to naive's.

    python bench/bench_quant.py [--model smollm2-135m] [--bits 4] [--blocks 128,channel] [--max-tokens 1024]

One library sweep (``superweight.quant.sweep.run_quantization``, KL off) measures every method; the
baseline of every ratio is measured in the same run: ``gap ratio = (ppl_method - ppl_fp) /
(ppl_naive - ppl_fp)`` at the same bits and block (below 1: the method closes part of naive's gap), and
``time ratio`` = the method's quantization seconds / naive's. Peak RSS is the process's, from ``resource``.
"""

from __future__ import annotations

import argparse
import resource


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--blocks", default="128,channel")
    ap.add_argument("--methods", default="naive,sw,sw+clip,row,sparse:0.005,hqq")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--data-dir", default=None, help="data folder (default: $SUPERWEIGHT_DATA)")
    opts = ap.parse_args()

    import torch

    from superweight import find_super_weights, load_model
    from superweight.measure.settings import EvalSettings
    from superweight.progress import set_quiet
    from superweight.quant.result import QuantPlan
    from superweight.quant.sweep import run_quantization

    methods = tuple(m for m in opts.methods.split(",") if m)
    if "naive" not in methods:
        methods = ("naive", *methods)  # every ratio's baseline
    plan = QuantPlan(bits=(opts.bits,), blocks=tuple(opts.blocks.split(",")), methods=methods, kl=False)
    settings = EvalSettings(data_dir=opts.data_dir, max_tokens=opts.max_tokens, seq_len=opts.seq_len)
    set_quiet(True)
    lm = load_model(opts.model)
    scan = find_super_weights(lm.model, lm.tokenizer)
    result = run_quantization(lm, scan, settings, plan)
    base = result.ppl(result.baseline)
    params = result.weight_only()[0].quantization["weights"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{opts.model}: {params / 1e6:.1f} M quantized weights, unquantized ppl {base:.3f} "
        f"({result.provenance.data[result.source]['tokens']} tokens), {torch.get_num_threads()} threads, "
        f"peak RSS {peak_mb:.0f} MB, sweep {result.provenance.seconds:.0f} s"
    )
    print(f"{'method':<14}{'block':>8}{'s/Gparam':>10}{'time x':>8}{'bits/w':>8}{'ppl':>10}{'gap x naive':>13}")
    for block in dict.fromkeys(v.block for v in result.variants):
        rows = [v for v in result.variants if v.block == block]
        naive = next(v for v in rows if v.method == "naive")
        naive_gap, naive_s = result.ppl(naive) - base, naive.quantization["seconds"]
        for v in rows:
            seconds = v.quantization["seconds"]
            ratio = (result.ppl(v) - base) / naive_gap if naive_gap else float("nan")
            tratio = seconds / naive_s if naive_s else float("nan")
            print(f"{v.method:<14}{block:>8}{seconds / params * 1e9:>10.1f}{tratio:>8.2f}"
                  f"{v.bits_per_weight:>8.3f}{result.ppl(v):>10.3f}{ratio:>13.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
