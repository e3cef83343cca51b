"""OpenSSF Model Signing interop with the real ``model_signing`` library (no mocks): what we sign, their
tool verifies; what their library signs, we verify, and then check the tensors it cannot see."""

from __future__ import annotations

import shutil

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from model_signing import signing, verifying

from superweight.guard.fingerprint import build_manifest
from superweight.guard.hashing import hash_files
from superweight.guard.keys import SignatureError
from superweight.guard.signing import MANIFEST_NAME, sign_model, verify_signed_model
from superweight.model.files import resolve_model_files


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """An ECDSA P-256 key pair made with `cryptography`, as model_signing's users make theirs."""
    root = tmp_path_factory.mktemp("keys")
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = root / "ec.key", root / "ec.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return private, public


@pytest.fixture
def model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256)  # fmt: skip
    path = tmp_path / "model"
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def manifest_of(path):
    mf = resolve_model_files(str(path))
    records, files = hash_files(mf, progress=False)
    return build_manifest(spec=str(path), records=records, files=files, mf=mf)


def flip(path, offset, bit=6):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([b ^ (1 << bit)]))


def test_what_we_sign_their_tool_verifies_and_our_manifest_is_covered(model, keys):
    private, public = keys
    sig = sign_model(model, private, manifest=manifest_of(model))
    assert sig == model / "model.sig" and (model / MANIFEST_NAME).is_file()
    verifying.Config().use_elliptic_key_verifier(public_key=public).verify(model, sig)  # their verifier: passes
    check = verify_signed_model(model, sig, public)
    assert check.files == "valid" and check.tensors is not None and check.tensors.ok
    ours = (model / MANIFEST_NAME).read_text()
    (model / MANIFEST_NAME).write_text(ours.replace('"sha256": "', '"sha256": "0', 1))  # tamper with our manifest
    with pytest.raises(ValueError, match="Signature mismatch"):
        verifying.Config().use_elliptic_key_verifier(public_key=public).verify(model, sig)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signed_model(model, sig, public)


def test_what_their_library_signs_we_verify_then_check_the_tensors(model, keys, tmp_path):
    private, public = keys
    shutil.copyfile(tmp_path / "model" / "model.safetensors", tmp_path / "clean.safetensors")
    from superweight.guard.manifest import save_manifest

    save_manifest(manifest_of(model), model / MANIFEST_NAME)
    sig = tmp_path / "their.sig"  # signed by model_signing itself, outside the folder
    signing.Config().use_elliptic_key_signer(private_key=private).sign(model, sig)
    check = verify_signed_model(model, sig, public)
    assert check.ok and check.tensors.checks["hash"] == "pass" and check.manifest.endswith(MANIFEST_NAME)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    other_pub = tmp_path / "other.pub"
    other_pub.write_bytes(
        other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SignatureError):
        verify_signed_model(model, sig, other_pub)
    span = resolve_model_files(str(model)).span("model.layers.1.mlp.down_proj.weight")
    flip(span.path, span.offset + 4 * 9 + 3)
    with pytest.raises(SignatureError, match="does not match"):  # file level: something changed, not what
        verify_signed_model(model, sig, public)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(tmp_path / "clean.safetensors", bare / "model.safetensors")
    sig2 = tmp_path / "bare.sig"
    signing.Config().use_elliptic_key_signer(private_key=private).sign(bare, sig2)
    bare_check = verify_signed_model(bare, sig2, public)
    assert bare_check.tensors is None and "file level only" in bare_check.notes[0]


def test_file_level_signing_misses_what_tensor_checks_catch(model, keys, tmp_path):
    """Re-sharding is a false alarm at file level and a pass at tensor level; a flipped bit is located."""
    from transformers import AutoModelForCausalLM

    from superweight.guard.verify import verify_model

    private, public = keys
    manifest = manifest_of(model)
    sig = sign_model(model, private, tmp_path / "m.sig", manifest=manifest)
    resharded = tmp_path / "resharded"
    AutoModelForCausalLM.from_pretrained(model).save_pretrained(resharded, max_shard_size="100KB")
    shutil.copyfile(model / MANIFEST_NAME, resharded / MANIFEST_NAME)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signed_model(resharded, sig, public)  # the same weights, other files: a false alarm
    assert verify_model(str(resharded), manifest).ok  # tensor level: the same model
    span = resolve_model_files(str(model)).span("model.layers.1.mlp.down_proj.weight")
    flip(span.path, span.offset + 4 * 9 + 3)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signed_model(model, sig, public)  # says a file changed...
    report = verify_model(str(model), manifest)  # ...we say which tensor, element and bit
    assert report.changed[0].name == span.name and report.changed[0].location["index"] == [0, 9]
    assert report.changed[0].location["bit"] == 30


def test_from_the_command_line(model, keys, tmp_path):
    from conftest import assert_one_line_error, cli

    private, public = keys
    manifest = tmp_path / "m.json"
    proc = cli("fingerprint", str(model), "--no-scan", "-o", str(manifest), "--model-signing", str(private), "-q")
    assert proc.returncode == 0, proc.stderr
    verifying.Config().use_elliptic_key_verifier(public_key=public).verify(model, model / "model.sig")
    args = ["verify", str(model), str(manifest), "--model-signature", str(model / "model.sig")]
    proc = cli(*args, "--model-signing-pubkey", str(public))
    assert proc.returncode == 0 and "valid for every file" in proc.stderr, proc.stderr
    assert_one_line_error(cli(*args), "give both or neither")
    (model / "config.json").write_text((model / "config.json").read_text() + " ")
    assert_one_line_error(cli(*args, "--model-signing-pubkey", str(public)), "does not match")
