"""Models dispatched by accelerate: edits land where the weights are used, and the stored copy never changes.

A tiny model with a planted super weight is forced to disk offload (a tiny ``max_memory`` and an
offload folder): its parameters are on ``meta`` between forward passes, and accelerate moves them in
per forward. Zeroing the plant must change the output exactly as it does in memory, and afterwards the
model, the weights accelerate serves and the user's files must be bit-exactly as before.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import assert_one_line_error, cli
from tiny import PROBE, PROMPTS, save_planted

from superweight.coordinates import SuperWeight
from superweight.errors import SuperweightError
from superweight.model.interventions import is_offloaded, refs_for, scaled, zeroed
from superweight.model.loading import load_model
from superweight.model.placement import parse_device_map, parse_max_memory, placement_of

PLANT = SuperWeight(1, "model.layers.1.mlp.down_proj", 5, 17, 0.0, 0.0, 0.0, [])


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    return save_planted(tmp_path_factory.mktemp("planted"))


def _digest(folder) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("*.safetensors")))).hexdigest()


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_disk_offloaded_edit_matches_in_memory_and_restores(planted_dir, tmp_path):
    before = _digest(planted_dir)
    memory = load_model(str(planted_dir))
    offloaded = load_model(str(planted_dir), device_map="auto", max_memory="cpu=100KB", offload_folder=tmp_path)
    refs = refs_for(offloaded.model, [PLANT])
    assert is_offloaded(refs[0].site), "the plant's layer should be on disk, materialised only per forward"
    assert "disk" in placement_of(offloaded.model, "offload").layers[1]
    ids = offloaded.tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    base = _logits(offloaded.model, ids)
    assert torch.equal(base, _logits(memory.model, ids))
    with zeroed(refs_for(memory.model, [PLANT])):
        expected = _logits(memory.model, ids)
    with zeroed(refs):
        first, second = _logits(offloaded.model, ids), _logits(offloaded.model, ids)
    assert (expected - base).abs().max() > 1.0, "zeroing the plant must change the output"
    assert torch.equal(first, expected) and torch.equal(second, expected), "the edit holds on every forward"
    assert torch.equal(_logits(offloaded.model, ids), base), "restored bit-exactly"
    assert refs[0].site.parameter.device.type == "meta", "the edited copy is dropped after the pass"
    assert _digest(planted_dir) == before, "the user's files are never written"


def test_nested_edits_on_offloaded_weights(planted_dir, tmp_path):
    memory = load_model(str(planted_dir))
    offloaded = load_model(str(planted_dir), device_map="auto", max_memory="cpu=100KB", offload_folder=tmp_path)
    ids = offloaded.tokenizer(PROBE, return_tensors="pt").input_ids
    mem_refs, off_refs = refs_for(memory.model, [PLANT]), refs_for(offloaded.model, [PLANT])
    with scaled(mem_refs, 0.5):
        half = _logits(memory.model, ids)
        with zeroed(mem_refs):
            zero = _logits(memory.model, ids)
    base = _logits(offloaded.model, ids)
    with scaled(off_refs, 0.5):
        assert torch.equal(_logits(offloaded.model, ids), half)
        with zeroed(off_refs):
            assert torch.equal(_logits(offloaded.model, ids), zero)
        assert torch.equal(_logits(offloaded.model, ids), half), "the inner edit is undone first"
    assert torch.equal(_logits(offloaded.model, ids), base)


def test_offloaded_scan_finds_the_plant_and_reports_placement(planted_dir, tmp_path):
    from superweight.detect.result import DetectionConfig
    from superweight.detect.strategy import scan_with_strategy

    cfg = DetectionConfig(probe_text=PROBE, min_loss_increase=0.05)
    result = scan_with_strategy(str(planted_dir), "offload", PROMPTS, cfg, max_memory="cpu=100KB",
                                offload_folder=tmp_path)  # fmt: skip
    assert [(w.layer, w.row, w.col) for w in result.super_weights] == [(1, 5, 17)]
    placement = result.source["placement"]
    assert placement["strategy"] == "offload" and len(placement["layers"]) == 4
    assert all("disk" in d for d in placement["layers"]) and placement["peak_bytes"]["cpu"] > 0
    # the down-projections stay resident: detection reads them between passes
    assert placement["device_map"]["model.layers.1.mlp.down_proj"] == "cpu"


def test_device_map_and_memory_parsing():
    assert parse_device_map("auto") == "auto"
    assert parse_device_map('{"model": "cpu", "lm_head": "disk"}') == {"model": "cpu", "lm_head": "disk"}
    assert parse_max_memory("0=20GiB, cpu=512MB") == {0: 20 * 2**30, "cpu": 512 * 10**6}
    assert parse_max_memory('{"cpu": "1KiB"}') == {"cpu": 1024}
    for bad, option in (("everywhere", "device_map"), ('{"model": "gpu"}', "device_map")):
        with pytest.raises(SuperweightError) as caught:
            parse_device_map(bad)
        assert caught.value.option == option
    with pytest.raises(SuperweightError) as caught:
        parse_max_memory("cpu:8GiB")
    assert caught.value.option == "max_memory"


def test_placement_options_errors_via_cli(planted_dir):
    assert_one_line_error(cli("scan", str(planted_dir), "--device-map", "{oops"), "--device-map")
    assert_one_line_error(cli("scan", str(planted_dir), "--device-map", "auto", "--max-memory", "cpu=lots"),
                          "--max-memory")  # fmt: skip
    assert_one_line_error(cli("scan", str(planted_dir), "--max-memory", "cpu=1GiB"), "--device-map")
