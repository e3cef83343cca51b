"""`superweight scale [MODEL] --alphas ...`: Figure 6 of Yu et al., a metric per super-weight scale factor."""

from __future__ import annotations

import argparse
from typing import Any

from superweight.cli.options import add_measuring, emit, load_from, scan_from, settings_from, split_list

EXAMPLES = """examples:
  superweight scale --data-dir ../shared/data --max-tokens 8192 --out runs/scale   (figures/scale_curve.png)
  superweight scale --alphas 0,1,2,4 --tasks piqa --limit 200 --json
"""


def register(sub: Any) -> None:
    from superweight.measure.ablation import DEFAULT_ALPHAS

    p = sub.add_parser(
        "scale",
        help="multiply the super weights by alpha and measure each",
        description="Figure 6 of Yu et al. 2024: scale the super weights by each alpha, measure perplexity "
        "(and accuracy with --tasks), report the best alpha and its gain over alpha=1, and plot the curve.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_measuring(p)
    p.add_argument("--alphas", default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS), help="comma-separated scale factors")
    p.set_defaults(func=run)


def parse_alphas(text: str) -> list[float]:
    from superweight.errors import SuperweightError

    try:
        alphas = [float(a) for a in split_list(text)]
    except ValueError:
        raise SuperweightError(f"{text!r} is not a list of numbers; e.g. 0,0.5,1,2", option="alphas") from None
    if not alphas or any(a != a or abs(a) == float("inf") for a in alphas):
        raise SuperweightError(f"{text!r} has no finite numbers; e.g. 0,0.5,1,2", option="alphas")
    return sorted(set(alphas))


def run(args: argparse.Namespace) -> int:
    from superweight.measure.ablation import run_scaling
    from superweight.report.measure import scaling_text

    alphas = parse_alphas(args.alphas)
    settings = settings_from(args)
    lm = load_from(args)
    scan = scan_from(args, lm)
    emit(args, "scale", run_scaling(lm, scan, settings, alphas), scaling_text)
    return 0
