"""`superweight ablate [MODEL]`: Table 1 of Yu et al. (conditions x metrics), Figures 4 and 5."""

from __future__ import annotations

import argparse
from typing import Any

from superweight.cli.options import add_measuring, emit, load_from, scan_from, settings_from, split_list

EXAMPLES = """examples:
  superweight ablate --data-dir ../shared/data --max-tokens 16384
  superweight ablate --data-dir ../shared/data --tasks piqa,arc_easy --limit 200 --out runs/ablate
  superweight ablate gemma3-270m --conditions original,no-sw --scan scan.json --json
  superweight ablate ./Qwen3-30B-A3B --conditions original,no-super-experts,random-experts --seed 1
"""


def register(sub: Any) -> None:
    from superweight.measure.ablation import CONDITIONS, EXPERT_CONDITIONS
    from superweight.model.interventions import CONTROL_K, SCOPES

    p = sub.add_parser(
        "ablate",
        help="zero the super weights (and controls) and measure perplexity / accuracy",
        description="Table 1 of Yu et al. 2024: the model as loaded, with its super weights zeroed, zeroed "
        "with the super activation restored, and two controls (k largest / k random other weights zeroed).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_measuring(p)
    a = p.add_argument_group("ablation")
    experts = ", ".join(EXPERT_CONDITIONS)
    a.add_argument(
        "--conditions",
        default=",".join(CONDITIONS),
        help=f"comma-separated, from {', '.join(CONDITIONS)}; for mixture-of-experts models also {experts} "
        "(the scan's super experts pruned, and as many random other experts)",
    )
    a.add_argument(
        "-k", "--k", type=int, default=CONTROL_K, help=f"weights zeroed by the controls (default {CONTROL_K})"
    )
    a.add_argument("--scope", default=SCOPES[0], choices=SCOPES, help="where controls pick weights")
    a.add_argument("--seed", type=int, default=0, help="seed of the random-k control")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from superweight.errors import SuperweightError
    from superweight.measure.ablation import check_conditions, run_ablation
    from superweight.report.measure import ablation_text

    names = split_list(args.conditions)
    check_conditions(names)
    if args.k < 1:
        raise SuperweightError(f"must be at least 1 (got {args.k})", option="k")
    settings = settings_from(args)
    lm = load_from(args)
    scan = scan_from(args, lm)
    result = run_ablation(
        lm, scan, settings, names, k=args.k, scope=args.scope, seed=args.seed, experts=scan.super_experts
    )
    emit(args, "ablate", result, ablation_text)
    return 0
