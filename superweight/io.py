"""Atomic file writes: a results file is either the old one or the complete new one, never half of it."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None], mode: int | None = None) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic on POSIX, so readers and crashes never see a partial file. The file gets
    ``mode`` (default: what a plain ``open`` would give under the umask); a secret passes 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask  # mkstemp makes 0600; results are meant to be shared
    try:
        os.chmod(tmp_path, mode)  # before anything is written into it
        write(tmp_path)
        os.chmod(tmp_path, mode)  # in case `write` replaced the file
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _json_safe(obj: Any) -> Any:
    """JSON has no NaN/Inf: write them as strings so that every file stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _restored(obj: Any) -> Any:
    if isinstance(obj, str):
        return _NON_FINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: _restored(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restored(v) for v in obj]
    return obj


def from_json(text: str) -> Any:
    """The inverse of :func:`to_json`: the strings "nan", "inf" and "-inf" become floats again."""
    return _restored(json.loads(text))


def to_json(payload: Any) -> str:
    return json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n"


def write_json(path: str | Path, payload: Any) -> Path:
    return atomic_write_text(path, to_json(payload))
