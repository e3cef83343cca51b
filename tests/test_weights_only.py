"""Weight-only ranking: planted super weights rank first without any forward pass; the decoy shows the limits."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli
from tiny import CONFIGS, Plant, planted

from superweight.coordinates import SuperWeight
from superweight.detect.weights_only import compare_with_scan, weight_scan
from superweight.model.architectures import down_projections

DENSE = [c for c in CONFIGS if "Mo" not in c and c != "MixtralForCausalLM"]
WHERE = Plant(layer=2, row=9, col=40)


def _save(path, cls, decoy_value=None):
    model, tok = planted(cls, WHERE)
    if decoy_value is not None:  # a large entry whose input channel is ordinary
        site = next(s for s in down_projections(model) if s.layer == 3)
        with torch.no_grad():
            site.weight[20, 30] = decoy_value
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model


@pytest.mark.parametrize("cls", DENSE)
def test_plant_ranks_first_on_every_dense_architecture(tmp_path, cls):
    _save(tmp_path, cls, decoy_value=2.0)
    result = weight_scan(str(tmp_path), top_k=20)
    best = result.candidates[0]
    assert (best.layer, best.row, best.col) == (WHERE.layer, WHERE.row, WHERE.col)
    assert all(c.method == "weights-only" for c in result.candidates)
    # the decoy is as large as the plant, but nothing feeds its column: it ranks below
    decoy = [i for i, c in enumerate(result.candidates) if (c.layer, c.row, c.col) == (3, 20, 30)]
    assert not decoy or decoy[0] > 0


def test_weight_only_fails_on_a_decoy_that_dwarfs_the_plant(tmp_path):
    """An honest failure: a huge entry (1000x the plant) with ordinary feeding rows outranks the plant."""
    _save(tmp_path, "LlamaForCausalLM", decoy_value=2000.0)
    result = weight_scan(str(tmp_path), top_k=20)
    assert (result.candidates[0].layer, result.candidates[0].row, result.candidates[0].col) == (3, 20, 30)
    plant = SuperWeight(WHERE.layer, f"model.layers.{WHERE.layer}.mlp.down_proj", WHERE.row, WHERE.col, 2, 0, 0, [])
    check = compare_with_scan(result, [plant])
    assert check.ranks[0]["rank"] == 2 and check.precision_at[1] == 0.0 and check.recall_at[3] == 1.0


def test_cli_weights_only_json_says_the_method(tmp_path):
    _save(tmp_path, "LlamaForCausalLM")
    proc = cli("scan", str(tmp_path), "--weights-only", "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["method"] == "weights-only" and doc["candidates"][0]["method"] == "weights-only"
    assert (doc["candidates"][0]["row"], doc["candidates"][0]["col"]) == (WHERE.row, WHERE.col)
    assert doc["bytes_read"] > 0


@pytest.mark.slow
def test_smollm2_super_weight_in_the_weight_only_list(smollm2_scan):
    """The built-in model (a Q4_1 GGUF, read tensor by tensor): where its confirmed super weight ranks."""
    result = weight_scan("smollm2-135m", top_k=50)
    check = compare_with_scan(result, smollm2_scan.super_weights)
    strongest = check.ranks[0]  # the set's first, largest weight; the weaker group member may rank lower
    assert smollm2_scan.super_weights and strongest["rank"] is not None and strongest["rank"] <= 10
