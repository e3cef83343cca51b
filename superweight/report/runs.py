"""One run folder per experiment: results.json, the figures (PNG + SVG) and a self-contained report.html."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from superweight.io import write_json


def write_run(out_dir: str | Path, command: str, payload: dict[str, Any], *, report: bool = True) -> Path:
    """Write ``out_dir/results.json`` (atomically), then the figures and report.html; return the folder.

    results.json is written first and is never lost to a reporting problem: a figure that cannot be
    drawn is skipped with a sentence in the report, and any other reporting failure is one warning line.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        from superweight.errors import SuperweightError

        raise SuperweightError(f"--out {out} exists and is not a folder; give a new or existing folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"command": command, **payload})
    if report:
        from superweight.progress import step

        try:
            with step(f"writing {out / 'report.html'}"):
                from superweight.report.html import build_report

                build_report(out, command, payload)
        except Exception as exc:
            if os.environ.get("SUPERWEIGHT_DEBUG"):
                raise
            print(
                f"superweight {command}: warning: results.json was written but the report was not "
                f"({type(exc).__name__}: {exc}); rebuild it with: superweight report {out}",
                file=sys.stderr,
            )
    return out
