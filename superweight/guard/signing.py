"""Interoperate with OpenSSF Model Signing (the ``model_signing`` package): key-based, offline.

``model_signing`` signs a model *folder* at file level: one digest per file, in an in-toto statement
signed with an elliptic-curve (ECDSA) key. Its public API (``model_signing.signing.Config``) signs a
path and takes no extra predicate, so our tensor-level manifest travels *inside* the signed folder as
the file ``superweight.manifest.json``: a ``model_signing`` user verifies every file, our manifest
included, with their own tool, and we then check what file digests cannot see (which tensor, which
bit, the super weights' exact bytes, and re-sharded copies). Both directions are covered:
:func:`sign_model` writes a signature ``model_signing`` verifies, :func:`verify_signed_model`
verifies a signature ``model_signing`` made, and then our manifest if the folder carries one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.errors import SuperweightError
from superweight.guard.keys import SignatureError

if TYPE_CHECKING:
    from superweight.guard.manifest import Manifest
    from superweight.guard.verify import VerifyReport

MANIFEST_NAME = "superweight.manifest.json"  # our manifest, as a file the folder's signature covers
SIGNATURE_NAME = "model.sig"  # model_signing's own default name


@dataclass
class SignedModelCheck:
    """A model_signing signature checked (file level), then our manifest inside it (tensor level)."""

    model: str
    signature: str
    files: str  # "valid" (model_signing verified every file) — a mismatch raises instead
    manifest: str | None  # the path of our manifest when the folder carries one
    tensors: VerifyReport | None = None  # our checks against it
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.tensors is None or self.tensors.ok

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SignedModelCheck:
        from superweight.guard.verify import VerifyReport
        from superweight.results import build

        check = build(cls, data)
        check.tensors = VerifyReport.from_dict(data["tensors"]) if data.get("tensors") else None
        return check


def _model_signing() -> None:
    import importlib.util

    if importlib.util.find_spec("model_signing") is None:
        raise SuperweightError("OpenSSF Model Signing is not installed: pip install 'superweight[signing]'")


def _folder(model_dir: str | Path) -> Path:
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise SuperweightError(f"{path} is not a model folder: model signing signs a folder of files", "model")
    return path


def _ignored(folder: Path, signature: Path) -> list[Path]:
    """The signature itself, when it is written inside the folder it signs."""
    sig, root = signature.expanduser().resolve(), folder.resolve()
    return [sig.relative_to(root)] if root in sig.parents else []


def sign_model(
    model_dir: str | Path,
    private_key: str | Path,
    signature: str | Path | None = None,
    *,
    manifest: Manifest | None = None,
) -> Path:
    """Sign ``model_dir`` with ``model_signing`` and an EC private key (PEM); return the signature path.

    With ``manifest``, it is first written into the folder as :data:`MANIFEST_NAME` (a new file beside
    the weights, never over one of them), so the signature covers our tensor digests and super-weight
    bits too. The signature defaults to ``model_dir/model.sig`` (excluded from what it signs).
    """
    from superweight.guard.manifest import save_manifest

    _model_signing()
    from model_signing import hashing, signing

    folder = _folder(model_dir)
    sig = Path(signature) if signature is not None else folder / SIGNATURE_NAME
    if manifest is not None:
        save_manifest(manifest, folder / MANIFEST_NAME)
    config = hashing.Config().set_ignored_paths(paths=_ignored(folder, sig), ignore_git_paths=True)
    try:
        signing.Config().use_elliptic_key_signer(private_key=private_key).set_hashing_config(config).sign(folder, sig)
    except (ValueError, TypeError, OSError) as exc:
        raise SignatureError(f"model_signing could not sign {folder} with {private_key}: {exc}", "ossf_key") from None
    return sig


def verify_signed_model(
    model_dir: str | Path,
    signature: str | Path,
    public_key: str | Path,
    *,
    tensors: bool = True,
) -> SignedModelCheck:
    """Verify a ``model_signing`` signature (any signer with this EC key), then our manifest in it.

    A file-level mismatch (a changed, added or missing file) raises :class:`SignatureError` with
    model_signing's own message; with ``tensors`` and a :data:`MANIFEST_NAME` in the folder, every
    tensor hash and super weight is then checked against it (the signature vouches for the manifest).
    """
    from superweight.guard.manifest import load_manifest
    from superweight.guard.verify import verify_model

    _model_signing()
    from model_signing import verifying

    folder = _folder(model_dir)
    sig = Path(signature)
    if not sig.is_file():
        raise SignatureError(f"no such signature file: {sig}", "ossf_signature")
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(folder, sig)
    except ValueError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SignatureError(f"model signing: {folder} does not match {sig}: {first}") from None
    except (TypeError, OSError, KeyError) as exc:
        raise SignatureError(f"model signing could not check {sig} with {public_key} ({type(exc).__name__}: "
                             f"{exc})") from None  # fmt: skip
    check = SignedModelCheck(str(folder), str(sig), "valid", None)
    ours = folder / MANIFEST_NAME
    if not ours.is_file():
        check.notes.append(f"the folder carries no {MANIFEST_NAME}: checked at file level only")
    elif tensors:
        check.manifest = str(ours)
        check.tensors = verify_model(str(folder), load_manifest(ours), manifest_path=str(ours))
    return check
