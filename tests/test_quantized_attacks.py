"""Bit flips in block scales / zero points of real quantized files (a tiny GGUF written with the gguf
package, and this project's packed checkpoint): which check catches an attack on the super weight's
block, and which an attack on a random block. Files are never written; the model is restored exactly."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from conftest import assert_state_equal
from tiny import PROBE, planted

from superweight.coordinates import SuperWeight
from superweight.guard.quantized_attacks import attack_quantized
from superweight.model.architectures import linear_layers
from superweight.model.loading import LoadedModel

SW = SuperWeight(1, "model.layers.1.mlp.down_proj", 5, 17, 2.0, 0.0, 0.0, [0])


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def loaded(model, tok) -> LoadedModel:
    return LoadedModel(model, tok, "tiny", "folder", "tiny", type(model).__name__, 0, "float32", "cpu", 0.0)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A planted tiny Llama whose linear weights are stored as Q4_1 in a GGUF file (and held in memory
    as exactly what that file dequantizes to)."""
    import gguf

    from superweight.model.files import gguf_tensor_name

    model, tok = planted()
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(4)
    q = gguf.GGMLQuantizationType.Q4_1
    with torch.no_grad():
        for name, module in linear_layers(model):
            w = module.weight.detach().numpy().astype(np.float32)
            packed = gguf.quants.quantize(w, q)
            writer.add_tensor(gguf_tensor_name(f"{name}.weight", "llama", 4), packed, raw_dtype=q)
            module.weight.copy_(torch.from_numpy(gguf.quants.dequantize(packed, q).reshape(w.shape)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, loaded(model, tok)


def test_gguf_scale_and_zero_flips(tiny_gguf):
    path, lm = tiny_gguf
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    before = digest(path)
    report = attack_quantized(path, lm, [SW], random_blocks=6, seed=1, canary_prompt=PROBE)
    assert report.format == "gguf" and report.dtype == "Q4_1"
    sw = [r for r in report.results if r.target == "super weight"]
    assert [(r.field, r.block.row, r.block.start) for r in sw] == [("scale", 5, 0), ("zero", 5, 0)]
    assert len(report.results) == 2 + 2 * 6
    assert report.rate("super weight", "hash") == report.rate("random", "hash") == 1.0
    assert report.rate("super weight", "super_weight") == 1.0  # its block's bytes are what it records
    assert report.rate("random", "super_weight") == 0.0  # and no other block's
    scale = sw[0]
    assert scale.after == pytest.approx(scale.before * 2**16, rel=1e-3)  # exponent MSB of an fp16 scale
    assert scale.caught["canary"]  # the super weight x 65536: behaviour breaks
    assert all(r.restored for r in report.results)
    assert digest(path) == before  # the attacks ran on a working copy
    assert_state_equal(lm.model, state)


def test_packed_checkpoint_scale_and_offset_flips(tmp_path):
    from superweight.quant.checkpoint import load_quantized_model, save_checkpoint
    from superweight.quant.methods import WeightSnapshot, apply_quantization, parse_method, select_linears
    from superweight.quant.rtn import QuantConfig

    model, tok = planted()
    lm = loaded(model, tok)
    with WeightSnapshot(select_linears(model)) as snap:
        report = apply_quantization(snap, parse_method("naive"), QuantConfig(4, 32), keep=True)
        save_checkpoint(tmp_path / "ckpt", lm, report)
    quantized = load_quantized_model(tmp_path / "ckpt")
    file = tmp_path / "ckpt" / "quantized.safetensors"
    before = digest(file)
    result = attack_quantized(tmp_path / "ckpt", quantized, [SW], random_blocks=4, seed=2, canary_prompt=PROBE)
    assert result.format == "packed"
    sw = [r for r in result.results if r.target == "super weight"]
    assert [r.field for r in sw] == ["scale", "zero"] and {r.tensor for r in sw} == {
        "model.layers.1.mlp.down_proj.scale", "model.layers.1.mlp.down_proj.offset"}  # fmt: skip
    assert result.rate("super weight", "super_weight") == 1.0 and result.rate("random", "super_weight") == 0.0
    assert result.rate("random", "hash") == 1.0
    assert sw[0].caught["canary"]
    assert all(r.restored for r in result.results) and digest(file) == before


def test_attack_quantized_from_the_command_line(tmp_path, capsys):
    import json

    from tiny import PROMPTS

    from superweight.cli.main import main
    from superweight.detect.detection import find_super_weights
    from superweight.detect.result import DetectionConfig
    from superweight.io import write_json
    from superweight.quant.checkpoint import save_checkpoint
    from superweight.quant.methods import WeightSnapshot, apply_quantization, parse_method, select_linears
    from superweight.quant.rtn import QuantConfig
    from superweight.results import document

    model, tok = planted()
    scan = find_super_weights(model, tok, PROMPTS, DetectionConfig(min_loss_increase=0.02, probe_text=PROBE))
    write_json(tmp_path / "scan.json", document("scan", scan))
    with WeightSnapshot(select_linears(model)) as snap:
        report = apply_quantization(snap, parse_method("naive"), QuantConfig(4, 32), keep=True)
        save_checkpoint(tmp_path / "ckpt", loaded(model, tok), report)
    args = ["attack", str(tmp_path / "ckpt"), "--quantized", "--scan", str(tmp_path / "scan.json"), "--n", "2"]
    assert main([*args, "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["command"] == "quantized-attack" and out["format"] == "packed" and len(out["results"]) == 6
    assert [r["caught"]["super_weight"] for r in out["results"]] == [True, True, False, False, False, False]
    from superweight.cli.attack import render_quantized
    from superweight.guard.quantized_attacks import QuantAttackReport

    text = render_quantized(QuantAttackReport.from_dict(out))
    assert "super weight blocks caught: hash 100%, super_weight 100%" in text
    (tmp_path / "plain").mkdir()
    model.save_pretrained(tmp_path / "plain")
    tok.save_pretrained(tmp_path / "plain")
    capsys.readouterr()
    assert main(["attack", str(tmp_path / "plain"), "--quantized", "--scan", str(tmp_path / "scan.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([e for e in err if "error:" in e]) == 1
