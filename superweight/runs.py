"""One run folder per experiment: results.json, plus the figures and report that reporting adds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from superweight.io import write_json


def write_run(out_dir: str | Path, command: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as ``out_dir/results.json`` (atomically) and return the folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        from superweight.errors import SuperweightError

        raise SuperweightError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"command": command, **payload})
    return out
