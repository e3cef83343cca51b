"""Quantization time per billion parameters, and each method's perplexity gap as a ratio to naive's.

    python bench/bench_quant.py [--model smollm2-135m] [--bits 4] [--blocks 128,channel] [--max-tokens 1024]

The baseline of every ratio is measured in the same run: ``gap ratio = (ppl_method - ppl_fp) /
(ppl_naive - ppl_fp)`` at the same bits and block (below 1: the method closes part of naive's gap), and
``time ratio`` = the method's quantization seconds / naive's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--blocks", default="128,channel")
    ap.add_argument("--methods", default="naive,sw,sw+clip,row,sparse:0.005,hqq")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    opts = ap.parse_args()

    import torch

    from superweight import find_super_weights, load_model
    from superweight.measure.corpus import load_text, tokenize_corpus
    from superweight.measure.perplexity import perplexity_on_ids
    from superweight.progress import set_quiet
    from superweight.quant.methods import (
        Protection,
        WeightSnapshot,
        apply_quantization,
        collect_inputs,
        parse_method,
        select_linears,
    )
    from superweight.quant.rtn import QuantConfig, parse_block

    set_quiet(True)
    lm = load_model(opts.model)
    scan = find_super_weights(lm.model, lm.tokenizer)
    protection = Protection.from_scan(lm.model, scan)
    linears = select_linears(lm.model)
    params = sum(m.weight.numel() for _, m in linears)
    test = tokenize_corpus(lm.tokenizer, load_text("wikitext2", opts.data_dir), seq_len=opts.seq_len,
                           max_tokens=opts.max_tokens, model=lm.model)  # fmt: skip
    calib_text = load_text("wikitext2", opts.data_dir, "validation")
    calib = tokenize_corpus(lm.tokenizer, calib_text, seq_len=512, max_tokens=1024, model=lm.model)
    t0 = time.perf_counter()
    inputs = collect_inputs(lm.model, linears, calib.ids)
    calib_s = time.perf_counter() - t0
    base = perplexity_on_ids(lm.model, test).perplexity
    print(
        f"{opts.model}: {params / 1e6:.1f} M quantized weights, unquantized ppl {base:.3f} ({test.tokens} "
        f"tokens), calibration capture {calib_s:.1f} s, {torch.get_num_threads()} threads"
    )
    print(f"{'method':<14}{'block':>8}{'s/Gparam':>10}{'time x':>8}{'bits/w':>8}{'ppl':>10}{'gap x naive':>13}")
    with WeightSnapshot(linears) as snap:
        for block in [parse_block(b) for b in opts.blocks.split(",")]:
            naive_gap = naive_s = None
            for name in opts.methods.split(","):
                method = parse_method(name)
                report = apply_quantization(snap, method, QuantConfig(opts.bits, block), protection, inputs)
                ppl = perplexity_on_ids(lm.model, test).perplexity
                snap.restore()
                gap = ppl - base
                if method.name == "naive":
                    naive_gap, naive_s = gap, report.seconds
                ratio = gap / naive_gap if naive_gap else float("nan")
                tratio = report.seconds / naive_s if naive_s else float("nan")
                print(f"{method.label:<14}{block!s:>8}{report.seconds / params * 1e9:>10.1f}{tratio:>8.2f}"
                      f"{report.bits_per_weight:>8.3f}{ppl:>10.3f}{ratio:>13.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
