"""One run folder per experiment: results.json, the figures (PNG + SVG) and a self-contained report.html."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from superweight.errors import SuperweightError
from superweight.io import write_json
from superweight.progress import step, warn
from superweight.results import document


def write_run(out_dir: str | Path, command: str, result: Any, *, report: bool = True) -> Path:
    """Write ``out_dir/results.json`` (atomically), then the figures and report.html; return the folder.

    results.json is written first and is never lost to a reporting problem: a figure that cannot be
    drawn is skipped with a sentence in the report, and any other reporting failure is one warning line.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SuperweightError(f"{out} exists and is not a folder; give a new or existing folder", option="out")
    out.mkdir(parents=True, exist_ok=True)
    doc = document(command, result)
    write_json(out / "results.json", doc)
    if report:
        try:
            with step(f"writing {out / 'report.html'}"):
                from superweight.report.html import build_report

                build_report(out, doc)
        except Exception as exc:
            if os.environ.get("SUPERWEIGHT_DEBUG"):
                raise
            warn(
                f"superweight {command}: warning: results.json was written but the report was not "
                f"({type(exc).__name__}: {exc}); rebuild it with: superweight report {out}"
            )
    return out
