"""`superweight verify [MODEL] MANIFEST`: exit 0 when the model matches its manifest, 1 with what changed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from superweight.cli.options import add_device, add_model, add_output, emit

EXAMPLES = """examples:
  superweight verify smollm2.manifest.json                 the manifest's own model: every tensor hash
  superweight verify ./my-model m.json --fast              only the super weights' bytes (microseconds)
  superweight verify ./my-model-bf16 m.json --canary       a converted copy: checked by behaviour
  superweight verify ./my-model m.json --pubkey keys/release.pub
  superweight verify ./my-model m.json --model-signature ./my-model/model.sig --model-signing-pubkey ec.pub
exit codes: 0 all checks pass, 1 something changed, 2 bad input (manifest, key, model)
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="check a model against its manifest (hashes, super weights, canary)",
        description="Compare a model with a manifest from `superweight fingerprint`: which tensors changed, "
        "whether a super weight changed (old/new value, flipped bits), and optionally its behaviour.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model(p, load=False)
    p.add_argument("manifest", type=Path, help="the manifest JSON")
    add_device(p)  # the canary loads the model; nothing else does
    add_output(p)
    p.add_argument("--fast", action="store_true", help="check only the super weights (no full hash)")
    p.add_argument("--canary", action="store_true", help="also run the behavioural canary (loads the model)")
    p.add_argument("--pubkey", type=Path, metavar="KEY", help="require a valid Ed25519 signature by this key")
    p.add_argument("--model-signature", type=Path, metavar="SIG", dest="ossf_signature",
                   help="first check this OpenSSF Model Signing signature of the folder (file level)")  # fmt: skip
    p.add_argument("--model-signing-pubkey", type=Path, metavar="EC_PUB", dest="ossf_pubkey",
                   help="the ECDSA public key (PEM) for --model-signature")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from superweight.errors import SuperweightError
    from superweight.guard.manifest import load_manifest
    from superweight.guard.verify import verify_model

    manifest = load_manifest(args.manifest)
    if (args.ossf_signature is None) != (args.ossf_pubkey is None):
        raise SuperweightError("a model signature is checked with its public key: give both or neither",
                               option="ossf_signature")  # fmt: skip
    if args.ossf_signature is not None:
        from superweight.guard.signing import verify_signed_model

        model = args.model or manifest.model.spec
        verify_signed_model(model, args.ossf_signature, args.ossf_pubkey, tensors=False)  # raises on a mismatch
        print(f"OpenSSF Model Signing: {args.ossf_signature} valid for every file of {model}", file=sys.stderr)
    report = verify_model(
        args.model or manifest.model.spec,
        manifest,
        manifest_path=str(args.manifest),
        fast=args.fast,
        canary=args.canary,
        pubkey=args.pubkey,
        dtype=args.dtype,
        device=args.device,
    )
    emit(args, "verify", report, render)
    return 0 if report.ok else 1


def render(r: Any) -> str:
    from superweight.report.tables import format_table

    out = [f"{r.model} against {r.manifest}: {'OK' if r.ok else 'CHANGED'}"]
    out.append("checks: " + ", ".join(f"{k} {v}" for k, v in r.checks.items()) + f"; signature {r.signature}")
    text = "\n".join(out) + "\n"
    if r.changed:
        rows = []
        for c in r.changed[:50]:
            loc = c.location
            where = "-"
            if loc:
                where = f"{loc.get('index', loc.get('row'))} bit {loc['bit']} {loc.get('meaning', '')}".strip()
            rows.append([c.name, c.change, where, "; ".join(c.super_weights) or "-"])
        text += format_table(["tensor", "change", "where", "super weights"], rows, title="changed tensors")
        if len(r.changed) > 50:
            text += f"... and {len(r.changed) - 50} more (--json for all)\n"
    if r.super_weights:
        rows = [[s.layer, s.row, s.col, s.status, s.old_value, s.new_value,
                 ",".join(map(str, s.flipped_bits)) or "-", ", ".join(s.meanings) or "-"]
                for s in r.super_weights]  # fmt: skip
        text += format_table(["layer", "row", "col", "status", "old", "new", "flipped bits", "meaning"], rows,
                             title="super weights")  # fmt: skip
    if r.canary:
        c = r.canary
        verdict = "pass" if c.passed else "FAIL: " + "; ".join(c.reasons)
        text += f"canary: {verdict} (max activation change {c.max_activation_change:.3g}, "
        text += f"max logit change {c.max_logit_change:.3g}, top-k overlap {c.topk_overlap:.0%})\n"
    for n in r.notes:
        text += f"note: {n}\n"
    if "fast_s" in r.timings:
        text += f"super-weight check: {r.timings['fast_s'] * 1e6:.0f} µs\n"
    return text
