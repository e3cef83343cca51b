"""`superweight diff MODEL_A MODEL_B`: per-tensor change statistics and the fate of the super weights."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from superweight.cli.options import add_output, emit

EXAMPLES = """examples:
  superweight diff ./base ./finetuned --manifest base.manifest.json     super weights from A's manifest
  superweight diff smollm2-135m ./smollm2-hf --top 10                   across GGUF and safetensors
  superweight diff ./base ./merged --activations                        also run both models once
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "diff",
        help="compare two checkpoints tensor by tensor; what became of the super weights",
        description="Stream two checkpoints of one architecture pairwise (safetensors and/or GGUF): relative "
        "norm of each tensor's change, max change, entries changed, largest first, and whether each super "
        "weight (and activation) was kept, scaled, moved or removed.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_a", help="the reference checkpoint: alias, .gguf, .safetensors or HF folder")
    p.add_argument("model_b", help="the checkpoint to compare with it")
    add_output(p)
    p.add_argument("--manifest", type=Path, metavar="FILE", help="A's manifest: its super weights (no scan)")
    p.add_argument("--activations", action="store_true", help="load both models to compare super activations")
    p.add_argument("--top", type=int, default=20, help="tensors to show in the table (default 20; JSON has all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from superweight.guard.diff import diff_checkpoints

    super_weights = None
    if args.manifest is not None:
        from superweight.guard.manifest import load_manifest
        from superweight.guard.verify import check_same_model
        from superweight.model.files import resolve_model_files

        manifest = load_manifest(args.manifest)
        check_same_model(manifest, resolve_model_files(args.model_a))  # another model's manifest: one clear line
        super_weights = manifest.super_weights
    report = diff_checkpoints(args.model_a, args.model_b, super_weights=super_weights, activations=args.activations)
    emit(args, "diff", report, lambda r: render(r.to_dict(), args.top))
    return 0


def render(r: dict[str, Any], top: int) -> str:
    from superweight.report.tables import format_table

    changed = [t for t in r["tensors"] if t["changed"] or t["rel_change"]]
    text = f"{r['model_a']} ({r['formats'][0]}) vs {r['model_b']} ({r['formats'][1]}): "
    text += f"{len(changed)} of {len(r['tensors'])} shared tensors differ"
    text += f"; only in A: {len(r['only_a'])}, only in B: {len(r['only_b'])}\n"
    rows = [[t["name"], t["rel_change"], t["max_change"], t["changed"], t["numel"]] for t in changed[:top]]
    if rows:
        text += format_table(
            ["tensor", "rel change", "max change", "changed", "entries"], rows, title="largest changes"
        )
    if r["super_weights"]:
        rows = [[w["layer"], w["row"], w["col"], w["value_a"], w["value_b"], w["ratio"], w["fate"],
                 w["moved_to"] or "-"] for w in r["super_weights"]]  # fmt: skip
        text += format_table(["layer", "row", "col", "A", "B", "B/A", "fate", "moved to"], rows, title="super weights")
    if r["super_activations"]:
        rows = [[a["layer"], a["channel"], a["magnitude_a"], a["magnitude_b"], a["ratio"], a["fate"]]
                for a in r["super_activations"]]  # fmt: skip
        text += format_table(["layer", "channel", "A", "B", "B/A", "fate"], rows, title="super activations")
    for n in r["notes"]:
        text += f"note: {n}\n"
    return text
