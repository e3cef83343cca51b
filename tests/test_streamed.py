"""Layer-streamed detection reports exactly what the in-memory scan reports, reading one layer at a time."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_one_line_error, cli
from tiny import PROBE, PROMPTS, Plant, planted

from superweight.detect.detection import find_super_weights
from superweight.detect.result import DetectionConfig
from superweight.detect.streamed import stream_scan
from superweight.model.architectures import down_projections

CFG = DetectionConfig(probe_text=PROBE, min_loss_increase=0.05)


def _save_sharded(path, cls, where, decoy=None):
    model, tok = planted(cls, where)
    if decoy is not None:  # a large entry whose input channel never fires: no super weight
        site = next(s for s in down_projections(model) if s.layer == decoy.layer)
        with torch.no_grad():
            site.weight[decoy.row, decoy.col] = 3.0
    model.save_pretrained(path, max_shard_size="100KB")  # many shards: a layer spans files
    tok.save_pretrained(path)
    assert len(list(path.glob("*.safetensors"))) > 3
    return model, tok


def _found(result):
    return [(w.layer, w.module, w.row, w.col, w.confirmed) for w in result.super_weights + result.unconfirmed]


@pytest.mark.parametrize(
    ("cls", "where"),
    [
        ("LlamaForCausalLM", Plant(layer=2, row=5, col=17)),
        ("Qwen3ForCausalLM", Plant(layer=1, row=9, col=40)),
        ("Gemma3ForCausalLM", Plant(layer=1, row=5, col=17)),
        ("Olmo2ForCausalLM", Plant(layer=2, row=11, col=3)),
    ],
)
def test_streamed_scan_equals_in_memory_scan(tmp_path, cls, where):
    decoy = Plant(layer=3 if where.layer != 3 else 0, row=20, col=30)
    model, tok = _save_sharded(tmp_path, cls, where, decoy)
    memory = find_super_weights(model, tok, PROMPTS, CFG)
    streamed = stream_scan(str(tmp_path), PROMPTS, CFG)
    assert [(w.layer, w.row, w.col) for w in streamed.super_weights] == [(where.layer, where.row, where.col)]
    assert _found(streamed) == _found(memory)
    assert (decoy.layer, decoy.row, decoy.col) not in {(w.layer, w.row, w.col) for w in streamed.unconfirmed}
    assert streamed.base_loss == pytest.approx(memory.base_loss, rel=1e-5)
    for a, b in zip(streamed.super_weights, memory.super_weights, strict=True):
        assert a.loss_increase == pytest.approx(b.loss_increase, rel=1e-3, abs=1e-4)
        assert a.spike_drop == pytest.approx(b.spike_drop, abs=1e-4) and a.agreement == b.agreement
    assert [s.spike for s in streamed.layers] == [s.spike for s in memory.layers]
    for a, b in zip(streamed.super_activations, memory.super_activations, strict=True):
        assert (a.layer, a.channel, a.tokens) == (b.layer, b.channel, b.tokens)
        assert a.value == pytest.approx(b.value, rel=1e-4)
    assert streamed.source["placement"]["strategy"] == "stream"


def test_interventions_replay_from_the_candidates_layer(tmp_path):
    """Reads: one sweep of all layers, then each round from its candidate's layer, then one confirmation sweep."""
    layers = 4
    _save_sharded(tmp_path, "LlamaForCausalLM", Plant(layer=2, row=5, col=17))
    result = stream_scan(str(tmp_path), PROMPTS, CFG)
    replays = sum(layers - it["layer"] for it in result.iterations)
    confirm = layers - min(w.layer for w in result.super_weights + result.unconfirmed)
    assert result.source["layer_reads"] == layers + replays + confirm
    assert result.source["layer_reads"] < layers * (len(result.iterations) + 2), "fewer reads than full passes"


def test_stream_refuses_what_it_cannot_stream(tmp_path):
    model, tok = planted("GPT2LMHeadModel")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert_one_line_error(cli("scan", str(tmp_path), "--strategy", "stream"), "--strategy")
