"""`superweight fingerprint [MODEL] -o manifest.json`: per-tensor hashes, super weights and a canary."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from superweight.cli.options import add_model, add_output, add_scan, emit

EXAMPLES = """examples:
  superweight fingerprint -o smollm2.manifest.json            the default model: hashes, super weights, canary
  superweight fingerprint ./my-model -o m.json --no-scan      hashes only (no model load)
  superweight fingerprint --keygen keys/release               write keys/release (0600) and keys/release.pub
  superweight fingerprint ./my-model -o m.json --sign keys/release
  superweight fingerprint ./my-model -o m.json --model-signing ec.key    also OpenSSF Model Signing (file level)
then: superweight verify ./my-model m.json --pubkey keys/release.pub
      superweight verify ./my-model m.json --model-signature ./my-model/model.sig --model-signing-pubkey ec.pub
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
    p.add_argument("--model-signing", type=Path, metavar="EC_KEY", dest="ossf_key",
                   help="also sign the model folder with OpenSSF Model Signing (ECDSA PEM key): writes "
                   "MODEL/superweight.manifest.json and MODEL/model.sig, for model_signing's own verifier")  # fmt: skip
    p.add_argument("--keygen", type=Path, metavar="KEY", help="write a new key pair KEY and KEY.pub, then exit")
    p.add_argument("--no-scan", action="store_true", help="hashes only: no model load, no super weights")
    add_scan(p, "for the super weights, instead of scanning")
    p.add_argument("--no-canary", action="store_true", help="skip the behavioural canary")
    p.add_argument("--hash", default="sha256", metavar="ALGO", help="hashlib algorithm (default sha256)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import hashlib
    import sys

    from superweight.errors import SuperweightError
    from superweight.guard.fingerprint import FingerprintResult, fingerprint
    from superweight.guard.keys import generate_keypair, load_private_key
    from superweight.guard.manifest import save_manifest, sign_manifest

    if args.keygen is not None:
        private, public = generate_keypair(args.keygen)
        print(f"wrote {private} (private, mode 0600) and {public} (public)", file=sys.stderr)
        return 0
    if args.output is None:
        raise SuperweightError("say where to write the manifest: -o manifest.json")
    if args.hash not in hashlib.algorithms_available:
        raise SuperweightError(f"unknown hash {args.hash!r}; use sha256, sha512, blake2b, ...", option="hash")
    if args.sign is not None:
        load_private_key(args.sign)  # fail on a bad key before minutes of work
    if args.ossf_key is not None:
        from superweight.model.spec import resolve_spec

        if resolve_spec(args.model).kind != "folder":
            raise SuperweightError("OpenSSF Model Signing signs a model folder; give a folder", option="ossf_key")
    scan_result = None
    if args.scan is not None:
        from superweight.detect.result import read_scan

        scan_result = read_scan(args.scan)
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
    if args.sign is not None:
        manifest = sign_manifest(manifest, args.sign)
    save_manifest(manifest, args.output)
    print(f"wrote {args.output}{' (signed)' if args.sign else ''}", file=sys.stderr)
    if args.ossf_key is not None:
        from superweight.guard.signing import sign_model

        sig = sign_model(manifest.model.spec, args.ossf_key, manifest=manifest)
        print(f"signed the folder with OpenSSF Model Signing: {sig}", file=sys.stderr)
    emit(args, "fingerprint", FingerprintResult(str(args.output), manifest), render)
    return 0


def render(r: Any) -> str:
    from superweight.report.tables import format_table

    m = r.manifest
    lines = [
        f"{m.model.spec}: {m.model.format}, {m.model.num_tensors} tensors, {m.model.num_bytes / 1e6:.1f} MB in "
        f"{len(m.files)} file(s); content digest {m.model.content_digest[:16]}",
        f"non-finite values: {sum(m.nonfinite.values()) if m.nonfinite else 'none'}",
    ]
    out = "\n".join(lines) + "\n"
    if m.super_weights:
        rows = [[e.layer, e.row, e.col, e.value, e.tensor or e.param, e.dtype or e.memory_dtype,
                 e.bits or e.memory_bits] for e in m.super_weights]  # fmt: skip
        out += format_table(["layer", "row", "col", "value", "tensor", "dtype", "bits"], rows, title="super weights")
    if m.canary:
        c = m.canary
        out += f"canary: {len(c.layer_magnitudes)} layers, channel {c.channel}, top token {c.top_ids[0]}\n"
    out += f"signed: {'yes' if r.signed else 'no'}\n"
    return out
