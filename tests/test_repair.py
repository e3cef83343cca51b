"""Repair from the manifest on a real (tiny, planted) checkpoint: attack a file, repair a new copy, and the
copy is bit-exact to the original with its perplexity back; the damaged model is never written to."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from conftest import assert_one_line_error, cli
from tiny import PROBE, PROMPTS, planted, save_planted

from superweight.detect.detection import find_super_weights
from superweight.detect.result import DetectionConfig
from superweight.errors import SuperweightError
from superweight.guard.fingerprint import fingerprint
from superweight.guard.manifest import save_manifest
from superweight.guard.repair import repair_model, repair_settings
from superweight.model.files import resolve_model_files

WEIGHTS = "model.safetensors"


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip(path, offset: int, bit: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ (1 << bit)]))


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    root = tmp_path_factory.mktemp("repair")
    path = save_planted(root / "original")
    model, tokenizer = planted()
    config = DetectionConfig(min_loss_increase=0.02, probe_text=PROBE)
    scan = find_super_weights(model, tokenizer, PROMPTS, config)
    manifest = fingerprint(str(path), canary=False, scan_result=scan)
    assert [(e.layer, e.row, e.col) for e in manifest.super_weights] == [(1, 5, 17)]
    save_manifest(manifest, root / "m.json")
    text = root / "text.txt"  # the trigger token appears in every line: the planted super weight matters here
    text.write_text("\n".join([*PROMPTS, PROBE] * 40))
    return path, manifest, root / "m.json", text


@pytest.fixture
def damaged(original, tmp_path):
    """A copy with the super weight's exponent MSB flipped in the file (2.0 becomes ~6e-39)."""
    path, manifest, _, _ = original
    copy = tmp_path / "damaged"
    shutil.copytree(path, copy)
    sw = manifest.super_weights[0]
    flip(copy / WEIGHTS, sw.byte_offset + 3, 6)  # little-endian float32: bit 30 is bit 6 of byte 3
    return copy


def settings(text):
    return repair_settings(sources=(str(text),), max_tokens=512, seq_len=128)


def test_exact_repair_of_a_flipped_super_weight(original, damaged, tmp_path):
    path, manifest, _, text = original
    before = digest(damaged / WEIGHTS)
    clean = repair_model(str(path), manifest, tmp_path / "clean", settings=settings(text))
    assert clean.verified and clean.restored == [] and clean.perplexity_before == clean.perplexity_after
    result = repair_model(str(damaged), manifest, tmp_path / "fixed", settings=settings(text))
    assert result.verified and result.unrepaired == [] and result.tensors_restored == []
    (restored,) = result.restored
    assert restored.label == "layer 1 [5, 17]" and restored.bits_after == manifest.super_weights[0].bits
    assert int(restored.bits_before, 16) ^ int(restored.bits_after, 16) == 0x40  # byte 3, bit 6: one bit
    assert digest(tmp_path / "fixed" / WEIGHTS) == digest(path / WEIGHTS)  # bit-exact to the original
    assert digest(damaged / WEIGHTS) == before  # never in place
    assert result.perplexity_after == clean.perplexity_before  # the same bits: the same perplexity
    assert result.perplexity_before > 1.02 * result.perplexity_after  # the flip did damage
    assert not list(tmp_path.glob(".*partial"))  # no staging folder left behind


def test_other_tensors_come_only_from_a_trusted_copy_with_the_vouched_for_hash(original, damaged, tmp_path):
    path, manifest, _, _ = original
    span = resolve_model_files(str(damaged)).span("model.layers.0.mlp.up_proj.weight")
    flip(span.path, span.offset + 41, 2)
    alone = repair_model(str(damaged), manifest, tmp_path / "alone", evaluate=False)
    assert not alone.verified and alone.unrepaired == [span.name] and len(alone.restored) == 1
    bad_backup = tmp_path / "bad-backup"
    shutil.copytree(damaged, bad_backup)  # also damaged: its up_proj does not have the manifest's hash
    refused = repair_model(str(damaged), manifest, tmp_path / "refused", trusted=str(bad_backup), evaluate=False)
    assert refused.unrepaired == [span.name] and refused.tensors_restored == []
    assert any("does not have the hash the manifest vouches for" in n for n in refused.notes)
    fixed = repair_model(str(damaged), manifest, tmp_path / "fixed", trusted=str(path), evaluate=False)
    assert fixed.verified and fixed.tensors_restored == [span.name] and fixed.unrepaired == []
    assert digest(tmp_path / "fixed" / WEIGHTS) == digest(path / WEIGHTS)


def test_repair_never_writes_in_place(original, damaged, tmp_path):
    _, manifest, _, _ = original
    for out in (damaged, damaged / "sub"):
        with pytest.raises(SuperweightError, match="never in place") as exc:
            repair_model(str(damaged), manifest, out, evaluate=False)
        assert exc.value.option == "out"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("mine")
    with pytest.raises(SuperweightError, match="not empty"):
        repair_model(str(damaged), manifest, busy, evaluate=False)
    assert (busy / "x").read_text() == "mine" and not (damaged / "sub").exists()


def test_repair_from_the_command_line(original, damaged, tmp_path):
    path, _, manifest_path, text = original
    out = tmp_path / "fixed"
    proc = cli("repair", str(damaged), "--manifest", str(manifest_path), "--out", str(out), "--data", str(text),
               "--max-tokens", "256", "--seq-len", "128", "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "bit-exact to the manifest" in proc.stdout and "layer 1 [5, 17]" in proc.stdout
    assert "perplexity on 256 tokens" in proc.stdout
    assert digest(out / WEIGHTS) == digest(path / WEIGHTS)
    assert_one_line_error(cli("repair", str(damaged), "--manifest", str(manifest_path), "--out", str(damaged)),
                          "never in place")  # fmt: skip
    other = save_planted(tmp_path / "other", "Qwen2ForCausalLM")
    new = tmp_path / "new"
    proc = cli("repair", str(other), "--manifest", str(manifest_path), "--out", str(new), "--no-eval")
    assert_one_line_error(proc, "another model")
    assert not new.exists()
