"""Integrity manifests: build, save, load (with schema checks) and sign with Ed25519.

A manifest holds a model's identity, one record per tensor (see :mod:`superweight.guard.hashing`), the
whole-file hashes, each super weight's coordinates with its exact bytes in the file and in memory
(and a hash of its row), the super activations, and a behavioural canary. Signing covers the
canonical JSON of everything but the ``signature`` block, with ``cryptography``'s Ed25519.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from superweight.dtypes import by_code, decode
from superweight.errors import ManifestError
from superweight.guard.hashing import FileRecord, TensorRecord, tensor_bytes, torch_dtype_name
from superweight.model.files import ModelFiles, TensorSpan, gguf_tensor_name

if TYPE_CHECKING:
    from superweight.detect.result import ScanResult
    from superweight.guard.canary import Canary
    from superweight.model.loading import LoadedModel

SCHEMA = "superweight.guard.manifest"
SCHEMA_VERSION = 1
_REQUIRED = ("schema", "schema_version", "tool", "model", "hash", "tensors", "super_weights")


class SignatureError(ManifestError):
    """The manifest's signature is missing, malformed, from another key, or does not match."""


def content_digest(records: list[TensorRecord] | list[dict[str, Any]]) -> str:
    """One hash of all tensors (names, dtypes, shapes, bytes): the same however the files are laid out."""
    rows = []
    for r in records:
        d = r.to_dict() if isinstance(r, TensorRecord) else r
        rows.append(f"{d['name']}\t{d['dtype']}\t{list(d['shape'])}\t{d['sha256']}")
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


# ------------------------------------------------------------------------------------ super weights


def read_element(span: TensorSpan, index: tuple[int, ...]) -> dict[str, Any]:
    """Where ``index`` of a tensor lies in its file, its bytes, its value, and its row's bytes."""
    shape = span.shape
    if len(index) != len(shape) or any(not 0 <= i < d for i, d in zip(index, shape, strict=True)):
        raise ManifestError(f"index {list(index)} is outside tensor {span.name} of shape {list(shape)}")
    rows = math.prod(shape[:-1])
    row_bytes = span.nbytes // max(rows, 1)
    row_index = int(np.ravel_multi_index(index[:-1], shape[:-1])) if len(shape) > 1 else 0
    row_offset = span.offset + row_index * row_bytes
    if span.itemsize is not None:
        offset, nbytes = row_offset + index[-1] * span.itemsize, span.itemsize
    else:
        elems, block_bytes = span.block  # type: ignore[misc]
        offset, nbytes = row_offset + index[-1] // elems * block_bytes, block_bytes
    with span.path.open("rb") as fh:
        fh.seek(row_offset)
        row = fh.read(row_bytes)
    raw = row[offset - row_offset : offset - row_offset + nbytes]
    return {
        "tensor": span.name,
        "file": span.file,
        "dtype": span.dtype,
        "byte_offset": offset,
        "nbytes": nbytes,
        "bits": raw.hex(),
        "file_value": decode_value(raw, span.dtype, index[-1]),
        "row_offset": row_offset,
        "row_nbytes": row_bytes,
        "row_sha256": hashlib.sha256(row).hexdigest(),
    }


def decode_value(raw: bytes, dtype: str, col: int) -> float:
    """The value of one element from its bytes (a whole block for GGUF types)."""
    if by_code(dtype) is not None:
        return float(decode(raw, dtype)[0])
    import gguf

    qtype = gguf.GGMLQuantizationType[dtype]
    elems = gguf.GGML_QUANT_SIZES[qtype][0]
    values = gguf.quants.dequantize(np.frombuffer(raw, dtype=np.uint8).reshape(1, -1), qtype)
    return float(values.reshape(-1)[col % elems])


def super_weight_entries(lm: LoadedModel, super_weights: list[Any], mf: ModelFiles | None) -> list[dict[str, Any]]:
    """Manifest entries for super weights: HF coordinates, the in-memory bits, and the bytes in the file."""
    from superweight.model.architectures import decoder_layers, down_projections, find_down_proj

    sites = down_projections(lm.model)
    entries = []
    for sw in super_weights:
        site = find_down_proj(sites, sw.module)
        idx = site.raw_index(sw.row, sw.col)
        scalar = site.parameter.data[idx].reshape(1)
        entry: dict[str, Any] = {
            "layer": sw.layer, "module": sw.module, "row": sw.row, "col": sw.col, "expert": site.expert,
            "param": site.param_name, "index": list(idx), "value": float(scalar),
            "memory_dtype": torch_dtype_name(scalar.dtype), "memory_bits": bytes(tensor_bytes(scalar)).hex(),
        }  # fmt: skip
        if mf is not None:
            name = site.param_name
            if mf.format == "gguf":
                arch = mf.identity.get("architecture") or ""
                name = gguf_tensor_name(name, arch, len(decoder_layers(lm.model)))
            span = mf.span(name)
            entry.update(read_element(span, tuple(int(i) for i in idx)))
        entries.append(entry)
    return entries


# ------------------------------------------------------------------------------------------ building


def build_manifest(
    *,
    spec: str,
    records: list[TensorRecord],
    files: list[FileRecord] | None = None,
    mf: ModelFiles | None = None,
    lm: LoadedModel | None = None,
    scan: ScanResult | None = None,
    canary: Canary | None = None,
    super_weights: list[dict[str, Any]] | None = None,
    algorithm: str = "sha256",
) -> dict[str, Any]:
    """Assemble a manifest (a plain dict, ready for :func:`save_manifest`)."""
    from superweight import __version__

    model: dict[str, Any] = {
        "spec": spec,
        "format": mf.format if mf is not None else "memory",
        "identity": dict(mf.identity) if mf is not None else {},
        "content_digest": content_digest(records),
        "num_tensors": len(records),
        "num_bytes": sum(r.nbytes for r in records),
    }
    if lm is not None:
        model["memory"] = {
            "architecture": lm.architecture,
            "dtype": lm.dtype,
            "num_parameters": lm.num_parameters,
        }
        model["identity"].setdefault("classes", [lm.architecture])
    nonfinite = {r.name: r.nonfinite for r in records if r.nonfinite}
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "superweight", "version": __version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model,
        "hash": algorithm,
        "files": [f.to_dict() for f in files or []],
        "tensors": [r.to_dict() for r in records],
        "nonfinite": nonfinite,
        "super_weights": super_weights or [],
        "super_activations": [
            {"layer": a.layer, "channel": a.channel, "value": a.value, "tokens": list(a.tokens)}
            for a in (scan.super_activations if scan is not None else [])
        ],
        "canary": canary.to_dict() if canary is not None else None,
    }


def save_manifest(manifest: dict[str, Any], path: str | Path, key: str | Path | None = None) -> Path:
    """Write atomically; sign first when ``key`` (an Ed25519 private key file) is given."""
    from superweight.io import write_json

    if key is not None:
        manifest = sign_manifest(manifest, key)
    return write_json(path, manifest)


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read a manifest and check its schema; every problem is one ManifestError that says the fix."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(
            f"no such manifest: {path} (create one with: superweight fingerprint MODEL -o {path})"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not a readable JSON manifest ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ManifestError(f'{path} is not a superweight manifest (no "schema": "{SCHEMA}")')
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ManifestError(f"{path} lacks {', '.join(missing)}: re-create it with superweight fingerprint")
    if data["schema_version"] != SCHEMA_VERSION:
        raise ManifestError(
            f"{path} has schema version {data['schema_version']!r}; this superweight reads version "
            f"{SCHEMA_VERSION} (re-create the manifest, or use the superweight that wrote it)"
        )
    try:
        for t in data["tensors"]:
            if not (isinstance(t["name"], str) and isinstance(t["sha256"], str) and isinstance(t["nbytes"], int)):
                raise TypeError("bad field types")
            [int(d) for d in t["shape"]]
        for sw in data["super_weights"]:
            int(sw["layer"]), int(sw["row"]), int(sw["col"]), str(sw["module"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{path} has malformed entries ({type(exc).__name__}: {exc}); re-create it") from None
    if data["hash"] not in hashlib.algorithms_available:
        raise ManifestError(f"{path} uses hash {data['hash']!r}, which this Python does not have")
    return data


# ------------------------------------------------------------------------------------------ signing


def _canonical(manifest: dict[str, Any]) -> bytes:
    from superweight.io import to_json

    body = {k: v for k, v in json.loads(to_json(manifest)).items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def generate_keypair(private_path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 private key (PEM, mode 0600) and its public key (``<path>.pub``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from superweight.io import atomic_write_bytes

    private_path = Path(private_path)
    public_path = private_path.with_name(private_path.name + ".pub")
    if private_path.exists():
        raise ManifestError(f"{private_path} exists; refusing to overwrite a key (remove it first)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    from superweight.io import atomic_write

    atomic_write(private_path, lambda tmp: tmp.write_bytes(pem), mode=0o600)  # 0600 before the secret is in it
    atomic_write_bytes(public_path, pub)
    return private_path, public_path


def _load_key(path: str | Path, private: bool) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    kind = "private" if private else "public"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read the {kind} key {path}: {exc.strerror}") from None
    try:
        if len(data) == 32:  # raw key bytes
            return Ed25519PrivateKey.from_private_bytes(data) if private else Ed25519PublicKey.from_public_bytes(data)
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not an Ed25519 {kind} key in PEM or raw form ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey):
        raise SignatureError(f"{path} is a {type(key).__name__}, not an Ed25519 {kind} key")
    return key


def _raw_public(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_manifest(manifest: dict[str, Any], key_path: str | Path) -> dict[str, Any]:
    """A copy of ``manifest`` with an Ed25519 signature over its canonical JSON."""
    key = _load_key(key_path, private=True)
    signed = {k: v for k, v in manifest.items() if k != "signature"}
    public = _raw_public(key.public_key())
    signed["signature"] = {
        "algorithm": "ed25519",
        "public_key": public.hex(),
        "key_id": hashlib.sha256(public).hexdigest()[:16],
        "value": key.sign(_canonical(signed)).hex(),
    }
    return signed


def check_signature(manifest: dict[str, Any], pubkey_path: str | Path | None) -> str:
    """ "valid", "unsigned" or "not checked (no --pubkey)"; raises SignatureError when it does not hold."""
    from cryptography.exceptions import InvalidSignature

    sig = manifest.get("signature")
    if pubkey_path is None:
        return "not checked (no --pubkey)" if sig else "unsigned"
    if not sig:
        raise SignatureError("the manifest is not signed, but --pubkey asks for a signature; sign it with --sign KEY")
    key = _load_key(pubkey_path, private=False)
    try:
        if sig.get("algorithm") != "ed25519":
            raise SignatureError(f"unsupported signature algorithm {sig.get('algorithm')!r} (expected ed25519)")
        if bytes.fromhex(sig["public_key"]) != _raw_public(key):
            raise SignatureError(f"the manifest was signed by key {sig.get('key_id')}, not by {pubkey_path}")
        key.verify(bytes.fromhex(sig["value"]), _canonical(manifest))
    except (KeyError, ValueError, TypeError):
        raise SignatureError("the manifest's signature block is malformed; re-sign it") from None
    except InvalidSignature:
        raise SignatureError("BAD SIGNATURE: the manifest was changed after it was signed; do not trust it") from None
    return "valid"


# ------------------------------------------------------------------------------------------ entry points


def _canary_channel(scan: ScanResult | None) -> int | None:
    if scan is None or not scan.super_activations:
        return None
    return max(scan.super_activations, key=lambda a: abs(a.value)).channel


def fingerprint(
    spec: str | None,
    *,
    scan: bool = True,
    canary: bool = True,
    scan_result: ScanResult | None = None,
    algorithm: str = "sha256",
    dtype: str = "float32",
    device: str = "cpu",
    down_proj: str | None = None,
) -> dict[str, Any]:
    """Fingerprint model files: per-tensor hashes by streaming, then (loading the model once) the
    super weights' exact bytes and the canary.

    Example:
        >>> manifest = fingerprint("smollm2-135m")
        >>> save_manifest(manifest, "smollm2.manifest.json")
    """
    from superweight.guard.hashing import hash_files
    from superweight.model.files import resolve_model_files
    from superweight.progress import log, step

    mf = resolve_model_files(spec)
    log(f"hashing {len(mf.spans)} tensors in {len(mf.files)} {mf.format} file(s) under {mf.root}")
    with step("hashing"):
        records, files = hash_files(mf, algorithm=algorithm)
    lm = can = None
    entries: list[dict[str, Any]] = []
    if scan or canary or scan_result is not None:
        from superweight.model.loading import load_model

        lm = load_model(spec, dtype=dtype, device=device, down_proj=down_proj)
        if scan_result is None and scan:
            from superweight.detect.detection import find_super_weights

            with step("finding super weights"):
                scan_result = find_super_weights(lm.model, lm.tokenizer, model_name=lm.spec)
        if scan_result is not None:
            entries = super_weight_entries(lm, scan_result.super_weights, mf)
        if canary:
            from superweight.guard.canary import run_canary

            can = run_canary(lm.model, lm.tokenizer, _canary_channel(scan_result))
    return build_manifest(
        spec=mf.spec, records=records, files=files, mf=mf, lm=lm,
        scan=scan_result, canary=can, super_weights=entries, algorithm=algorithm,
    )  # fmt: skip


def fingerprint_memory(lm: LoadedModel, scan: ScanResult | None = None, canary: bool = True) -> dict[str, Any]:
    """Fingerprint a model as it is in memory (for checks on edits that never reach a file)."""
    from superweight.guard.hashing import hash_memory

    can = None
    if canary:
        from superweight.guard.canary import run_canary

        can = run_canary(lm.model, lm.tokenizer, _canary_channel(scan))
    entries = super_weight_entries(lm, scan.super_weights, None) if scan is not None else []
    return build_manifest(spec=lm.spec, records=hash_memory(lm.model), lm=lm, scan=scan, canary=can,
                          super_weights=entries)  # fmt: skip
