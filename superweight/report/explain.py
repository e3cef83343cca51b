"""Small helpers the pages use to write sentences from numbers (never typed in by hand)."""

from __future__ import annotations

from typing import Any

from superweight.coordinates import SuperWeight


def fmt_value(value: Any) -> str:
    """A value short enough for a sentence or a table cell."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        if len(value) > 8:
            return f"[{len(value)} values]"
        return ", ".join(f"[{fmt_value(v)}]" if isinstance(v, list) else fmt_value(v) for v in value)
    if isinstance(value, dict):
        if any(isinstance(v, (dict, list)) for v in value.values()):
            return f"{{{len(value)} entries: see results.json}}"
        return "; ".join(f"{k}: {fmt_value(v)}" for k, v in list(value.items())[:8])
    return str(value)


def g(value: float | int | None, digits: int = 3) -> str:
    """A number with ``digits`` significant digits ('-' for None)."""
    return "-" if value is None else f"{float(value):.{digits}g}"


def where(sw: SuperWeight) -> str:
    return f"{sw.module} [row {sw.row}, column {sw.col}]"
