"""Measure the guard on the real default model and write the results into docs/guard.md.

Run: ``python scripts/results_guard.py [--section contrast|repair|quantized]`` (about 10 minutes on 2
cores for all three). It loads SmolLM2-135M once and finds its super weights, then:

* ``contrast``: fingerprints the GGUF file, checks that a clean copy and a re-sharded safetensors copy
  verify, runs the attack contrast in memory (block ``results:guard``);
* ``repair``: flips the exponent MSB of the fp16 scale of the GGUF block holding the super weight in a
  copy of the file, and compares exact repair from the manifest with restoring the super activation
  (block ``results:guard-repair``);
* ``quantized``: bit flips in block scales / zero points of the super weight's block against random
  blocks, and which check catches each (block ``results:guard-quantized``).
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
SECTIONS = ("contrast", "repair", "quantized")
BLOCKS = {"contrast": "guard", "repair": "guard-repair", "quantized": "guard-quantized"}


def fmt(x: float) -> str:
    if not math.isfinite(x):
        return "inf"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def contrast(lm, scan, args) -> list[str]:
    from superweight.guard.attacks import contrast_attacks, simulate_attacks
    from superweight.guard.fingerprint import fingerprint
    from superweight.guard.manifest import load_manifest, save_manifest
    from superweight.guard.verify import verify_model

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
    return lines


def repair(lm, scan, args) -> list[str]:
    """Exact repair from the manifest vs restoring the super activation, after a scale-bit flip in a file."""
    import shutil

    from superweight.guard.fingerprint import fingerprint
    from superweight.guard.quantized_attacks import FP16_BITS, flip_file_bit, open_blocks
    from superweight.guard.repair import repair_model, repair_settings
    from superweight.measure.corpus import load_text, tokenize_corpus
    from superweight.measure.perplexity import perplexity_on_ids
    from superweight.model.architectures import decoder_layers, down_projections, find_down_proj
    from superweight.model.interventions import WeightRef, edited, restored_activation
    from superweight.model.spec import resolve_spec

    data = str(Path(os.environ.get("SUPERWEIGHT_DATA", REPO.parent / "shared" / "data")))
    settings = repair_settings(data_dir=data, max_tokens=args.max_tokens)
    sw, act = scan.super_weights[0], scan.super_activations[0]
    source = resolve_spec(args.model).path
    manifest = fingerprint(args.model, scan_result=scan, canary=False)
    entry = manifest.super_weights[0]
    corpus = load_text("wikitext2", data_dir=data, split="test")
    windows = tokenize_corpus(lm.tokenizer, corpus, seq_len=settings.seq_len, max_tokens=settings.max_tokens,
                              model=lm.model)  # fmt: skip

    def ppl() -> float:
        return perplexity_on_ids(lm.model, windows, desc="perplexity").perplexity

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        damaged = tmp / "damaged" / source.name
        damaged.parent.mkdir()
        shutil.copyfile(source, damaged)
        bit = FP16_BITS["exponent"]
        flip_file_bit(damaged, entry.byte_offset + bit // 8, bit % 8)  # the block's fp16 scale d: bytes 0-1
        blocks = open_blocks(damaged, len(decoder_layers(lm.model)))
        site = find_down_proj(down_projections(lm.model), sw.module)
        (block,) = blocks.blocks(site.param_name, sw.row, sw.col)
        values = blocks.values(block, damaged)
        refs = [WeightRef(site, sw.row, c) for c in range(block.start, block.stop)]
        clean = ppl()

        def damaged_weights():
            new = iter(values.tolist())
            return edited(refs, lambda w: w.new_tensor(next(new)))

        with damaged_weights():
            hit = ppl()
            sw_value = float(site.weight[sw.row, sw.col])
        with restored_activation(site, act.channel, act.tokens or None), damaged_weights():
            restored = ppl()
        result = repair_model(str(damaged), manifest, tmp / "repaired", settings=settings)
    lines = [
        f"Attack on the file: the exponent MSB of the fp16 scale of the Q4_1 block holding the super weight "
        f"(`{entry.tensor}`, row {sw.row}, columns {block.start}-{block.stop - 1}) flipped in a copy of the "
        f"GGUF file: the super weight becomes {sw_value:.4g} (was {sw.value:.3g}) and the 31 other weights of its "
        f"block are scaled by the same factor. Perplexity on {result.eval_tokens} WikiText-2 test tokens:",
        "",
        "| model state | perplexity | × clean |",
        "|---|---|---|",
        f"| clean | {fmt(clean)} | 1 |",
        f'| attacked file, loaded (`repair`\'s "before") | {fmt(result.perplexity_before)} | '
        f"{fmt(result.perplexity_before / clean)} |",
        f"| attacked, in memory (the same block) | {fmt(hit)} | {fmt(hit / clean)} |",
        f"| attacked + super activation restored (layer {act.layer}, channel {act.channel}, "
        f"tokens {act.tokens}) | {fmt(restored)} | {fmt(restored / clean)} |",
        f'| exact repair from the manifest (`repair`\'s "after") | {fmt(result.perplexity_after)} | '
        f"{fmt(result.perplexity_after / clean)} |",
        "",
        f"`repair` restored {len(result.restored)} block ({result.restored[0].bits_before[:8]}... -> "
        f"{result.restored[0].bits_after[:8]}...; the first 4 bytes are the block's fp16 scale and minimum); "
        f"the copy is bit-exact to the manifest: {'yes' if result.verified else 'NO'}.",
    ]
    recovered = (hit - restored) / (hit - clean) if hit > clean else math.nan
    exact = (result.perplexity_before - result.perplexity_after) / (result.perplexity_before - clean)
    lines.append(f"Restoring the super activation recovers {recovered:.0%} of the perplexity damage; exact repair "
                 f"recovers {exact:.0%} (the same bits as the clean file).")  # fmt: skip
    return lines


def quantized(lm, scan, args) -> list[str]:
    from superweight.guard.quantized_attacks import attack_quantized
    from superweight.model.spec import resolve_spec

    report = attack_quantized(resolve_spec(args.model).path, lm, scan.super_weights, random_blocks=args.blocks)
    lines = [
        f"One bit flip (exponent MSB) in the fp16 block scale `d` or minimum `m` of `{args.model}`'s {report.dtype} "
        f"blocks, in a working copy of the GGUF file: the block holding each super weight "
        f"({', '.join(report.super_weights)}) against {args.blocks} random blocks of the down-projections. "
        "Share of attacks each check catches:",
        "",
        "| blocks | field | attacks | hash | super-weight check | canary | largest canary change (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for target in ("super weight", "random"):
        for field in ("scale", "zero"):
            rows = [r for r in report.results if r.target == target and r.field == field]
            if not rows:
                continue
            rate = {c: sum(r.caught[c] for r in rows) / len(rows) for c in ("hash", "super_weight", "canary")}
            med = sorted(r.canary_change for r in rows)[len(rows) // 2]
            lines.append(f"| {target} | {field} | {len(rows)} | {rate['hash']:.0%} | {rate['super_weight']:.0%} | "
                         f"{rate['canary']:.0%} | {fmt(med)} |")  # fmt: skip
    return lines


def write_block(name: str, text: str) -> bool:
    start, end = f"<!-- results:{name}:start -->", f"<!-- results:{name}:end -->"
    doc = DOC.read_text()
    if start not in doc or end not in doc:
        print(f"{DOC} has no {name} markers", file=sys.stderr)
        return False
    head, rest = doc.split(start, 1)
    DOC.write_text(head + start + "\n" + text + end + rest.split(end, 1)[1])
    print(f"wrote the {name} block of {DOC}", file=sys.stderr)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--random-n", type=int, default=5000)
    parser.add_argument("--blocks", type=int, default=50, help="random blocks for the quantized section")
    parser.add_argument("--section", choices=SECTIONS, action="append", help="only these (default: all)")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/guard.md")
    args = parser.parse_args()

    from superweight import find_super_weights, load_model

    lm = load_model(args.model)
    scan = find_super_weights(lm.model, lm.tokenizer, model_name=lm.spec)
    ok = True
    for section in args.section or SECTIONS:
        text = "\n".join({"contrast": contrast, "repair": repair, "quantized": quantized}[section](lm, scan, args))
        text += "\n"
        print(text)
        if not args.no_write:
            ok = write_block(BLOCKS[section], text) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
