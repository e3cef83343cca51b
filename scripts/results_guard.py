"""Measure the guard on the real default model and write the results into docs/guard.md.

Run: ``python scripts/results_guard.py`` (about 5 minutes on 2 cores). It loads SmolLM2-135M once,
finds its super weights, fingerprints the GGUF file, checks that a clean copy and a re-sharded
safetensors copy verify, runs the attack contrast in memory, and replaces the text between the
markers in docs/guard.md with the tables.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "guard.md"
START, END = "<!-- results:guard:start -->", "<!-- results:guard:end -->"


def fmt(x: float) -> str:
    if not math.isfinite(x):
        return "inf"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--random-n", type=int, default=5000)
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/guard.md")
    args = parser.parse_args()

    from superweight import find_super_weights, load_model
    from superweight.guard.attacks import contrast_attacks, simulate_attacks
    from superweight.guard.fingerprint import fingerprint
    from superweight.guard.manifest import load_manifest, save_manifest
    from superweight.guard.verify import verify_model

    lm = load_model(args.model)
    scan = find_super_weights(lm.model, lm.tokenizer, model_name=lm.spec)
    sws = ", ".join(f"layer {w.layer} [{w.row}, {w.col}] = {w.value:.3g}" for w in scan.super_weights)
    lines = [f"Model: `{args.model}` ({lm.architecture}, {lm.num_parameters / 1e6:.0f} M parameters); "
             f"super weights found by scan: {sws}.", ""]  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        manifest = fingerprint(args.model, scan_result=scan)
        fp_s = time.perf_counter() - start
        save_manifest(manifest, tmp / "m.json")
        manifest = load_manifest(tmp / "m.json")
        full = verify_model(args.model, manifest)
        fast = verify_model(args.model, manifest, fast=True)
        # re-sharding: the same tensors written as one file and as many shards
        lm.model.save_pretrained(tmp / "one")
        lm.tokenizer.save_pretrained(tmp / "one")
        one = fingerprint(str(tmp / "one"), scan=False, canary=False)
        lm.model.save_pretrained(tmp / "shards", max_shard_size="40MB")
        shards = len(list((tmp / "shards").glob("*.safetensors")))
        resharded = verify_model(str(tmp / "shards"), one)

    lines += [
        "| check | result |",
        "|---|---|",
        f"| fingerprint of the GGUF file ({manifest.model.num_bytes / 1e6:.0f} MB, "
        f"{len(manifest.tensors)} tensors, with scan results, canary) | {fp_s:.1f} s |",
        f"| `verify` of the clean file (every tensor hash) | {'pass' if full.ok else 'FAIL'}, hashing "
        f"{full.timings.get('hash_s', 0):.2f} s |",
        f"| `verify --fast` (super weight bytes and row only) | {'pass' if fast.ok else 'FAIL'}, "
        f"{fast.timings.get('fast_s', 0) * 1e6:.0f} µs |",
        f"| re-sharded safetensors copy (1 file vs {shards} shards) against the 1-file manifest | "
        f"{'pass' if resharded.ok else 'FAIL'} ({'; '.join(resharded.notes) or 'no note'}) |",
        "",
    ]
    data = Path(os.environ.get("SUPERWEIGHT_DATA", REPO.parent / "shared" / "data"))
    report = simulate_attacks(
        lm,
        contrast_attacks(random_n=args.random_n),
        scan=scan,
        max_tokens=args.max_tokens,
        data_dir=str(data),
    )
    lines += [
        f"Attacks in memory; perplexity on {report.eval_tokens} WikiText-2 test tokens "
        f"(clean: {report.clean_perplexity:.2f}); greedy continuation of 2 prompts, 12 tokens. "
        "`caught by` lists the checks of `verify` that fail: `hash` (every tensor), `fast` (super weights "
        "only), `canary` (behaviour).",
        "",
        "| attack | perplexity | × clean | output changed | caught by | restored bit-exactly |",
        "|---|---|---|---|---|---|",
    ]
    for r in report.results:
        caught = ", ".join(k for k, v in r.caught.items() if v) or "**nothing**"
        changed = "yes" if r.continuation_changed else "no"
        restored = "yes" if r.restored else "NO"
        lines.append(f"| {r.attack} | {fmt(r.perplexity)} | {fmt(r.ratio)} | {changed} | {caught} | {restored} |")
    flip = report.results[0]
    lines += [
        "",
        f'Greedy continuation of "The capital of France is": clean `{report.clean_continuations[0]!r}`, '
        f"after one exponent-bit flip of the super weight `{flip.continuations[0]!r}`.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        doc = DOC.read_text()
        if START not in doc or END not in doc:
            print(f"{DOC} has no result markers", file=sys.stderr)
            return 1
        head, rest = doc.split(START, 1)
        DOC.write_text(head + START + "\n" + text + END + rest.split(END, 1)[1])
        print(f"wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
