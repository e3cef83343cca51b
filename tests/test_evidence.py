"""What the evidence means: opposite-sign pairs, float16 overflow, massive activations without a weight."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_state_equal, cli
from tiny import PROBE, PROMPTS, Plant, byte_tokenizer, plant, tiny_model

from superweight.detect.detection import find_super_weights
from superweight.detect.result import DetectionConfig
from superweight.model.architectures import decoder_layers

TINY = DetectionConfig(min_loss_increase=0.02, probe_text=PROBE)


def test_late_layer_opposite_sign_candidate_is_labelled_a_pair():
    tok = byte_tokenizer()
    model = tiny_model("LlamaForCausalLM", seed=1)
    plant(model, tok, Plant(layer=1, row=5, col=9), weight=2.0)
    plant(model, tok, Plant(layer=3, row=5, col=60), weight=-1.0)  # writes against channel 5 later on
    result = find_super_weights(model, tok, PROMPTS, TINY)
    labels = {(e.row, e.col): e.label for e in result.evidence}
    assert (5, 9) in labels and labels[(5, 9)] == ""
    assert labels[(5, 60)].startswith("opposite-sign pair: cancels the super activation of layer 1, channel 5")
    assert not result.fp16["overflows_fp16"] and result.fp16["headroom"] > 1


def test_float16_overflow_is_a_warning_in_the_scan_output(tmp_path):
    tok = byte_tokenizer()
    model = tiny_model("LlamaForCausalLM")
    plant(model, tok, Plant(layer=2, row=17, col=33), weight=80.0)  # ~80,000 at the super activation
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    common = ["scan", str(tmp_path), "--min-loss-increase", "0.02", "--probe-text", PROBE, "--prompt", PROMPTS[0]]
    proc = cli(*common, "-q")
    assert proc.returncode == 0, proc.stderr
    assert "WARNING: float16 overflow" in proc.stdout and "65,504" in proc.stdout
    data = json.loads(cli(*common, "--json", "-q").stdout)
    assert data["fp16"]["overflows_fp16"] and data["fp16"]["max_abs"] > 65504


@pytest.fixture(scope="module")
def post_norm_massive():
    """A tiny Gemma 3 whose channel 9 is amplified by the post-feed-forward norm gains of layers 1-3."""
    tok = byte_tokenizer()
    model = tiny_model("Gemma3ForCausalLM")
    with torch.no_grad():
        for layer, gain in ((1, 30.0), (2, 60.0), (3, 30.0)):
            decoder_layers(model)[layer].post_feedforward_layernorm.weight[9] += gain
    return model, tok


def test_massive_activation_without_a_weight_is_explained_by_norm_gains(post_norm_massive):
    model, tok = post_norm_massive
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = find_super_weights(model, tok, PROMPTS, TINY)
    assert result.super_weights == [] and result.unconfirmed == []
    m = result.massive
    assert m["channel"] == 9 and m["ratio_to_median"] > 20
    top = m["builders"][0]
    assert top["layer"] == 2 and top["norm"] == "model.layers.2.post_feedforward_layernorm"
    assert abs(top["down_proj"]) < 0.1 < abs(top["mlp"])  # a small down_proj output, multiplied by the gain
    check = m["causal_check"]
    assert check["parameter"] == "model.layers.2.post_feedforward_layernorm.weight[9]"
    assert abs(check["value_after"]) < 0.5 * abs(check["value_before"])  # the gain is the cause
    assert_state_equal(model, state)  # the gain is put back bit-exactly
