"""The guard commands end to end on tiny checkpoints: exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import shutil
import stat

import pytest
import torch

from superweight.cli.main import main
from superweight.model.files import resolve_model_files


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256)  # fmt: skip
    path = tmp_path_factory.mktemp("cli") / "model"
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture
def work(model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    assert main(["fingerprint", str(copy), "--no-scan", "-o", str(tmp_path / "m.json"), "-q"]) == 0
    return copy, tmp_path / "m.json"


def one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def test_fingerprint_then_verify_then_a_flipped_bit(work, capsys):
    model, manifest = work
    data = json.loads(manifest.read_text())
    assert data["schema"] == "superweight.guard.manifest" and len(data["tensors"]) == 39
    assert main(["verify", str(model), str(manifest), "-q"]) == 0
    assert "OK" in capsys.readouterr().out
    span = resolve_model_files(str(model)).span("model.layers.2.mlp.down_proj.weight")
    with open(span.path, "r+b") as fh:
        fh.seek(span.offset + 4 * 130 + 3)
        b = fh.read(1)[0]
        fh.seek(span.offset + 4 * 130 + 3)
        fh.write(bytes([b ^ 0x40]))  # exponent MSB of element [1, 2]
    assert main(["verify", str(model), str(manifest), "-q"]) == 1
    out = capsys.readouterr().out
    assert "CHANGED" in out and "model.layers.2.mlp.down_proj.weight" in out and "[1, 2] bit 30" in out
    assert main(["verify", str(model), str(manifest), "--json", "-q"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["changed"][0]["location"]["meaning"] == "exponent MSB"


def test_bad_manifests_and_models_are_one_line_errors(work, tmp_path, capsys):
    model, manifest = work
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "superweight.guard.manifest", "schema_version": 1}))
    assert main(["verify", str(model), str(bad)]) == 2
    one_error_line(capsys, "lacks")
    assert main(["verify", str(model), str(manifest), "--fast"]) == 2
    one_error_line(capsys, "no super weights")
    target = model / "model.safetensors"
    target.write_bytes(target.read_bytes()[:-1000])
    assert main(["verify", str(model), str(manifest)]) == 2
    one_error_line(capsys, "truncated")
    assert main(["fingerprint", str(model), "-o", str(tmp_path / "t.json")]) == 2
    one_error_line(capsys, "truncated")
    assert not (tmp_path / "t.json").exists()
    assert main(["fingerprint", str(model)]) == 2
    one_error_line(capsys, "-o manifest.json")


def test_signing_from_the_command_line(work, tmp_path, capsys):
    model, _ = work
    key = tmp_path / "keys" / "release"
    assert main(["fingerprint", "--keygen", str(key)]) == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    pub = key.with_name("release.pub")
    signed = tmp_path / "signed.json"
    assert main(["fingerprint", str(model), "--no-scan", "-o", str(signed), "--sign", str(key), "-q"]) == 0
    assert main(["verify", str(model), str(signed), "--pubkey", str(pub), "-q"]) == 0
    assert "signature valid" in capsys.readouterr().out
    data = json.loads(signed.read_text())
    data["tensors"][3]["sha256"] = data["tensors"][4]["sha256"]  # someone "fixes" the manifest
    signed.write_text(json.dumps(data))
    assert main(["verify", str(model), str(signed), "--pubkey", str(pub)]) == 2
    one_error_line(capsys, "BAD SIGNATURE")
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"not a key")
    out = tmp_path / "never.json"
    assert main(["fingerprint", str(model), "--no-scan", "-o", str(out), "--sign", str(junk)]) == 2
    one_error_line(capsys, "not an Ed25519")
    assert not out.exists()


def test_diff_command(work, tmp_path, capsys):
    model, manifest = work
    other = tmp_path / "other"
    shutil.copytree(model, other)
    span = resolve_model_files(str(other)).span("model.norm.weight")
    with open(span.path, "r+b") as fh:
        fh.seek(span.offset)
        fh.write(b"\x00\x00\x00\x00")
    assert main(["diff", str(model), str(other), "--manifest", str(manifest), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    changed = [t for t in report["tensors"] if not t["identical_bytes"]]
    assert [t["name"] for t in changed] == ["model.norm.weight"] and changed[0]["changed"] == 1
    assert main(["diff", str(model), str(tmp_path / "nowhere")]) == 2
    one_error_line(capsys, "no such model")


def test_verify_and_attack_take_only_the_options_they_use(work, capsys):
    model, manifest = work
    for args, unused in [
        (["verify", str(model), str(manifest), "--down-proj", "model.layers.*.mlp.down_proj"], "--down-proj"),
        (["verify", str(model), str(manifest), "--allow-pickle"], "--allow-pickle"),
        (["fingerprint", str(model), "--scan-json", "x.json", "-o", "y.json"], "--scan-json"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
        one_error_line(capsys, f"unrecognized arguments: {unused}")


def test_a_manifest_of_another_model_or_a_newer_tool_is_one_line_and_writes_nothing(work, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    model, manifest = work
    other = tmp_path / "other"
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(other)
    capsys.readouterr()
    out = tmp_path / "run"
    for command in (
        ["verify", str(other), str(manifest)],
        ["diff", str(other), str(model), "--manifest", str(manifest)],
    ):
        assert main([*command, "--out", str(out)]) == 2
        one_error_line(capsys, "another model")
        assert not out.exists()
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**json.loads(manifest.read_text()), "schema_version": 2}))
    assert main(["verify", str(model), str(newer), "--out", str(out)]) == 2
    one_error_line(capsys, "schema version 2", "upgrade superweight")
    assert not out.exists()
