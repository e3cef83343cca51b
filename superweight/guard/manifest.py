"""The integrity manifest as a typed document: read (with schema checks), write atomically, sign, check.

A manifest holds a model's identity, one record per tensor (see :mod:`superweight.guard.hashing`), the
whole-file hashes, each super weight's coordinates with its exact bytes in the file and in memory
(and a hash of its row), the super activations, and a behavioural canary. Signing covers the
canonical JSON of everything but the ``signature`` block, with Ed25519 (:mod:`superweight.guard.keys`).
Building one from a model is :mod:`superweight.guard.fingerprint`'s job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from superweight.errors import ManifestError
from superweight.guard.canary import Canary
from superweight.guard.hashing import FileRecord, TensorRecord
from superweight.guard.keys import SignatureError, key_id, load_private_key, load_public_key, raw_public

SCHEMA = "superweight.guard.manifest"
SCHEMA_VERSION = 1
REQUIRED = ("schema", "schema_version", "tool", "model", "hash", "tensors", "super_weights")


def content_digest(records: list[TensorRecord]) -> str:
    """One hash of all tensors (names, dtypes, shapes, bytes): the same however the files are laid out."""
    rows = [f"{r.name}\t{r.dtype}\t{list(r.shape)}\t{r.sha256}" for r in records]
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _build(kind: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in data.items() if k in names})


@dataclass
class ModelInfo:
    """Which model a manifest is about, and (when it was loaded) how it looked in memory."""

    spec: str
    format: str  # safetensors | gguf | memory
    identity: dict[str, Any]  # name, architecture, classes, ... as the files say
    content_digest: str  # one hash of all tensors, independent of the file layout
    num_tensors: int
    num_bytes: int
    memory: dict[str, Any] | None = None  # {"architecture", "dtype", "num_parameters"}

    @property
    def architecture(self) -> str | None:
        return self.identity.get("architecture") or (self.memory or {}).get("architecture")


@dataclass
class SuperWeightEntry:
    """One super weight: HF coordinates, its bits in memory, and (from files) where its bytes lie."""

    layer: int
    module: str
    row: int
    col: int
    expert: int | None
    param: str  # the raw parameter holding it
    index: list[int]  # its index in that parameter
    value: float
    memory_dtype: str
    memory_bits: str  # hex, little-endian, as the loaded model holds it
    # where it is in the files (None for a manifest made from memory)
    tensor: str | None = None
    file: str | None = None
    dtype: str | None = None
    byte_offset: int | None = None
    nbytes: int | None = None
    bits: str | None = None  # hex of the element's bytes (a whole block for GGUF types)
    file_value: float | None = None
    row_offset: int | None = None
    row_nbytes: int | None = None
    row_sha256: str | None = None

    @property
    def in_file(self) -> bool:
        return self.byte_offset is not None

    @property
    def label(self) -> str:
        return f"layer {self.layer} [{self.row}, {self.col}]"

    def to_dict(self) -> dict[str, Any]:
        return {**_without_none({k: v for k, v in asdict(self).items() if k != "expert"}), "expert": self.expert}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuperWeightEntry:
        return _build(cls, {"expert": None, **data})


@dataclass
class ActivationEntry:
    layer: int
    channel: int
    value: float
    tokens: list[int]


@dataclass
class Signature:
    algorithm: str  # ed25519
    public_key: str  # hex of the raw public key
    key_id: str
    value: str  # hex


@dataclass
class Manifest:
    """A model's integrity manifest (``superweight fingerprint``), exactly as it is written."""

    model: ModelInfo
    tensors: list[TensorRecord]
    super_weights: list[SuperWeightEntry] = field(default_factory=list)
    super_activations: list[ActivationEntry] = field(default_factory=list)
    files: list[FileRecord] = field(default_factory=list)
    nonfinite: dict[str, int] = field(default_factory=dict)
    canary: Canary | None = None
    hash: str = "sha256"
    tool: dict[str, str] = field(default_factory=dict)
    created: str = ""
    notes: list[str] = field(default_factory=list)
    signature: Signature | None = None
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def tensor(self, name: str) -> TensorRecord | None:
        return next((t for t in self.tensors if t.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": self.schema,
            "schema_version": self.schema_version,
            "tool": dict(self.tool),
            "created": self.created,
            "model": _without_none(asdict(self.model)),
            "hash": self.hash,
            "files": [f.to_dict() for f in self.files],
            "tensors": [t.to_dict() for t in self.tensors],
            "nonfinite": dict(self.nonfinite),
            "super_weights": [e.to_dict() for e in self.super_weights],
            "super_activations": [asdict(a) for a in self.super_activations],
            "canary": self.canary.to_dict() if self.canary is not None else None,
        }
        if self.notes:
            out["notes"] = list(self.notes)
        if self.signature is not None:
            out["signature"] = asdict(self.signature)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "the manifest") -> Manifest:
        """Rebuild from a dict, checking the schema; every problem is one ManifestError that says the fix."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ManifestError(f'{source} is not a superweight manifest (no "schema": "{SCHEMA}")')
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise ManifestError(f"{source} lacks {', '.join(missing)}: re-create it with superweight fingerprint")
        version = data["schema_version"]
        if not isinstance(version, int) or version != SCHEMA_VERSION:
            newer = isinstance(version, int) and version > SCHEMA_VERSION
            fix = "upgrade superweight" if newer else "re-create the manifest, or use the superweight that wrote it"
            raise ManifestError(f"{source} has schema version {version!r}; this superweight reads version "
                                f"{SCHEMA_VERSION} ({fix})")  # fmt: skip
        if data["hash"] not in hashlib.algorithms_available:
            raise ManifestError(f"{source} uses hash {data['hash']!r}, which this Python does not have")
        try:
            tensors = [_build(TensorRecord, t) for t in data["tensors"]]
            for t in tensors:
                if not (isinstance(t.name, str) and isinstance(t.sha256, str) and isinstance(t.nbytes, int)):
                    raise TypeError("bad field types")
                t.shape = [int(d) for d in t.shape]
            entries = [SuperWeightEntry.from_dict(e) for e in data["super_weights"]]
            for e in entries:
                e.layer, e.row, e.col, e.module = int(e.layer), int(e.row), int(e.col), str(e.module)
            sig = data.get("signature")
            return cls(
                model=_build(ModelInfo, data["model"]),
                tensors=tensors,
                super_weights=entries,
                super_activations=[_build(ActivationEntry, a) for a in data.get("super_activations") or []],
                files=[_build(FileRecord, f) for f in data.get("files") or []],
                nonfinite=dict(data.get("nonfinite") or {}),
                canary=Canary.from_dict(data["canary"]) if data.get("canary") else None,
                hash=data["hash"],
                tool=dict(data["tool"]),
                created=str(data.get("created", "")),
                notes=[str(n) for n in data.get("notes") or []],
                signature=_build(Signature, sig) if isinstance(sig, dict) else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"{source} has malformed entries ({type(exc).__name__}: {exc}); re-create it",
                                ) from None  # fmt: skip


def save_manifest(manifest: Manifest, path: str | Path, key: str | Path | None = None) -> Path:
    """Write atomically; sign first when ``key`` (an Ed25519 private key file) is given."""
    from superweight.io import write_json

    if key is not None:
        manifest = sign_manifest(manifest, key)
    return write_json(path, manifest.to_dict())


def load_manifest(path: str | Path) -> Manifest:
    """Read a manifest and check its schema; every problem is one ManifestError that says the fix."""
    from superweight.io import from_json

    path = Path(path)
    try:
        data = from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(
            f"no such manifest: {path} (create one with: superweight fingerprint MODEL -o {path})"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not a readable JSON manifest ({type(exc).__name__}: {exc})",
                            ) from None  # fmt: skip
    return Manifest.from_dict(data, source=str(path))


# ------------------------------------------------------------------------------------------ signing


def canonical_bytes(manifest: Manifest) -> bytes:
    """What a signature covers: the manifest's JSON without its signature, keys sorted, no spaces."""
    from superweight.io import to_json

    body = {k: v for k, v in json.loads(to_json(manifest.to_dict())).items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sign_manifest(manifest: Manifest, key_path: str | Path) -> Manifest:
    """A copy of ``manifest`` with an Ed25519 signature over its canonical JSON."""
    from dataclasses import replace

    key = load_private_key(key_path)
    unsigned = replace(manifest, signature=None)
    public = raw_public(key.public_key())
    sig = Signature("ed25519", public.hex(), key_id(public), key.sign(canonical_bytes(unsigned)).hex())
    return replace(manifest, signature=sig)


def check_signature(manifest: Manifest, pubkey_path: str | Path | None) -> str:
    """ "valid", "unsigned" or "not checked (no public key)"; raises SignatureError when it does not hold."""
    from cryptography.exceptions import InvalidSignature

    sig = manifest.signature
    if pubkey_path is None:
        return "not checked (no public key)" if sig else "unsigned"
    if sig is None:
        raise SignatureError("the manifest is not signed, but a signature is required; sign it with a private key",
                             "pubkey")  # fmt: skip
    key = load_public_key(pubkey_path)
    if sig.algorithm != "ed25519":
        raise SignatureError(f"unsupported signature algorithm {sig.algorithm!r} (expected ed25519)")
    try:
        if bytes.fromhex(sig.public_key) != raw_public(key):
            raise SignatureError(f"the manifest was signed by key {sig.key_id}, not by {pubkey_path}")
        key.verify(bytes.fromhex(sig.value), canonical_bytes(manifest))
    except (ValueError, TypeError):
        raise SignatureError("the manifest's signature block is malformed; re-sign it") from None
    except InvalidSignature:
        raise SignatureError("BAD SIGNATURE: the manifest was changed after it was signed; do not trust it") from None
    return "valid"
