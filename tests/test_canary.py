"""The behavioural canary: stable on the same model, tolerant of a bf16 copy, and alarmed by damage."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import byte_tokenizer, tiny_model

from superweight.errors import SuperweightError
from superweight.guard.canary import Canary, CanaryTolerance, compare_canary, run_canary


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("LlamaForCausalLM"), byte_tokenizer()


def test_same_model_same_canary_and_round_trip(tiny):
    model, tok = tiny
    a, b = run_canary(model, tok, channel=3), run_canary(model, tok, channel=3)
    assert a.digest == b.digest and len(a.layer_magnitudes) == 4
    check = compare_canary(a, Canary.from_dict(b.to_dict()))
    assert check.passed and check.same_digest and check.top1_same and check.topk_overlap == 1.0


def test_damage_is_reported_with_reasons(tiny):
    model, tok = tiny
    ref = run_canary(model, tok)
    w = model.model.layers[1].mlp.down_proj.weight
    saved = w.detach().clone()
    with torch.no_grad():
        w.mul_(50.0)
    try:
        check = compare_canary(ref, run_canary(model, tok))
    finally:
        with torch.no_grad():
            w.copy_(saved)
    assert not check.passed
    assert any("activation magnitude" in r for r in check.reasons)
    assert compare_canary(ref, run_canary(model, tok)).passed  # restored


def test_bad_inputs():
    with pytest.raises(ValueError):
        CanaryTolerance(activation_rel=0)
    with pytest.raises(SuperweightError, match="malformed"):
        Canary.from_dict({"prompt": "x"})


@pytest.mark.slow
def test_real_model_bf16_copy_passes_and_zeroed_super_weight_fails(smollm2, smollm2_scan):
    from superweight.model.interventions import refs_for, zeroed

    sa = max(smollm2_scan.super_activations, key=lambda a: abs(a.value))
    ref = run_canary(smollm2.model, smollm2.tokenizer, sa.channel)
    assert max(ref.layer_magnitudes) > 1000  # the super activation is what the canary watches
    bf16 = copy.deepcopy(smollm2.model).to(torch.bfloat16)
    check = compare_canary(ref, run_canary(bf16, smollm2.tokenizer, sa.channel))
    del bf16
    assert check.passed, check.reasons
    assert not check.same_digest  # the hashes of a bf16 copy could never match; the canary does
    with zeroed(refs_for(smollm2.model, smollm2_scan.super_weights[:1])):
        broken = compare_canary(ref, run_canary(smollm2.model, smollm2.tokenizer, sa.channel))
    assert not broken.passed and broken.max_activation_change > 0.5
