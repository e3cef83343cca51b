"""`superweight repair MODEL --manifest M --out DIR`: a new, repaired copy; the super weights' exact bits back."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from superweight.cli.options import add_device, add_model, add_perplexity, emit, perplexity_settings_from

EXAMPLES = """examples:
  superweight repair ./damaged --manifest m.json --out ./repaired              super weights from the manifest
  superweight repair ./damaged --manifest m.json --out ./repaired --trusted ./backup
                                      also every changed tensor whose hash the manifest vouches for
  superweight repair smollm2-135m --manifest m.json --out ./fixed --no-eval
the model is never written to; --out must be a new (or empty) folder. exit 0: the copy matches the
manifest bit for bit; 1: some tensors still differ (listed); 2: bad input.
"""


def register(sub: Any) -> None:
    from superweight.guard.repair import REPAIR_EVAL_TOKENS, REPAIR_SEQ_LEN

    p = sub.add_parser(
        "repair",
        help="write a repaired copy: super weights' exact bits from the manifest, other tensors from a trusted copy",
        description="Copy MODEL to a new folder, write the super weights' recorded bytes back (a GGUF block "
        "whole, scale included), restore any other changed tensor from --trusted when its hash is the one "
        "the manifest records, verify the copy, and report perplexity before and after.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model(p, load=False)
    p.add_argument("--manifest", type=Path, required=True, metavar="FILE", help="the model's manifest")
    p.add_argument("--trusted", metavar="COPY", default=None, help="a trusted copy to take changed tensors from")
    p.add_argument("--pubkey", type=Path, metavar="KEY", help="require a valid Ed25519 signature on the manifest")
    p.add_argument("--no-eval", action="store_true", help="skip the perplexity before and after")
    add_device(p)
    add_perplexity(p, max_tokens=REPAIR_EVAL_TOKENS, seq_len=REPAIR_SEQ_LEN)
    g = p.add_argument_group("output")  # --out is the repaired model here, not a run folder
    g.add_argument("--out", metavar="DIR", type=Path, required=True, help="a new folder for the repaired copy")
    g.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from superweight.guard.manifest import load_manifest
    from superweight.guard.repair import repair_model

    manifest = load_manifest(args.manifest)
    result = repair_model(
        args.model,
        manifest,
        args.out,
        manifest_path=str(args.manifest),
        trusted=args.trusted,
        pubkey=args.pubkey,
        settings=perplexity_settings_from(args),
        evaluate=not args.no_eval,
        dtype=args.dtype,
        device=args.device,
    )
    emit(argparse.Namespace(out=None, json=args.json), "repair", result, render)  # no run folder in the model
    return 0 if result.verified else 1


def render(r: Any) -> str:
    from superweight.report.tables import format_table

    text = f"{r.model} -> {r.out_model}: {'bit-exact to the manifest' if r.verified else 'STILL DIFFERS'}\n"
    if r.restored:
        rows = [[e.label, e.tensor, e.byte_offset, e.bits_before, e.bits_after] for e in r.restored]
        text += format_table(["super weight", "tensor", "byte", "bits before", "bits after"], rows,
                             title="restored from the manifest")  # fmt: skip
    else:
        text += "super weights: already intact\n"
    for name in r.tensors_restored:
        text += f"restored from the trusted copy: {name}\n"
    for name in r.unrepaired:
        text += f"still differs: {name}\n"
    if r.perplexity_before is not None:
        text += f"perplexity on {r.eval_tokens} tokens: {r.perplexity_before:.4g} before, "
        text += f"{r.perplexity_after:.4g} after\n"
    for n in r.notes:
        text += f"note: {n}\n"
    return text
