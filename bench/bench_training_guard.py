"""What the training guard costs, against one training step of the same model measured in the same run.

Rows: one real training step (forward + backward + AdamW step, batch 1, ``--seq-len`` tokens) as the
baseline; a guard check of the super weights alone; a full check (super weights + canary, the forward
pass cut after the super activation's layer); ``protect``'s restore after a step. Each is the median
of ``--repeats`` runs, interleaved so that a busy machine slows all alike. The ratio is what one check
adds to one step; divide by ``every`` for the cost per step.

    PYTHONPATH=. python bench/bench_training_guard.py --seq-len 128 --repeats 5
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--every", type=int, default=50, help="check interval for the per-step column")
    args = parser.parse_args()

    import torch

    from superweight import find_super_weights, load_model
    from superweight.guard.callback import attach
    from superweight.progress import set_quiet
    from superweight.report.tables import format_table

    set_quiet(True)
    lm = load_model(args.model)
    scan = find_super_weights(lm.model, lm.tokenizer, model_name=lm.spec)
    model = lm.model.requires_grad_(True).train()
    text = " ".join(["The river flows through the old town, past the market square and the church."] * 40)
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"][:, : args.seq_len]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    weights_only = attach(model, scan, every=1)
    full = attach(model, scan, tokenizer=lm.tokenizer, every=1)
    protect = attach(model, scan, tokenizer=lm.tokenizer, every=10**9, policy="protect")

    def train_step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    fns = {
        "training step (baseline)": train_step,
        "check: super weights": lambda: weights_only.check(),
        "check: super weights + canary": lambda: full.check(),
        "protect: restore after a step": protect.restore,
    }
    train_step()  # warm-up (optimizer state)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    protect.detach()
    base = statistics.median(times["training step (baseline)"])
    rows = []
    for name, ts in times.items():
        t = statistics.median(ts)
        per_step = t / base if name.startswith("training") or name.startswith("protect") else t / base / args.every
        rows.append([name, f"{t * 1e3:.3g}", f"{t / base:.2e}", f"{per_step:.2e}"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.model}, seq {args.seq_len}, all {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M "
          f"parameters trained, {torch.get_num_threads()} threads, peak RSS {peak:.0f} MiB")  # fmt: skip
    print(format_table(["", "ms (median)", "x one step", f"x per step (every {args.every})"], rows))


if __name__ == "__main__":
    main()
