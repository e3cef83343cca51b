"""A run folder's ``report.html``: every figure inline, each result explained in a sentence.

The page is self-contained (figures as data URIs, CSS inline, no script, no network), so it opens
from a mail attachment or an air-gapped machine exactly as it does here. It is rebuilt from the
results document alone, which is why ``superweight report`` can regenerate it from ``results.json``.
The sentences are built from the numbers in the results, never typed in by hand.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from superweight.io import atomic_write_bytes, atomic_write_text, to_json
from superweight.report.explain import fmt_value
from superweight.report.figures import DrawnFigure, draw_all, render
from superweight.report.pages import Page, page_for, read_result

FIGURE_DIR = "figures"
MAX_ROWS = 60

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1b1b;max-width:60rem;
margin:2rem auto;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9rem}figure{margin:1.5rem 0}figure img{max-width:100%;height:auto;display:block;
border:1px solid #eee}figcaption{font-size:.92rem;color:#333;margin-top:.4rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0;display:block;overflow-x:auto}
th,td{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}.skipped{color:#8a5a00}
details pre{font-size:.75rem;background:#f8f8f8;padding:.5rem;overflow-x:auto;max-height:30rem}
@media print{details{display:none}figure{break-inside:avoid}}
"""


@dataclass
class Report:
    """What ``build_report`` wrote: the page, the figure files, and the figures it skipped (with why)."""

    html_path: Path
    figure_files: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "html": str(self.html_path),
            "figures": [str(p) for p in self.figure_files],
            "skipped": dict(self.skipped),
        }


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    """One level of nesting becomes ``outer.inner`` columns (perplexity.wikitext2)."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values()):
            for inner, v in value.items():
                flat[f"{key}.{inner}"] = v
        else:
            flat[key] = value
    return flat


def table_html(rows: list[dict[str, Any]], max_rows: int = MAX_ROWS) -> str:
    """A list of records as an HTML table (union of keys as columns), capped at ``max_rows``."""
    flat = [_flatten(r) for r in rows[:max_rows]]
    columns: list[str] = []
    for r in flat:
        columns += [k for k in r if k not in columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in flat:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{html.escape(fmt_value(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f'<p class="meta">{len(rows) - max_rows} more rows in results.json</p>' if len(rows) > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def details_html(payload: dict[str, Any]) -> str:
    """Scalars as a key/value table and lists of records as tables: every result is on the page."""
    parts: list[str] = []
    scalars = {k: v for k, v in payload.items() if not isinstance(v, (list, dict))}
    small = {k: v for k, v in payload.items() if isinstance(v, dict) and len(json.dumps(v, default=str)) < 400}
    if scalars or small:
        rows = [{"field": k, "value": fmt_value(v)} for k, v in {**scalars, **small}.items()]
        parts.append(table_html(rows, max_rows=200))
    for key, value in payload.items():
        name = html.escape(key.replace("_", " "))
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            parts.append(f"<h3>{name} ({len(value)})</h3>{table_html(value)}")
        elif isinstance(value, dict) and key not in small:  # provenance and the like: dotted keys
            rows = [{"field": k, "value": fmt_value(v)} for k, v in _dotted(value).items()]
            parts.append(f"<h3>{name}</h3>{table_html(rows)}")
    return "\n".join(parts)


def _dotted(tree: dict[str, Any], prefix: str = "", depth: int = 3) -> dict[str, Any]:
    """Nested dicts as ``a.b.c`` keys, down to ``depth`` levels."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and depth > 1:
            flat.update(_dotted(value, f"{name}.", depth - 1))
        else:
            flat[name] = value
    return flat


def _image(fig_png: bytes, alt: str) -> str:
    data = base64.b64encode(fig_png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def report_html(page: Page, result: Any, doc: dict[str, Any], figures: list[tuple[DrawnFigure, bytes | None]]) -> str:
    """The page of one results document: sentences, figures (PNG, or why each was skipped), every number."""
    from superweight import __version__

    heading = page.heading(result)
    title = f"superweight {page.command}" + (f": {heading}" if heading else "")
    try:
        sentences = page.summary(result)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError, IndexError) as exc:
        sentences = [f"(the summary could not be written: {type(exc).__name__}: {exc})"]
    fig_parts = []
    for drawn, png in figures:
        name, fig_title = html.escape(drawn.spec.name), html.escape(drawn.spec.title)
        if png is None:
            why = html.escape(drawn.skipped or "")
            fig_parts.append(f'<p class="skipped" id="{name}">Figure “{fig_title}” was skipped: {why}.</p>')
        else:
            fig_parts.append(
                f'<figure id="{name}">{_image(png, drawn.spec.title)}'
                f"<figcaption><b>{fig_title}.</b> {html.escape(drawn.caption)}</figcaption></figure>"
            )
    raw = to_json(doc)
    if len(raw) > 200_000:
        raw = raw[:200_000] + "\n... (truncated; the full results are in results.json)"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{html.escape(title)}</title><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">written by superweight {html.escape(__version__)}; figures are also saved as PNG and SVG in
{FIGURE_DIR}/; the raw numbers are in results.json.</p>
<h2>What it shows</h2>
{"".join(f"<p>{html.escape(s)}</p>" for s in sentences)}
{("<h2>Figures</h2>" + "".join(fig_parts)) if fig_parts else ""}
<h2>Results</h2>
{details_html(doc)}
<details><summary>results.json</summary><pre>{html.escape(raw)}</pre></details>
</body></html>
"""


def build_report(out_dir: str | Path, doc: dict[str, Any]) -> Report:
    """Draw a results document's figures into ``out_dir/figures`` (PNG + SVG) and write ``report.html``."""
    page = page_for(doc["command"])
    result = read_result(page, doc)
    out = Path(out_dir)
    fig_dir = out / FIGURE_DIR
    report = Report(out / "report.html")
    entries: list[tuple[DrawnFigure, bytes | None]] = []
    for d in draw_all(page, result):
        name = d.spec.name
        if d.figure is None:
            report.skipped[name] = d.skipped or "no data"
            for ext in ("png", "svg"):  # a stale figure from an earlier run would contradict the page
                (fig_dir / f"{name}.{ext}").unlink(missing_ok=True)
            entries.append((d, None))
            continue
        png = render(d.figure, "png")
        report.figure_files.append(atomic_write_bytes(fig_dir / f"{name}.png", png))
        report.figure_files.append(atomic_write_bytes(fig_dir / f"{name}.svg", render(d.figure, "svg")))
        entries.append((d, png))
    atomic_write_text(report.html_path, report_html(page, result, doc, entries))
    return report
