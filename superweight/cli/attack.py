"""`superweight attack [MODEL]`: red-team simulation in memory; damage, and which check catches it."""

from __future__ import annotations

import argparse
from typing import Any

from superweight.cli.options import add_model, add_output, add_scan, emit, load_from, scan_from

EXAMPLES = """examples:
  superweight attack --kind bitflip --target sw --n 1 --bit exponent   the super weight's exponent MSB
  superweight attack --kind bitflip --target random --n 5000 --bit sign
  superweight attack --contrast                                        the standard table (9 attacks)
  superweight attack --quantized                        flip a block scale / zero point bit of the GGUF file
  superweight attack ./ckpt --quantized --n 50          a packed checkpoint (quantize --save), 50 random blocks
files are never touched: every edit is in memory (or, with --quantized, in a working copy of the file) and
restored bit-exactly (checked).
"""


def register(sub: Any) -> None:
    from superweight.guard.attacks import BITS, KINDS, TARGETS

    p = sub.add_parser(
        "attack",
        help="simulate weight attacks in memory: damage and which check catches them",
        description="Change N weights in memory (zero, sign, bit flip, scale) at the super weights, the "
        "largest other weights or random ones; measure perplexity and greedy continuations; run verify's "
        "checks (hash, fast, canary) against the clean model; restore bit-exactly.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model(p)
    add_output(p)
    add_scan(p)
    p.add_argument("--kind", choices=KINDS, help="what to do to each weight")
    p.add_argument("--target", choices=TARGETS, default="sw", help="which weights (default sw)")
    p.add_argument("--n", type=int, default=None,
                   help="how many weights (default 1); with --quantized: random blocks (default 20)")  # fmt: skip
    p.add_argument("--bit", choices=BITS, default="exponent", help="for bitflip: which bit (default exponent MSB)")
    p.add_argument("--alpha", type=float, default=100.0, help="for scale: the factor (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quantized", action="store_true",
                   help="MODEL is a quantized file (GGUF, or a packed checkpoint folder): flip a bit of the "
                   "scale and zero point of the super weight's block and of random blocks")  # fmt: skip
    p.add_argument("--contrast", action="store_true", help="run the standard set: super weight vs random flips")
    p.add_argument("--max-tokens", type=int, default=2048, help="WikiText-2 tokens for perplexity (default 2048)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--data-dir", default=None, help="folder with wikitext2/ (default $SUPERWEIGHT_DATA)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from superweight.errors import SuperweightError
    from superweight.guard.attacks import AttackSpec, contrast_attacks, simulate_attacks

    if args.quantized:
        return run_quantized(args)
    if args.contrast:
        attacks = contrast_attacks(args.seed)
    elif args.kind is None:
        raise SuperweightError("say what to do: --kind zero|sign|bitflip|scale (or --contrast for the standard set)")
    else:
        attacks = [AttackSpec(args.kind, args.target, args.n or 1, args.bit, args.alpha, args.seed)]
    lm = load_from(args)
    scan = scan_from(args, lm)
    report = simulate_attacks(lm, attacks, scan=scan, max_tokens=args.max_tokens, seq_len=args.seq_len,
                              data_dir=args.data_dir)  # fmt: skip
    emit(args, "attack", report, render)
    return 0


def run_quantized(args: argparse.Namespace) -> int:
    from pathlib import Path

    from superweight.guard.quantized_attacks import attack_quantized
    from superweight.model.spec import resolve_spec

    path = Path(args.model) if args.model and Path(args.model).is_dir() else resolve_spec(args.model).path
    if path.is_dir():
        from superweight.quant.checkpoint import load_quantized_model

        lm = load_quantized_model(path)
    else:
        lm = load_from(args)
    scan = scan_from(args, lm)
    bit = args.bit if args.bit != "random" else "exponent"
    report = attack_quantized(path, lm, scan.super_weights, random_blocks=args.n or 20, bit=bit, seed=args.seed)
    emit(args, "quantized-attack", report, render_quantized)
    return 0


def render_quantized(r: Any) -> str:
    from superweight.report.tables import format_table

    head = f"{r.model} ({r.format}, {r.dtype}); super weights: {', '.join(r.super_weights)}\n"
    rows = [[a.target, a.field, a.tensor, f"row {a.block.row} [{a.block.start}:{a.block.stop}]", a.before, a.after,
             ", ".join(k for k, v in a.caught.items() if v) or "NOTHING"] for a in r.results]  # fmt: skip
    text = head + format_table(["block", "field", "tensor", "where", "before", "after", "caught by"], rows)
    for target in ("super weight", "random"):
        rates = ", ".join(f"{c} {r.rate(target, c):.0%}" for c in ("hash", "super_weight", "canary"))
        text += f"{target} blocks caught: {rates}\n"
    return text


def render(r: Any) -> str:
    from superweight.report.tables import format_table

    head = f"{r.model}: clean perplexity {r.clean_perplexity:.2f} on {r.eval_tokens} WikiText-2 tokens\n"
    rows = []
    for a in r.results:
        caught = [k for k, v in a.caught.items() if v]
        rows.append([a.attack, a.perplexity, a.ratio, "yes" if a.continuation_changed else "no",
                     ", ".join(caught) or "NOTHING", "yes" if a.restored else "NO"])  # fmt: skip
    return head + format_table(["attack", "perplexity", "x clean", "output changed", "caught by", "restored"], rows)
