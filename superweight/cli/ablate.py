"""`superweight ablate [MODEL]`: Table 1 of Yu et al. (conditions x metrics), Figures 4 and 5."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from superweight.cli.options import (
    add_eval,
    add_model,
    add_output,
    add_scan,
    emit,
    load_from,
    scan_from,
    settings_from,
    split_list,
)

if TYPE_CHECKING:
    from superweight.measure.ablation import AblationResult

EXAMPLES = """examples:
  superweight ablate --data-dir ../shared/data --max-tokens 16384
  superweight ablate --data-dir ../shared/data --tasks piqa,arc_easy --limit 200 --out runs/ablate
  superweight ablate gemma3-270m --conditions original,no-sw --scan scan.json --json
"""


def register(sub: Any) -> None:
    from superweight.measure.ablation import CONDITIONS
    from superweight.model.interventions import CONTROL_K, SCOPES

    p = sub.add_parser(
        "ablate",
        help="zero the super weights (and controls) and measure perplexity / accuracy",
        description="Table 1 of Yu et al. 2024: the model as loaded, with its super weights zeroed, zeroed "
        "with the super activation restored, and two controls (k largest / k random other weights zeroed).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model(p)
    add_output(p)
    add_eval(p)
    add_scan(p)
    a = p.add_argument_group("ablation")
    a.add_argument("--conditions", default=",".join(CONDITIONS), help=f"comma-separated, from {', '.join(CONDITIONS)}")
    a.add_argument(
        "-k", "--k", type=int, default=CONTROL_K, help=f"weights zeroed by the controls (default {CONTROL_K})"
    )
    a.add_argument("--scope", default=SCOPES[0], choices=SCOPES, help="where controls pick weights")
    a.add_argument("--seed", type=int, default=0, help="seed of the random-k control")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from superweight.errors import SuperweightError
    from superweight.measure.ablation import check_conditions, run_ablation

    names = split_list(args.conditions)
    check_conditions(names)
    if args.k < 1:
        raise SuperweightError(f"must be at least 1 (got {args.k})", option="k")
    settings = settings_from(args)
    lm = load_from(args)
    scan = scan_from(args, lm)
    result = run_ablation(lm, scan, settings, names, k=args.k, scope=args.scope, seed=args.seed)
    emit(args, "ablate", result, render)
    return 0


def render(result: AblationResult) -> str:
    from superweight.report.tables import format_table

    sources = list(dict.fromkeys(s for c in result.conditions for s in c.perplexity))
    tasks = list(dict.fromkeys(t for c in result.conditions for t in c.accuracy))
    headers = ["condition", *(f"ppl {s}" for s in sources), *tasks, "super act."]
    rows = [
        [c.name, *(c.perplexity.get(s) for s in sources), *(c.accuracy.get(t) for t in tasks), c.super_activation]
        for c in result.conditions
    ]
    sws = ", ".join(f"{w.module}[{w.row}, {w.col}]" for w in result.super_weights)
    out = f"{result.model}: super weight(s) {sws}\n"
    out += format_table(headers, rows, title=f"ablation (top-k / random-k: k={result.k}, {result.scope})")
    if result.recovery is not None:
        out += f"\nrestoring the super activation recovers {result.recovery:.1%} of the loss zeroing added\n"
    if result.token_shift:
        shift = [[repr(t.text), t.p_original, t.p_edited, t.ratio] for t in result.token_shift[:10]]
        out += "\n" + format_table(
            ["token", "p original", "p no-sw", "ratio"], shift, title="tokens whose mean probability grew most"
        )
    for c in result.continuations:
        out += f"\n{c.prompt!r}\n  original: {c.original!r}\n  {c.condition + ':':<9} {c.edited!r}\n"
    hits = result.provenance.baseline_cache_hits
    out += f"\n{result.provenance.seconds:.0f} s" + (f"; baseline from cache: {', '.join(hits)}" if hits else "")
    return out + "\n"
