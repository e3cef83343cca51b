"""Fingerprints of real (tiny) checkpoint files: every flipped bit is found and located, re-sharding is
not a change, and every bad input is one clear error."""

from __future__ import annotations

import json
import random
import shutil
import stat

import numpy as np
import pytest
import torch

from superweight.errors import ManifestError
from superweight.guard.fingerprint import build_manifest
from superweight.guard.hashing import count_nonfinite, hash_files, hash_memory
from superweight.guard.keys import SignatureError, generate_keypair
from superweight.guard.manifest import (
    Manifest,
    check_signature,
    content_digest,
    load_manifest,
    save_manifest,
    sign_manifest,
)
from superweight.guard.verify import verify_model
from superweight.model.files import CorruptModelError, resolve_model_files


def tiny_llama(seed: int = 0, layers: int = 4, hidden: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=256)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def manifest_of(path) -> Manifest:
    mf = resolve_model_files(str(path))
    records, files = hash_files(mf, progress=False)
    return build_manifest(spec=str(path), records=records, files=files, mf=mf)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = tiny_llama()
    path = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(path)
    return model, path


@pytest.fixture
def tiny_copy(tiny, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tiny[1], dst)
    return dst


def flip_file_bit(path, offset: int, bit: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ (1 << bit)]))


def test_clean_copy_verifies_and_resharding_is_not_a_change(tiny, tmp_path):
    model, path = tiny
    manifest = manifest_of(path)
    assert verify_model(str(path), manifest).ok
    resharded = tmp_path / "sharded"
    model.save_pretrained(resharded, max_shard_size="100KB")
    shards = list(resharded.glob("*.safetensors"))
    assert len(shards) > 3  # really spread over several files
    report = verify_model(str(resharded), manifest)
    assert report.ok and report.checks["hash"] == "pass"
    assert any("re-sharded" in n for n in report.notes)
    assert content_digest(manifest_of(resharded).tensors) == manifest.model.content_digest


def test_memory_hashes_equal_file_hashes(tiny):
    model, path = tiny
    files = {t.name: t for t in manifest_of(path).tensors}
    memory = {r.name: r for r in hash_memory(model)}
    shared = files.keys() & memory.keys()
    assert len(shared) >= len(files) - 1  # tied lm_head may be stored under either name
    for name in shared:
        assert memory[name].sha256 == files[name].sha256
        assert memory[name].locator == files[name].locator


def test_every_single_bit_flip_is_detected_and_located(tiny, tiny_copy):
    manifest = manifest_of(tiny[1])
    mf = resolve_model_files(str(tiny_copy))
    rng = random.Random(0)
    spans = [s for s in mf.spans if s.dtype == "F32"]
    samples = [(s, rng.randrange(s.nbytes), rng.randrange(8)) for s in rng.sample(spans, 12)]
    samples += [(spans[0], spans[0].nbytes - 1, 7), (spans[1], 0, 0)]  # first and last bit of a tensor
    for span, byte, bit in samples:
        flip_file_bit(span.path, span.offset + byte, bit)
        report = verify_model(str(tiny_copy), manifest)
        flip_file_bit(span.path, span.offset + byte, bit)  # undo
        assert not report.ok
        assert [c.name for c in report.changed] == [span.name]
        loc = report.changed[0].location
        assert loc is not None, f"flip at {span.name} byte {byte} bit {bit} not located"
        flat = byte // 4
        assert loc["index"] == [int(i) for i in np.unravel_index(flat, span.shape)]
        assert loc["bit"] == (byte % 4) * 8 + bit
    assert verify_model(str(tiny_copy), manifest).ok  # every flip undone


def test_two_flips_are_detected_but_not_mislocated(tiny, tiny_copy):
    manifest = manifest_of(tiny[1])
    span = resolve_model_files(str(tiny_copy)).span("model.layers.1.mlp.down_proj.weight")
    flip_file_bit(span.path, span.offset + 100, 3)
    flip_file_bit(span.path, span.offset + 5000, 3)
    report = verify_model(str(tiny_copy), manifest)
    assert [c.name for c in report.changed] == [span.name]
    assert report.changed[0].location is None


def write_gguf(path, tensors: dict[str, tuple[np.ndarray, str]]):
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    for name, (values, qtype) in tensors.items():
        if qtype in ("F32", "F16"):
            writer.add_tensor(name, values.astype(np.float32 if qtype == "F32" else np.float16))
        else:
            t = gguf.GGMLQuantizationType[qtype]
            writer.add_tensor(name, gguf.quants.quantize(values, t), raw_dtype=t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_tensors_hash_and_locate(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.gguf"
    tensors = {
        "blk.0.ffn_down.weight": (rng.standard_normal((16, 64)).astype(np.float32), "Q8_0"),
        "blk.1.ffn_down.weight": (rng.standard_normal((16, 64)).astype(np.float32), "F32"),
        "blk.0.attn_norm.weight": (rng.standard_normal(64).astype(np.float32), "F16"),
    }
    write_gguf(path, tensors)
    mf = resolve_model_files(str(path))
    assert mf.format == "gguf" and mf.identity["architecture"] == "llama"
    spans = {s.name: s for s in mf.spans}
    assert spans["blk.0.ffn_down.weight"].shape == (16, 64) and spans["blk.0.ffn_down.weight"].dtype == "Q8_0"
    manifest = manifest_of(path)
    assert verify_model(str(path), manifest).ok
    # a flip in the F32 tensor: element and bit
    f32 = spans["blk.1.ffn_down.weight"]
    flip_file_bit(path, f32.offset + 4 * 70 + 3, 7)
    report = verify_model(str(path), manifest)
    flip_file_bit(path, f32.offset + 4 * 70 + 3, 7)
    assert report.changed[0].location["index"] == [1, 6] and report.changed[0].location["meaning"] == "sign"
    # a flip in a quantized tensor: row and block
    q8 = spans["blk.0.ffn_down.weight"]
    row_bytes = q8.nbytes // 16
    flip_file_bit(path, q8.offset + 3 * row_bytes + 34 + 5, 2)  # row 3, second block, a quant byte
    report = verify_model(str(path), manifest)
    flip_file_bit(path, q8.offset + 3 * row_bytes + 34 + 5, 2)
    assert report.changed[0].name == q8.name
    assert report.changed[0].location == {"byte": 3 * row_bytes + 39, "bit": 2, "row": 3, "block": 1}


def test_nonfinite_values_are_counted(tmp_path):
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight[3, 4] = float("nan")
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")
    model.save_pretrained(tmp_path / "m")
    manifest = manifest_of(tmp_path / "m")
    assert manifest.nonfinite == {
        "model.layers.0.mlp.up_proj.weight": 1,
        "model.layers.2.mlp.down_proj.weight": 1,
    }
    bf16 = torch.tensor([1.0, float("nan"), float("-inf"), 3.0], dtype=torch.bfloat16)
    assert count_nonfinite(bf16.view(torch.uint8).numpy().tobytes(), "BF16") == 2
    assert count_nonfinite(np.array([1, np.inf, 2], dtype=np.float16).tobytes(), "F16") == 1


def test_truncated_safetensors_is_a_clear_error(tiny_copy):
    target = tiny_copy / "model.safetensors"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptModelError, match="truncated"):
        resolve_model_files(str(tiny_copy))
    target.write_bytes(data[:4])
    with pytest.raises(CorruptModelError, match="truncated"):
        resolve_model_files(str(tiny_copy))


def test_manifest_schema_errors(tmp_path, tiny):
    path = tmp_path / "m.json"
    with pytest.raises(ManifestError, match="no such manifest"):
        load_manifest(path)
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="not a readable JSON"):
        load_manifest(path)
    path.write_text(json.dumps({"schema": "something.else"}))
    with pytest.raises(ManifestError, match="not a superweight manifest"):
        load_manifest(path)
    good = manifest_of(tiny[1])
    path.write_text(json.dumps({**good.to_dict(), "schema_version": 99}))
    with pytest.raises(ManifestError, match="schema version 99"):
        load_manifest(path)
    broken = {**good.to_dict(), "tensors": [{"name": "x"}]}
    path.write_text(json.dumps(broken))
    with pytest.raises(ManifestError, match="malformed"):
        load_manifest(path)


def test_manifest_of_another_model_is_refused(tiny, tmp_path):
    other = tmp_path / "other"
    tiny_llama(layers=2, hidden=32).save_pretrained(other)
    with pytest.raises(ManifestError, match="another model"):
        verify_model(str(tiny[1]), manifest_of(other))


def test_signing_round_trip_and_tampering(tiny, tmp_path):
    private, public = generate_keypair(tmp_path / "key")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(ManifestError, match="refusing to overwrite"):
        generate_keypair(tmp_path / "key")
    manifest = manifest_of(tiny[1])
    save_manifest(manifest, tmp_path / "m.json", key=private)
    signed = load_manifest(tmp_path / "m.json")
    assert check_signature(signed, public) == "valid"
    assert check_signature(signed, None).startswith("not checked")
    tampered = Manifest.from_dict(json.loads(json.dumps(signed.to_dict())))
    tampered.tensors[0].sha256 = "0" * 64
    with pytest.raises(SignatureError, match="BAD SIGNATURE"):
        check_signature(tampered, public)
    _, other_public = generate_keypair(tmp_path / "other")
    with pytest.raises(SignatureError, match="signed by key"):
        check_signature(signed, other_public)
    with pytest.raises(SignatureError, match="not signed"):
        check_signature(manifest, public)
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(SignatureError, match="not an Ed25519"):
        sign_manifest(manifest, tmp_path / "junk.pem")


def test_manifest_and_reports_round_trip_through_their_dicts(tiny, tiny_copy, tmp_path):
    from superweight.guard.verify import VerifyReport
    from superweight.io import from_json, to_json

    manifest = manifest_of(tiny[1])
    save_manifest(manifest, tmp_path / "m.json")
    assert load_manifest(tmp_path / "m.json").to_dict() == json.loads(json.dumps(manifest.to_dict()))
    span = resolve_model_files(str(tiny_copy)).span("model.layers.0.mlp.down_proj.weight")
    flip_file_bit(span.path, span.offset + 11, 6)
    report = verify_model(str(tiny_copy), manifest)
    again = VerifyReport.from_dict(from_json(to_json(report.to_dict())))
    assert again == report and not again.ok and again.changed[0].name == span.name
