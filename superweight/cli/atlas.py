"""`superweight atlas [MODEL]` / `superweight atlas check MODEL`: published super weights, and a shape check."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.cli.options import add_output, emit

if TYPE_CHECKING:
    from superweight.detect.atlas import AtlasListing
    from superweight.detect.atlas_check import AtlasCheck

EXAMPLES = """examples:
  superweight atlas                          every entry: model, status, source, coordinates
  superweight atlas llama-7b                 the entries for one model id or alias
  superweight atlas check ./Llama-2-7b-hf    do its entries name real weights? (tensor shapes only)
  superweight atlas check gpt2-folder --entry llama-7b   apply another model's coordinates: out of range
exit codes (check): 0 every coordinate fits, 1 some do not, 2 bad input
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "atlas",
        help="published super weights and super experts; check them against a model's shapes",
        description="The atlas of published super-weight and super-expert coordinates (Yu et al. 2024, Su et "
        "al. 2025, this project's scans), with source and status per entry. `atlas check MODEL` reads only "
        "the model's tensor headers and says whether each coordinate exists in it.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", nargs="*", metavar="[check] MODEL", help="a model id or alias; `check MODEL` to check")
    p.add_argument("--entry", metavar="ID", default=None, help="(check) apply this entry instead of the matching ones")
    p.add_argument("--atlas", type=Path, metavar="FILE", default=None, help="another atlas file (same schema)")
    add_output(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from superweight.detect.atlas import list_entries, load_atlas
    from superweight.errors import SuperweightError

    words = list(args.target)
    checking = bool(words) and words[0] == "check"
    if checking:
        words = words[1:]
    if len(words) > 1 or (checking and not words):
        raise SuperweightError("give one MODEL (`superweight atlas [MODEL]` or `superweight atlas check MODEL`)")
    if args.entry is not None and not checking:
        raise SuperweightError("applies to `atlas check MODEL` only", option="entry")
    atlas = load_atlas(args.atlas)
    if not checking:
        emit(args, "atlas", list_entries(words[0] if words else None, atlas), render_listing)
        return 0
    from superweight.detect.atlas_check import check_shapes

    result = check_shapes(words[0], atlas, args.entry)
    emit(args, "atlas-check", result, render_check)
    return 0 if result.ok else 1


def _coordinates(entry: Any) -> str:
    parts = []
    for w in entry.super_weights:
        where = f"L{w.layer}" + (f" e{w.expert}" if w.expert is not None else "")
        mark = "?" if (w.status or entry.status) in ("disputed", "unverified") else ""
        parts.append(f"{where} [{w.row}, {w.col}]{mark}")
    parts += [f"L{x.layer} expert {x.expert}" for x in entry.super_experts]
    return "; ".join(parts) or "(none)"


def render_listing(listing: AtlasListing) -> str:
    from superweight.report.tables import format_table

    rows = [[e.id, e.model, e.status, _coordinates(e)] for e in listing.entries]
    out = format_table(["entry", "model", "status", "coordinates (layer [row, col]; ? = disputed/unverified)"], rows,
                       title=f"super-weight atlas {listing.atlas_version} ({len(rows)} entries)")  # fmt: skip
    if listing.query is not None:
        for e in listing.entries:
            out += f"\n{e.id}: {e.source}\n  revision: {e.revision or 'not recorded'}\n  checked: {e.verification}\n"
            if e.note:
                out += f"  note: {e.note}\n"
            for w in e.super_weights:
                if w.note:
                    out += f"  layer {w.layer} [{w.row}, {w.col}]: {w.note}\n"
    return out


def render_check(result: AtlasCheck) -> str:
    from superweight.report.tables import format_table

    t = result.tensors[0]
    experts = max((x.experts or 0 for x in result.tensors), default=0)
    geometry = f"{result.layers} layers, down-projection {t.hidden} x {t.intermediate}"
    out = f"{result.model} ({result.format}: {geometry}{f', {experts} experts' if experts else ''})\n"
    for check in result.checks:
        rows = [[item["coordinate"], "; ".join(item["problems"]) or "fits"] for item in check.weights + check.experts]
        verdict = "every coordinate fits" if check.fits else "OUT OF RANGE: these coordinates name no weight here"
        out += "\n" + format_table(["coordinate", "check"], rows, title=f"{check.entry} ({check.model}): {verdict}")
    return out
