"""Ed25519 keys for signing manifests: generate a pair, read a private or public key (PEM or raw).

One module owns the key files, so every command that takes a key (``fingerprint --sign``,
``verify --pubkey``, ``repair``) reads it the same way and fails on a bad key before any work.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from superweight.errors import ManifestError


class SignatureError(ManifestError):
    """A signature or key is missing, malformed, from another key, or does not match."""


def generate_keypair(private_path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 private key (PEM, mode 0600) and its public key (``<path>.pub``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from superweight.io import atomic_write, atomic_write_bytes

    private_path = Path(private_path)
    public_path = private_path.with_name(private_path.name + ".pub")
    if private_path.exists():
        raise ManifestError(f"{private_path} exists; refusing to overwrite a key (remove it first)", option="keygen")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(private_path, lambda tmp: tmp.write_bytes(pem), mode=0o600)  # 0600 before the secret is in it
    atomic_write_bytes(public_path, pub)
    return private_path, public_path


def _read(path: str | Path, kind: str, option: str | None) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read the {kind} key {path}: {exc.strerror}", option=option) from None


def load_private_key(path: str | Path, option: str | None = "sign") -> Any:
    """An Ed25519 private key from a PEM (PKCS#8) or raw 32-byte file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read(path, "private", option)
    try:
        key = (Ed25519PrivateKey.from_private_bytes(data) if len(data) == 32
               else serialization.load_pem_private_key(data, password=None))  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not an Ed25519 private key in PEM or raw form ({exc})", option) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is a {type(key).__name__}, not an Ed25519 private key", option=option)
    return key


def load_public_key(path: str | Path, option: str | None = "pubkey") -> Any:
    """An Ed25519 public key from a PEM (SubjectPublicKeyInfo) or raw 32-byte file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read(path, "public", option)
    try:
        key = (Ed25519PublicKey.from_public_bytes(data) if len(data) == 32
               else serialization.load_pem_public_key(data))  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not an Ed25519 public key in PEM or raw form ({exc})", option) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is a {type(key).__name__}, not an Ed25519 public key", option=option)
    return key


def raw_public(key: Any) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: bytes) -> str:
    """A short, stable name for a public key (first 16 hex digits of its SHA-256)."""
    return hashlib.sha256(public).hexdigest()[:16]
