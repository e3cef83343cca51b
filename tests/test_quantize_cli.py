"""`superweight quantize` end to end on a tiny planted model saved as a folder; checkpoints round-trip."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny import PROBE, PROMPTS, Plant, byte_tokenizer, plant, tiny_model

from superweight.cli.main import main
from superweight.detect.detection import find_super_weights
from superweight.detect.result import DetectionConfig
from superweight.io import write_json
from superweight.model.loading import LoadedModel
from superweight.quant.checkpoint import load_quantized_model, read_quantized, save_checkpoint
from superweight.quant.methods import (
    Protection,
    WeightSnapshot,
    apply_quantization,
    parse_method,
    select_linears,
)
from superweight.quant.result import QuantizationResult
from superweight.quant.rtn import QuantConfig, dequantize
from superweight.results import SCHEMA_VERSION, document

PLANT = Plant(layer=1, row=5, col=17)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    tok = byte_tokenizer()
    model = tiny_model("LlamaForCausalLM")
    plant(model, tok, PLANT)
    folder = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    scan = find_super_weights(model, tok, PROMPTS, DetectionConfig(min_loss_increase=0.02, probe_text=PROBE))
    write_json(folder / "scan.json", document("scan", scan))
    return folder, model, tok, scan


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _common(folder, data_dir) -> list[str]:
    return [str(folder), "--scan", str(folder / "scan.json"), "--data-dir", str(data_dir),
            "--max-tokens", "256", "--seq-len", "128", "--calib-tokens", "128"]  # fmt: skip


def test_quantize_json_schema_and_bits(tiny_folder, data_dir, tmp_path, capsys) -> None:
    folder = tiny_folder[0]
    code, out, _ = _cli(capsys, "quantize", *_common(folder, data_dir), "--bits", "4", "--block", "32,tensor",
                        "--methods", "naive,sw,sparse:0.01", "--json", "--out", str(tmp_path / "run"))  # fmt: skip
    assert code == 0
    payload = json.loads(out)
    assert payload == json.loads((tmp_path / "run" / "results.json").read_text())
    result = QuantizationResult.from_dict(payload)
    figures = {p.name for p in (tmp_path / "run" / "figures").iterdir()}
    assert {"quantize_block_size.png", "quantize_pareto.png"} <= figures  # two blocks, weight-only variants
    assert "quantize_activation.png" not in figures  # no W8A8 variant was asked for
    assert "At 4 bits the lowest perplexity is" in (tmp_path / "run" / "report.html").read_text()
    assert payload["command"] == "quantize" and payload["schema_version"] == SCHEMA_VERSION
    assert result.ppl(result.baseline) > 1
    rows = {(r["method"], r["block"]): r for r in payload["variants"]}
    assert len(rows) == 6
    for r in result.variants:
        assert r.kl is not None and r.kl.mean >= 0 and 0 <= r.kl.same_top_p <= 1 and result.ppl(r) > 1
        # perplexity and KL come from one pass: the details record that pass's mean token loss
        assert r.perplexity["wikitext2"] == pytest.approx(math.exp(r.details["wikitext2"]["nll"]))
    assert rows[("naive", "32")]["bits_per_weight"] == pytest.approx(4 + 32 / 32)  # fp16 scale + fp16 min per 32
    assert rows[("sw", "32")]["bits_per_weight"] == pytest.approx(
        5 + 64 / rows[("sw", "32")]["quantization"]["weights"]
    )
    assert rows[("sparse:0.01", "tensor")]["bits_per_weight"] > rows[("naive", "tensor")]["bits_per_weight"] + 0.6
    assert [w.coordinate for w in result.super_weights] == [("model.layers.1.mlp.down_proj", 5, 17)]
    assert result.plan.blocks == (32, "tensor") and result.plan.methods == ("naive", "sw", "sparse:0.01")


def test_w8a8_rows(tiny_folder, data_dir, capsys) -> None:
    folder = tiny_folder[0]
    code, out, _ = _cli(capsys, "quantize", *_common(folder, data_dir), "--bits", "8", "--block", "tensor",
                        "--methods", "naive", "--act", "w8a8", "--json")  # fmt: skip
    assert code == 0
    result = QuantizationResult.from_dict(json.loads(out))
    assert [r.method for r in result.variants] == ["naive", "w8a8:naive", "w8a8:sa", "w8a8:smoothquant"]
    assert [r.method for r in result.activation_variants()] == ["w8a8:naive", "w8a8:sa", "w8a8:smoothquant"]
    # sa holds the super activation's hidden channel (row 5) and the down-projection input (column 17)
    assert result.activation_variants()[1].activation["held_channels"] == [PLANT.row, PLANT.col]


def test_saved_checkpoint_reloads_to_the_same_tensors(tiny_folder, tmp_path) -> None:
    _, model, tok, scan = tiny_folder
    lm = LoadedModel(model, tok, "tiny", "folder", "tiny", type(model).__name__, 0, "float32", "cpu", 0.0)
    linears = select_linears(model)
    with WeightSnapshot(linears) as snap:
        report = apply_quantization(
            snap,
            parse_method("sparse:0.01"),
            QuantConfig(3, 32),
            Protection.from_scan(model, scan),
            keep=True,
        )
        manifest = save_checkpoint(tmp_path / "ckpt", lm, report)
        quantized_state = {k: v.clone() for k, v in model.state_dict().items()}
    stored = read_quantized(tmp_path / "ckpt")
    for t in report.tensors:
        codes, meta = stored[t.name]
        assert torch.equal(codes, t.codes)
        assert torch.equal(dequantize(codes, meta), dequantize(t.codes, t.meta))
    loaded = load_quantized_model(tmp_path / "ckpt").model.state_dict()
    assert loaded.keys() == quantized_state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in quantized_state.items())
    size = (tmp_path / "ckpt" / "quantized.safetensors").stat().st_size
    assert manifest.bytes["quantized.safetensors"] == size
    assert size < report.bit_count.total / 8 + 64 * 1024  # bytes on disk ~ the bits accounted (+ header)


def test_cli_save_then_load(tiny_folder, data_dir, tmp_path, capsys) -> None:
    folder = tiny_folder[0]
    ckpt = tmp_path / "sw4"
    code, out, _ = _cli(capsys, "quantize", *_common(folder, data_dir), "--bits", "4", "--block", "32",
                        "--methods", "sw", "--save", str(ckpt), "--json")  # fmt: skip
    assert code == 0
    saved = json.loads(out)["variants"][0]
    code, out, _ = _cli(capsys, "quantize", str(folder), "--load", str(ckpt), "--data-dir", str(data_dir),
                        "--max-tokens", "256", "--seq-len", "128", "--json")  # fmt: skip
    assert code == 0
    loaded = json.loads(out)["variants"][0]
    assert loaded["perplexity"]["wikitext2"] == pytest.approx(saved["perplexity"]["wikitext2"], rel=1e-5)
    assert loaded["bits_per_weight"] == saved["bits_per_weight"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bits", "9"], "from 2 to 8"),
        (["--bits", "four"], "--bits takes integers"),
        (["--bits", "1"], "from 2 to 8"),
        (["--bits", ""], "--bits: needs at least one value"),
        (["--block", "4"], "--block: block size must be >= 8"),
        (["--block", "-32"], "bad block"),
        (["--smoothquant-alpha", "2"], "--smoothquant-alpha: must be in [0, 1]"),
        (["--calib-tokens", "0"], "--calib-tokens: must be at least 2"),
        (["--block", "4096"], "longer than a row"),
        (["--block", "12x"], "bad block"),
        (["--methods", "gptq"], "unknown method"),
        (["--methods", "naive,sw", "--save", "x"], "--save writes one model"),
    ],
)
def test_invalid_options_are_one_line_errors(tiny_folder, data_dir, capsys, args, message) -> None:
    code, out, err = _cli(capsys, "quantize", *_common(tiny_folder[0], data_dir), *args)
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if "error:" in line]  # progress lines may come before
    assert len(errors) == 1 and message in errors[0]


def test_zero_shot_tasks_per_variant(tiny_folder, data_dir, capsys) -> None:
    """--tasks runs lm-eval on the unquantized model and on every quantized variant (local data)."""
    folder = tiny_folder[0]
    code, out, _ = _cli(capsys, "quantize", *_common(folder, data_dir), "--bits", "2", "--block", "tensor",
                        "--methods", "naive", "--tasks", "lambada_openai", "--limit", "8", "--json")  # fmt: skip
    assert code == 0
    payload = json.loads(out)
    base = payload["baseline"]["accuracy"]["lambada_openai"]
    acc = payload["variants"][0]["accuracy"]["lambada_openai"]
    assert 0.0 <= base <= 1.0 and 0.0 <= acc <= 1.0
    assert base * 8 == int(base * 8)  # an accuracy over exactly 8 examples


def test_unknown_task_fails_before_loading(tiny_folder, data_dir, capsys) -> None:
    code, _, err = _cli(capsys, "quantize", *_common(tiny_folder[0], data_dir), "--tasks", "no_such_task")
    assert code == 2 and "unknown task" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ bad input: one line, exit 2


def _one_line_error(code: int, out: str, err: str, message: str) -> None:
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err and "internal error" not in err


def test_a_missing_scan_file_is_a_one_line_error(tiny_folder, data_dir, tmp_path, capsys) -> None:
    folder = tiny_folder[0]
    argv = [str(folder), "--data-dir", str(data_dir), "--max-tokens", "256", "--seq-len", "128"]
    _one_line_error(*_cli(capsys, "quantize", *argv, "--scan", str(tmp_path / "missing.json")), "does not exist")
    (tmp_path / "corrupt.json").write_text('{"command": "scan", "super_weig')
    _one_line_error(*_cli(capsys, "quantize", *argv, "--scan", str(tmp_path / "corrupt.json")), "is not JSON")
    write_json(tmp_path / "other.json", {"command": "ablate", "schema_version": 2})
    _one_line_error(*_cli(capsys, "quantize", *argv, "--scan", str(tmp_path / "other.json")), "not a scan result")
    write_json(tmp_path / "bad.json", {"command": "scan", "schema_version": 2, "super_weights": 3})
    _one_line_error(*_cli(capsys, "quantize", *argv, "--scan", str(tmp_path / "bad.json")), "not a superweight scan")


@pytest.fixture(scope="module")
def checkpoint(tiny_folder, tmp_path_factory):
    """A 4-bit block-32 sw checkpoint of the tiny model, written by the library (no evaluation)."""
    _, model, tok, scan = tiny_folder
    lm = LoadedModel(model, tok, "tiny", "folder", "tiny", type(model).__name__, 0, "float32", "cpu", 0.0)
    folder = tmp_path_factory.mktemp("ckpt") / "sw4"
    with WeightSnapshot(select_linears(model)) as snap:
        report = apply_quantization(snap, parse_method("sw"), QuantConfig(4, 32), Protection.from_scan(model, scan),
                                    keep=True)  # fmt: skip
        save_checkpoint(folder, lm, report)
    return folder


def _damaged(checkpoint, tmp_path, damage) -> str:
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint, copy)
    damage(copy)
    return str(copy)


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _edit_manifest(**changes):
    def edit(folder) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest.update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            del manifest[key]
        (folder / "manifest.json").write_text(json.dumps(manifest))

    return edit


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "manifest.json").unlink(), "has no manifest.json"),
        (lambda f: _truncate(f / "manifest.json"), "is not JSON (truncated"),
        (_edit_manifest(bits=None), "lacks 'bits': truncated"),
        (_edit_manifest(bits="four"), "'bits' has the wrong type"),
        (_edit_manifest(format="other/9"), "is not a superweight-quant/1 manifest"),
        (_edit_manifest(architecture="GPT2LMHeadModel"), "builds a LlamaForCausalLM, the manifest says GPT2"),
        (_edit_manifest(modules=3), "3"),
        (_edit_manifest(bits=12), "names an invalid quantization: must be an integer from 2 to 8"),
        (lambda f: _truncate(f / "quantized.safetensors", 0.9), "is damaged or truncated"),
        (lambda f: (f / "rest.safetensors").write_bytes(b"\x00" * 16), "cannot rebuild the model"),
    ],
    ids=["no-manifest", "truncated-manifest", "missing-field", "wrong-type", "wrong-format", "other-architecture",
         "wrong-count", "bits-out-of-range", "truncated-codes", "damaged-rest"],
)  # fmt: skip
def test_a_bad_checkpoint_is_a_one_line_error(tiny_folder, checkpoint, data_dir, tmp_path, capsys, damage, message):
    path = _damaged(checkpoint, tmp_path, damage)
    argv = [str(tiny_folder[0]), "--load", path, "--data-dir", str(data_dir), "--max-tokens", "256", "--seq-len", "128"]
    code, out, err = _cli(capsys, "quantize", *argv)
    _one_line_error(code, out, err, message)
    assert "--load" in err


def test_load_takes_no_sweep_options(tiny_folder, checkpoint, data_dir, capsys) -> None:
    argv = [str(tiny_folder[0]), "--load", str(checkpoint), "--data-dir", str(data_dir), "--save", "x"]
    _one_line_error(*_cli(capsys, "quantize", *argv), "--load: evaluates a saved checkpoint as it is")


def test_a_checkpoint_of_another_model_is_refused(checkpoint, data_dir, tmp_path, capsys) -> None:
    other = tmp_path / "qwen"
    model = tiny_model("Qwen2ForCausalLM")
    model.save_pretrained(other)
    byte_tokenizer().save_pretrained(other)
    argv = [str(other), "--load", str(checkpoint), "--data-dir", str(data_dir), "--max-tokens", "256"]
    _one_line_error(*_cli(capsys, "quantize", *argv, "--seq-len", "128"),
                    "is of a LlamaForCausalLM (tiny), not this Qwen2ForCausalLM")  # fmt: skip
