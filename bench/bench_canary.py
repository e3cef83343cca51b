"""How often does each check catch a random single-bit flip anywhere in the model, and what does it cost?

Flips one random bit of one random parameter element (uniform over all elements of the model, bit
uniform over the element's bits), asks the canary, the super-weight check and the full tensor hash,
and restores the element bit-exactly; repeats. Costs are timed in the same run, against one forward
pass of a ``--seq-len`` window (the published LM-Fix canary reports >94 % detection at 1-8 % of
inference). Run from the repository root: ``PYTHONPATH=. python bench/bench_canary.py``.
"""

from __future__ import annotations

import argparse
import resource
import time

FIELDS = ("sign", "exponent", "mantissa")


def bit_field(bit: int, total: int, mantissa: int) -> str:
    return "sign" if bit == total - 1 else ("mantissa" if bit < mantissa else "exponent")


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--flips", type=int, default=200)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from superweight import find_super_weights, load_model
    from superweight.guard.attacks import flip_bit
    from superweight.guard.canary import compare_canary, run_canary
    from superweight.guard.fingerprint import fingerprint_memory
    from superweight.guard.hashing import hash_memory
    from superweight.guard.verify import check_super_weights_memory

    lm = load_model(args.model)
    scan = find_super_weights(lm.model, lm.tokenizer, model_name=lm.spec)
    manifest = fingerprint_memory(lm, scan)
    reference = manifest.canary
    records = {r.name: r.sha256 for r in manifest.tensors}
    params = [(n, p) for n, p in lm.model.named_parameters() if p.dtype == torch.float32]
    sizes = torch.tensor([p.numel() for _, p in params])
    ends = torch.cumsum(sizes, 0)
    gen = torch.Generator().manual_seed(args.seed)
    caught = {"canary": [], "super_weight": [], "hash": []}
    fields: list[str] = []
    for _ in range(args.flips):
        g = int(torch.randint(int(ends[-1]), (1,), generator=gen))
        i = int(torch.searchsorted(ends, g, right=True))
        name, p = params[i]
        flat = p.data.view(-1)
        k = g - int(ends[i] - sizes[i])
        bit = int(torch.randint(32, (1,), generator=gen))
        fields.append(bit_field(bit, 32, 23))
        saved = flat[k].clone()
        with torch.no_grad():
            flat[k] = flip_bit(saved, bit)
            current = run_canary(lm.model, lm.tokenizer, reference.channel, prompt=reference.prompt,
                                 top_k=len(reference.top_ids))  # fmt: skip
            caught["canary"].append(not compare_canary(reference, current).passed)
            caught["super_weight"].append(
                any(s.status != "same" for s in check_super_weights_memory(lm.model, manifest))
            )
            hashed = {r.name: r.sha256 for r in hash_memory(lm.model, names={name})}
            caught["hash"].append(any(records.get(n) != h for n, h in hashed.items()))
            flat[k] = saved
        assert torch.equal(flat[k].view(torch.int32), saved.view(torch.int32)), "not restored"

    window = torch.randint(lm.tokenizer.vocab_size, (1, args.seq_len), generator=gen)
    with torch.no_grad():
        forward = best(lambda: lm.model(input_ids=window, use_cache=False), 3)
    costs = {
        "canary": best(lambda: run_canary(lm.model, lm.tokenizer, reference.channel), 3),
        "super_weight": best(lambda: check_super_weights_memory(lm.model, manifest), 5),
        "hash": best(lambda: hash_memory(lm.model), 2),
    }
    n = args.flips
    print(f"{lm.spec}: {n} random single-bit flips (float32 in memory; weights of a Q4_1 GGUF dequantized)")
    print("flips by field: " + ", ".join(f"{f} {fields.count(f)}" for f in FIELDS))
    print(f"one forward pass of {args.seq_len} tokens: {forward * 1e3:.0f} ms (the baseline)")
    print(f"{'check':<14} {'caught':>7} " + " ".join(f"{f:>9}" for f in FIELDS) + f" {'cost ms':>9} {'x forward':>9}")
    for check, hits in caught.items():
        by = []
        for f in FIELDS:
            sel = [h for h, ff in zip(hits, fields, strict=True) if ff == f]
            by.append(f"{sum(sel) / len(sel):9.1%}" if sel else f"{'-':>9}")
        print(
            f"{check:<14} {sum(hits) / n:7.1%} "
            + " ".join(by)
            + f" {costs[check] * 1e3:9.1f} {costs[check] / forward:9.3f}"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
