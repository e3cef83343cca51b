"""`superweight scale [MODEL] --alphas ...`: Figure 6 of Yu et al., a metric per super-weight scale factor."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from superweight.cli.ablate import add_eval_args, scan_from_args, settings_from_args
from superweight.cli.common import add_model_args, add_output_args, emit, load_from_args

EXAMPLES = """examples:
  superweight scale --data-dir ../shared/data --max-tokens 8192 --out runs/scale   (figures/scale_curve.png)
  superweight scale --alphas 0,1,2,4 --tasks piqa --limit 200 --plot scale.png
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "scale",
        help="multiply the super weights by alpha and measure each",
        description="Figure 6 of Yu et al. 2024: scale the super weights by each alpha, measure perplexity "
        "(and accuracy with --tasks), report the best alpha and its gain over alpha=1, and plot the curve.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    add_output_args(p)
    add_eval_args(p)
    p.add_argument("--alphas", default="0,0.2,0.5,1,1.5,2,3", help="comma-separated scale factors")
    p.add_argument(
        "--plot", type=Path, default=None, metavar="PNG", help="also draw the curve here (--out DIR has it in figures/)"
    )
    p.set_defaults(func=run)


def parse_alphas(text: str) -> list[float]:
    from superweight.errors import SuperweightError

    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise SuperweightError(f"--alphas {text!r} is not a list of numbers; e.g. --alphas 0,0.5,1,2") from None
    if not alphas or any(a != a or abs(a) == float("inf") for a in alphas):
        raise SuperweightError(f"--alphas {text!r} has no finite numbers; e.g. --alphas 0,0.5,1,2")
    return sorted(set(alphas))


def run(args: argparse.Namespace) -> int:
    from superweight.measure.experiments import run_scaling
    from superweight.progress import log

    alphas = parse_alphas(args.alphas)
    settings = settings_from_args(args)
    lm = load_from_args(args)
    scan = scan_from_args(args, lm)
    payload = run_scaling(lm, scan, settings, alphas)
    plot = args.plot  # with --out, the run folder has it as figures/scale_curve.png
    if plot is not None:
        payload["plot"] = str(plot)
        draw(payload, plot)
        log(f"wrote {plot}")
    emit(args, "scale", payload, render)
    return 0


def draw(payload: dict[str, Any], path: Path) -> None:
    """The run folder's scale figure (reporting's, one drawing for both), written atomically."""
    from superweight.io import atomic_write_bytes
    from superweight.report.figures import render as render_figure
    from superweight.report.figures_eval import scale_curve

    atomic_write_bytes(path, render_figure(scale_curve(payload), "png"))


def render(payload: dict[str, Any]) -> str:
    from superweight.report.tables import format_table

    points = payload["points"]
    sources = list(dict.fromkeys(s for p in points for s in p["perplexity"]))
    tasks = list(dict.fromkeys(t for p in points for t in p["accuracy"]))
    headers = ["alpha", *(f"ppl {s}" for s in sources), *tasks, "super act."]
    rows = [
        [p["alpha"], *(p["perplexity"].get(s) for s in sources), *(p["accuracy"].get(t) for t in tasks),
         p.get("super_activation")]
        for p in points
    ]  # fmt: skip
    out = format_table(headers, rows, title=f"{payload['model']}: super weights scaled by alpha")
    gain = payload["gain"]
    shown = f"{gain:+.1%}" if payload["metric"].startswith("perplexity") else f"{gain:+.4f}"
    out += (
        f"\nbest alpha {payload['best_alpha']:g}: {payload['metric']} {payload['best_value']:.4g} "
        f"(alpha=1: {payload['baseline_value']:.4g}; gain {shown}, {payload['gain_meaning']})\n"
    )
    return out
