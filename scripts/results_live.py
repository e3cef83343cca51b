"""Measure the training guard on the real default model and write the results into docs/live.md.

Run: ``python scripts/results_live.py`` (a few minutes on 2 cores). It loads SmolLM2-135M once, finds
its super weights, then with real AdamW steps on a private copy (batch 1, ``--seq-len`` tokens):
a learning rate that wrecks the model under ``stop`` (at which step is it caught, and why), ordinary
fine-tuning under ``protect`` (are the super weights bit-exact, how much else changed), and the cost
of one check against one training step. Replaces the text between the markers in docs/live.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "live.md"
START, END = "<!-- results:live:start -->", "<!-- results:live:end -->"
TEXT = "The river flows through the old town, past the market square and the church. " * 20


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join([*out, *("| " + " | ".join(r) + " |" for r in rows)])


def train(model, ids, guard, lr: float, steps: int) -> int:
    """Real AdamW steps under ``guard``; returns how many ran before it asked to stop."""
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.1)
    for step in range(1, steps + 1):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        guard.step()
        if guard.should_stop:
            return step
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", default="10-13", help="decoder layers whose MLPs are trained (a range)")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/live.md")
    args = parser.parse_args()

    import torch

    from superweight import find_super_weights, load_model
    from superweight.guard.callback import attach
    from superweight.io import atomic_write_text
    from superweight.progress import set_quiet

    set_quiet(True)
    lm = load_model(args.model)
    scan = find_super_weights(lm.model, lm.tokenizer, model_name=lm.spec)
    sw = scan.super_weights[0]
    first, last_layer = (int(x) for x in args.layers.split("-"))

    def trainable():
        """A private copy whose MLPs in ``--layers`` (the super weight's among them) are trained."""
        model = copy.deepcopy(lm.model)
        for i in range(first, last_layer + 1):
            model.model.layers[i].mlp.requires_grad_(True)
        return model

    ids = lm.tokenizer(TEXT, return_tensors="pt")["input_ids"][:, : args.seq_len]
    lines = [f"Model: `{args.model}` ({lm.architecture}; its weights are Q4_1 GGUF dequantized, on a 4-bit grid). "
             f"Guarded: {len(scan.super_weights)} super weight(s), layer {sw.layer} [{sw.row}, {sw.col}] = "
             f"{sw.value:.4g}; canary: layer {sw.layer}'s down-projection output at channel {sw.row}. Real AdamW "
             f"steps (weight decay 0.1) on the MLPs of layers {args.layers}, batch 1, "
             f"{ids.shape[1]} tokens.", ""]  # fmt: skip

    rows = []
    for lr, policy in ((1e-2, "stop"), (1e-5, "stop"), (1e-3, "protect")):
        model = trainable()
        w = model.model.layers[sw.layer].mlp.down_proj.weight
        before = w.detach().clone()
        guard = attach(model, scan, tokenizer=lm.tokenizer, every=1, policy=policy)
        ran = train(model, ids, guard, lr, args.steps)
        exact = bool(torch.equal(w.detach()[sw.row, sw.col], before[sw.row, sw.col]))
        others = float((w.detach() != before).float().mean())
        last = guard.checks[-1]
        verdict = "; ".join(last.reasons) or "all checks pass"
        verdict = f"stopped: {verdict}" if guard.should_stop else verdict
        rows.append([policy, f"{lr:g}", f"{ran}/{args.steps}", "yes" if exact else "no", f"{others:.1%}", verdict])
        del model, guard
    lines.append(md_table(["policy", "lr", "steps run", "super weight bit-exact",
                               "other entries of its matrix changed", "guard"], rows))  # fmt: skip

    model = trainable()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    weights_only = attach(model, scan, every=1)
    full = attach(model, scan, tokenizer=lm.tokenizer, every=1)

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    fns = {"one training step": step, "check: super weights": weights_only.check,
           "check: super weights + canary": full.check}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["one training step"])
    cost = [[n, f"{statistics.median(t) * 1e3:.3g}", f"{statistics.median(t) / base:.2e}",
             f"{statistics.median(t) / base / 50:.2e}" if n.startswith("check") else "-"]
            for n, t in times.items()]  # fmt: skip
    lines += ["", md_table(["", "ms (median)", "x one step", "x per step, every=50"], cost)]
    lines.append(f"\n({torch.get_num_threads()} threads; median of {args.repeats}, interleaved. "
                 "`bench/bench_training_guard.py` measures the same at any sequence length.)")  # fmt: skip
    block = "\n".join(lines)
    print(block)
    if args.no_write:
        return 0
    text = DOC.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"{DOC} lacks the markers {START} ... {END}", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(DOC, f"{head}{START}\n{block}\n{END}{tail}")
    print(f"wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
