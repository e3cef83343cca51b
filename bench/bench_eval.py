"""Evaluation throughput, measured against baselines in the same run.

Row 1: tokens/s of `perplexity_on_ids` against a bare `model(input_ids)` loop over the same windows
(target: ratio >= 0.95). Row 2: wall time of a 5-condition ablation with hidden-state reuse against
5 independent full evaluations of the same conditions (the reuse should make it clearly cheaper).

    python bench/bench_eval.py --data-dir ../shared/data --seq-len 512 --windows 4
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for row 1")
    args = parser.parse_args()

    import torch

    from superweight import find_super_weights, load_model
    from superweight.measure.ablation import activation_probe, build_conditions
    from superweight.measure.conditions import measure_conditions
    from superweight.measure.corpus import load_text, tokenize_corpus
    from superweight.measure.perplexity import perplexity_on_ids
    from superweight.progress import set_quiet
    from superweight.report.tables import format_table

    set_quiet(True)
    lm = load_model(args.model)
    corpus = load_text("wikitext2", args.data_dir)
    windows = tokenize_corpus(
        lm.tokenizer, corpus, seq_len=args.seq_len, max_tokens=args.seq_len * args.windows, model=lm.model
    )
    ids = windows.ids

    def bare() -> None:
        with torch.no_grad():
            for window in ids:
                lm.model(window[None])

    def ours() -> None:
        perplexity_on_ids(lm.model, windows)

    def interleaved(fns) -> list[float]:
        """Best of N for each, run alternately so that a busy machine slows both alike."""
        times = [[] for _ in fns]
        for _ in range(args.repeats):
            for i, fn in enumerate(fns):
                start = time.perf_counter()
                fn()
                times[i].append(time.perf_counter() - start)
        return [min(t) for t in times]

    bare()  # warm-up
    t_bare, t_ours = interleaved([bare, ours])
    tokens = windows.tokens

    scan = find_super_weights(lm.model, lm.tokenizer, model_name=lm.spec)
    conditions = build_conditions(lm.model, scan)
    probe = activation_probe(lm.model, scan)
    start = time.perf_counter()
    reused = measure_conditions(lm.model, windows, conditions, probe=probe, reuse=True)
    t_reuse = time.perf_counter() - start
    start = time.perf_counter()
    full = {}
    for c in conditions:  # each condition on its own, as five separate evaluations would
        full.update(measure_conditions(lm.model, windows, [c], probe=probe, reuse=False))
    t_full = time.perf_counter() - start
    worst = max(abs(reused[n].nll - full[n].nll) for n in full)
    from superweight.measure.conditions import Condition
    from superweight.model.interventions import refs_for

    refs = refs_for(lm.model, scan.super_weights)
    sweep = [Condition(f"alpha={a}", refs, alpha=a) for a in (0, 0.2, 0.5, 1, 1.5, 2, 3)]
    start = time.perf_counter()
    swept = measure_conditions(lm.model, windows, sweep, probe=probe, reuse=True)
    t_sweep = time.perf_counter() - start
    start = time.perf_counter()
    sweep_full = {}
    for c in sweep:
        sweep_full.update(measure_conditions(lm.model, windows, [c], probe=probe, reuse=False))
    t_sweep_full = time.perf_counter() - start
    worst = max(worst, *(abs(swept[n].nll - sweep_full[n].nll) for n in swept))

    rows = [
        ["perplexity path vs bare model(input_ids)", f"{tokens / t_ours:.0f} tok/s", f"{tokens / t_bare:.0f} tok/s",
         f"{t_bare / t_ours:.3f}"],
        [f"{len(conditions)}-condition ablation vs {len(conditions)} full evaluations", f"{t_reuse:.1f} s",
         f"{t_full:.1f} s", f"{t_full / t_reuse:.2f}x faster"],
        ["7-alpha sweep vs 7 full evaluations", f"{t_sweep:.1f} s", f"{t_sweep_full:.1f} s",
         f"{t_sweep_full / t_sweep:.2f}x faster"],
    ]  # fmt: skip
    print(f"{lm.spec}, {windows.windows} windows x {windows.seq_len} tokens, {torch.get_num_threads()} threads")
    print(format_table(["measurement", "ours", "baseline", "ratio"], rows))
    print(f"largest |nll difference| reuse vs full passes: {worst:.2e}")


if __name__ == "__main__":
    main()
