"""Write the atlas table of docs/atlas.md from the data file (superweight/data/atlas.json), so they cannot drift.

Run: ``python scripts/results_atlas.py`` (instant: it reads the JSON, no model). It replaces the text
between the ``results:atlas`` markers in docs/atlas.md; ``--no-write`` prints it instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from superweight.detect.atlas import load_atlas

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "atlas.md"
START, END = "<!-- results:atlas:start -->", "<!-- results:atlas:end -->"


def coordinates(entry) -> str:
    parts: list[str] = []
    groups: dict[str, int] = {}  # alternative readings of one weight share a cell: "a or b"
    for w in entry.super_weights:
        where = f"{w.layer}" + (f" e{w.expert}" if w.expert is not None else "")
        status = w.status or entry.status
        text = f"{where} [{w.row}, {w.col}]" + (f" ({status})" if status != entry.status else "")
        if w.alternative is not None and w.alternative in groups:
            parts[groups[w.alternative]] += f" or {text}"
            continue
        if w.alternative is not None:
            groups[w.alternative] = len(parts)
        parts.append(text)
    parts += [f"expert ({x.layer}, {x.expert})" for x in entry.super_experts]
    return "; ".join(parts) or "none"


def table() -> str:
    atlas = load_atlas()
    status = {"published": "published", "measured here": "measured here"}
    rows = [
        f"| {e.id} | `{e.model}` | {status.get(e.status, f'**{e.status}**')} | {coordinates(e)} | {e.source} |"
        for e in atlas.entries
    ]
    return "\n".join(
        [
            f"Atlas version {atlas.atlas_version}, {len(rows)} entries; written by `python scripts/results_atlas.py`.",
            "Coordinates are `layer [row, col]` of the down-projection (`e` = expert).",
            "",
            "| entry | model | status | coordinates | source |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/atlas.md")
    args = parser.parse_args()
    text = table()
    if args.no_write:
        print(text)
        return 0
    doc = DOC.read_text()
    if START not in doc or END not in doc:
        raise SystemExit(f"{DOC} has no markers {START} ... {END}")
    head, rest = doc.split(START, 1)
    DOC.write_text(head + START + "\n" + text + END + rest.split(END, 1)[1])
    print(f"wrote the atlas table into {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
