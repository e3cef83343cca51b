"""`superweight fingerprint [MODEL] -o manifest.json`: per-tensor hashes, super weights and a canary."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from superweight.cli.options import Payload, add_model, add_output, emit

EXAMPLES = """examples:
  superweight fingerprint -o smollm2.manifest.json            the default model: hashes, super weights, canary
  superweight fingerprint ./my-model -o m.json --no-scan      hashes only (no model load)
  superweight fingerprint --keygen keys/release               write keys/release (0600) and keys/release.pub
  superweight fingerprint ./my-model -o m.json --sign keys/release
then: superweight verify ./my-model m.json --pubkey keys/release.pub
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "fingerprint",
        help="write an integrity manifest: per-tensor hashes, super weight bits, canary",
        description="Hash every tensor straight from its safetensors/GGUF byte range (streamed; independent "
        "of sharding), record the super weights' exact bits and a behavioural canary, optionally sign it.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model(p)
    add_output(p)
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="where to write the manifest (JSON)")
    p.add_argument("--sign", type=Path, metavar="KEY", help="sign with this Ed25519 private key (PEM or raw)")
    p.add_argument("--keygen", type=Path, metavar="KEY", help="write a new key pair KEY and KEY.pub, then exit")
    p.add_argument("--no-scan", action="store_true", help="hashes only: no model load, no super weights")
    p.add_argument("--scan-json", type=Path, metavar="FILE", help="take the super weights from a saved scan result")
    p.add_argument("--no-canary", action="store_true", help="skip the behavioural canary")
    p.add_argument("--hash", default="sha256", metavar="ALGO", help="hashlib algorithm (default sha256)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import hashlib
    import json
    import sys

    from superweight.errors import SuperweightError
    from superweight.guard.manifest import _load_key, fingerprint, generate_keypair, save_manifest

    if args.keygen is not None:
        private, public = generate_keypair(args.keygen)
        print(f"wrote {private} (private, mode 0600) and {public} (public)", file=sys.stderr)
        return 0
    if args.output is None:
        raise SuperweightError("say where to write the manifest: -o manifest.json")
    if args.hash not in hashlib.algorithms_available:
        raise SuperweightError(f"unknown hash {args.hash!r}; use sha256, sha512, blake2b, ...")
    if args.sign is not None:
        _load_key(args.sign, private=True)  # fail on a bad key before minutes of work
    scan_result = None
    if args.scan_json is not None:
        from superweight.detect.result import ScanResult

        try:
            scan_result = ScanResult.from_dict(json.loads(args.scan_json.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise SuperweightError(f"cannot read the scan result {args.scan_json}: {exc}") from None
    manifest = fingerprint(
        args.model,
        scan=not args.no_scan,
        canary=not (args.no_canary or args.no_scan),
        scan_result=scan_result,
        algorithm=args.hash,
        dtype=args.dtype,
        device=args.device,
        down_proj=args.down_proj,
    )
    if args.no_scan and scan_result is None:
        manifest["notes"] = ["made with --no-scan: no super weights, no canary"]
    save_manifest(manifest, args.output, key=args.sign)
    print(f"wrote {args.output}{' (signed)' if args.sign else ''}", file=sys.stderr)
    summary = {
        "manifest": str(args.output),
        "model": manifest["model"],
        "files": manifest["files"],
        "num_tensors": len(manifest["tensors"]),
        "nonfinite": manifest["nonfinite"],
        "super_weights": manifest["super_weights"],
        "canary": manifest["canary"],
        "signed": args.sign is not None,
    }
    emit(args, "fingerprint", Payload(summary), render)
    return 0


def render(p: dict[str, Any]) -> str:
    from superweight.report.tables import format_table

    m = p["model"]
    lines = [
        f"{m['spec']}: {m['format']}, {p['num_tensors']} tensors, {m['num_bytes'] / 1e6:.1f} MB in "
        f"{len(p['files'])} file(s); content digest {m['content_digest'][:16]}",
        f"non-finite values: {sum(p['nonfinite'].values()) if p['nonfinite'] else 'none'}",
    ]
    out = "\n".join(lines) + "\n"
    if p["super_weights"]:
        rows = [[e["layer"], e["row"], e["col"], e["value"], e.get("tensor", e["param"]), e.get("dtype"),
                 e.get("bits", e["memory_bits"])] for e in p["super_weights"]]  # fmt: skip
        out += format_table(["layer", "row", "col", "value", "tensor", "dtype", "bits"], rows, title="super weights")
    if p["canary"]:
        c = p["canary"]
        layers = len(c["layer_magnitudes"])
        out += f"canary: {layers} layers, channel {c['channel']}, top token {c['top_ids'][0]}\n"
    out += f"signed: {'yes' if p['signed'] else 'no'}\n"
    return out
