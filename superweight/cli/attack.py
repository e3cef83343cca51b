"""`superweight attack [MODEL]`: red-team simulation in memory; damage, and which check catches it."""

from __future__ import annotations

import argparse
from typing import Any

from superweight.cli.options import add_model, add_output, emit, load_from

EXAMPLES = """examples:
  superweight attack --kind bitflip --target sw --n 1 --bit exponent   the super weight's exponent MSB
  superweight attack --kind bitflip --target random --n 5000 --bit sign
  superweight attack --contrast                                        the standard table (9 attacks)
files are never touched: every edit is in memory and restored bit-exactly (checked).
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
    p.add_argument("--kind", choices=KINDS, help="what to do to each weight")
    p.add_argument("--target", choices=TARGETS, default="sw", help="which weights (default sw)")
    p.add_argument("--n", type=int, default=1, help="how many weights (default 1)")
    p.add_argument("--bit", choices=BITS, default="exponent", help="for bitflip: which bit (default exponent MSB)")
    p.add_argument("--alpha", type=float, default=100.0, help="for scale: the factor (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--contrast", action="store_true", help="run the standard set: super weight vs random flips")
    p.add_argument("--max-tokens", type=int, default=2048, help="WikiText-2 tokens for perplexity (default 2048)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--data-dir", default=None, help="folder with wikitext2/ (default $SUPERWEIGHT_DATA)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from superweight.errors import SuperweightError
    from superweight.guard.attacks import AttackSpec, contrast_attacks, simulate_attacks

    if args.contrast:
        attacks = contrast_attacks(args.seed)
    elif args.kind is None:
        raise SuperweightError("say what to do: --kind zero|sign|bitflip|scale (or --contrast for the standard set)")
    else:
        attacks = [AttackSpec(args.kind, args.target, args.n, args.bit, args.alpha, args.seed)]
    lm = load_from(args)
    report = simulate_attacks(lm, attacks, max_tokens=args.max_tokens, seq_len=args.seq_len, data_dir=args.data_dir)
    emit(args, "attack", report, render)
    return 0


def render(r: Any) -> str:
    from superweight.report.tables import format_table

    head = f"{r.model}: clean perplexity {r.clean_perplexity:.2f} on {r.eval_tokens} WikiText-2 tokens\n"
    rows = []
    for a in r.results:
        caught = [k for k, v in a.caught.items() if v]
        rows.append([a.attack, a.perplexity, a.ratio, "yes" if a.continuation_changed else "no",
                     ", ".join(caught) or "NOTHING", "yes" if a.restored else "NO"])  # fmt: skip
    return head + format_table(["attack", "perplexity", "x clean", "output changed", "caught by", "restored"], rows)
