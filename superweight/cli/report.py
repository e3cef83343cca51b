"""`superweight report RUN_DIR [RUN_DIR...]`: rebuild a run's report, or compare several runs side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from superweight.cli.options import add_output

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
        help="rebuild a run folder's figures and report.html, or compare several scans",
        description="Rebuild the figures (PNG + SVG) and the self-contained report.html of a run folder\n"
        "from its results.json; given several scan run folders, write one comparison page.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", type=Path, help="run folders written with --out DIR")
    add_output(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from superweight.errors import SuperweightError
    from superweight.io import to_json, write_json
    from superweight.progress import log, step
    from superweight.report.compare import compare_runs
    from superweight.report.html import build_report
    from superweight.report.pages import page_for, read_result
    from superweight.results import document, read_document

    docs = [(path, read_document(path, option="runs")) for path in args.runs]
    for _, doc in docs:  # a malformed result is one line now, not after the page is half written
        read_result(page_for(doc["command"]), doc)
    if len(docs) == 1:
        path, doc = docs[0]
        out = args.out or path
        if Path(out).resolve() != path.resolve():
            write_json(Path(out) / "results.json", doc)
        with step(f"writing {Path(out) / 'report.html'}"):
            report = build_report(out, doc)
        result: dict[str, Any] = {"command": doc["command"], **report.to_dict()}
    else:
        names = [p.resolve().name or str(p) for p, _ in docs]
        if len(set(names)) < len(names):  # two runs called "smollm2" in different folders
            names = [str(p) for p, _ in docs]
        comparison = compare_runs([(name, doc) for name, (_, doc) in zip(names, docs, strict=True)])
        out = args.out or DEFAULT_COMPARE_DIR
        if any(Path(out).resolve() == p.resolve() for p, _ in docs):
            raise SuperweightError(f"{out} is one of the compared runs; give a new folder", option="out")
        doc = document("compare", comparison)
        write_json(Path(out) / "results.json", doc)
        with step(f"writing {Path(out) / 'report.html'}"):
            report = build_report(out, doc)
        result = {"command": "compare", "runs": [str(p) for p, _ in docs], **report.to_dict()}
    for name, why in report.skipped.items():
        log(f"skipped figure {name}: {why}")
    log(f"wrote {report.html_path}")
    sys.stdout.write(to_json(result) if args.json else render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    lines = [f"report: {result['html']}"]
    lines += [f"figure: {f}" for f in result["figures"] if f.endswith(".png")]
    lines += [f"skipped: {name} ({why})" for name, why in result["skipped"].items()]
    return "\n".join(lines) + "\n"
