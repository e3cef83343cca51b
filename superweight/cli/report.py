"""`superweight report RUN_DIR [RUN_DIR...]`: rebuild a run's report, or compare several runs side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from superweight.cli.common import add_output_args

EXAMPLES = """examples:
  superweight report runs/smollm2                     redraw the figures and report.html of one run folder
  superweight report runs/smollm2 --out /tmp/copy     ... into another folder, leaving the run as it is
  superweight report runs/smollm2 runs/gemma3 --out runs/compare
                                                      models side by side: which have super weights,
                                                      where, and how strong (runs/compare/report.html)

A run folder is what any command writes with --out DIR; only its results.json is read.
"""

DEFAULT_COMPARE_DIR = Path("superweight-compare")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="rebuild a run folder's figures and report.html, or compare several runs",
        description="Rebuild the figures (PNG + SVG) and the self-contained report.html of a run folder\n"
        "from its results.json; given several run folders, write one comparison page.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", type=Path, help="run folders written with --out DIR")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from superweight.errors import SuperweightError
    from superweight.io import to_json
    from superweight.progress import log, step
    from superweight.report.html import build_report, compare_payload, read_run
    from superweight.report.runs import write_run

    loaded = [(path, *read_run(path)) for path in args.runs]
    if len(loaded) == 1:
        path, command, payload = loaded[0]
        if args.out is not None and Path(args.out).resolve() != path.resolve():
            write_run(args.out, command, payload, report=False)
        out = args.out or path
        with step(f"writing {Path(out) / 'report.html'}"):
            report = build_report(out, command, payload)
        result: dict[str, Any] = {"command": command, **report.to_dict()}
    else:
        names = [p.resolve().name or str(p) for p, _, _ in loaded]
        if len(set(names)) < len(names):  # two runs called "smollm2" in different folders
            names = [str(p) for p, _, _ in loaded]
        runs = [(name, command, payload) for name, (_, command, payload) in zip(names, loaded, strict=True)]
        out = args.out or DEFAULT_COMPARE_DIR
        if any(Path(out).resolve() == p.resolve() for p, _, _ in loaded):
            raise SuperweightError(f"--out {out} is one of the compared runs; give a new folder")
        payload = compare_payload(runs)
        write_run(out, "compare", payload, report=False)
        with step(f"writing {Path(out) / 'report.html'}"):
            report = build_report(out, "compare", payload)
        result = {"command": "compare", "runs": [str(p) for p, _, _ in loaded], **report.to_dict()}
    for name, why in report.skipped.items():
        log(f"skipped figure {name}: {why}")
    print(f"wrote {report.html_path}", file=sys.stderr)
    sys.stdout.write(to_json(result) if args.json else render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    lines = [f"report: {result['html']}"]
    lines += [f"figure: {f}" for f in result["figures"] if f.endswith(".png")]
    lines += [f"skipped: {name} ({why})" for name, why in result["skipped"].items()]
    return "\n".join(lines) + "\n"
