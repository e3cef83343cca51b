"""Append-only JSONL logs (a training run's checks, a watcher's verdicts): one line per record.

Each record is written with a single ``write`` on a descriptor opened with ``O_APPEND``, so lines
from concurrent writers never interleave and a crash leaves at most one missing line, never half of one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from superweight.io import from_json, to_json


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` (with a UTC ``time`` added when absent) as one JSON line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
    line = json.dumps(json.loads(to_json(record)), separators=(",", ":")) + "\n"  # strict JSON, one line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every complete record of a JSONL log (a torn last line, if any, is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(from_json(line))
        except json.JSONDecodeError:
            continue
    return out
