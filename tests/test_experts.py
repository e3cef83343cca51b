"""Super experts (Su et al. 2025): planted experts are found exactly, decoys and dense models give none,
pruning them (restored bit-exactly) hurts more than pruning as many random experts; scan and ablate show it."""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, assert_state_equal, cli
from tiny import PROBE, PROMPTS, Plant, byte_tokenizer, planted, save_planted, tiny_model

from superweight.detect.experts import ExpertMaximum, find_super_experts, profile_experts, select_super_experts
from superweight.detect.result import ScanResult
from superweight.measure.ablation import build_conditions, random_experts
from superweight.measure.conditions import measure_conditions
from superweight.model.architectures import down_projections

MOE = ["MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"]
SUPER = Plant(layer=2, row=17, col=33, expert=1)


def moe_with_decoy(cls: str):
    """A planted super expert (layer 2, expert 1) and a decoy: expert 2 of the last layer, scaled up until
    its largest output is massive (far above the median expert) but 5% of the super expert's."""
    model, tok = planted(cls, SUPER)
    ids = [tok(p, return_tensors="pt").input_ids for p in PROMPTS]
    profile = {(m.layer, m.expert): m.value for m in profile_experts(model, ids)}
    site = next(s for s in down_projections(model) if s.layer == 3 and s.expert == 2)
    with torch.no_grad():  # the last layer: nothing downstream of it is profiled, so the rest stays put
        site.weight.mul_(0.05 * profile[(2, 1)] / profile[(3, 2)])
    return model, tok


@pytest.mark.parametrize("cls", MOE)
def test_planted_super_expert_is_found_exactly_and_the_decoy_is_not(cls):
    model, tok = moe_with_decoy(cls)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = [tok(p, return_tensors="pt").input_ids for p in PROMPTS]
    profile = {(m.layer, m.expert): m for m in profile_experts(model, ids)}
    assert len(profile) == 4 * 4  # every routed expert of every layer, the shared expert left out
    # the decoy is a massive output in its own right (far above the median expert), but not a super expert
    decoy, planted_max = profile[(3, 2)].value, profile[(2, 1)].value
    median = float(np.median([m.value for m in profile.values()]))
    assert decoy > 100 * median and decoy == pytest.approx(0.05 * planted_max, rel=1e-3)
    found = find_super_experts(model, tok, PROMPTS)
    assert [(e.layer, e.expert) for e in found] == [(2, 1)]
    e = found[0]
    assert e.channel == SUPER.row and e.token == 0  # the trigger token, in the planted hidden channel
    assert e.module == f"model.layers.2.mlp.experts[{SUPER.expert}]" and e.share_of_largest == 1.0
    assert e.max_output == pytest.approx(planted_max) and e.max_output > e.threshold
    assert_state_equal(model, before)


@pytest.mark.parametrize("cls", ["LlamaForCausalLM", "Qwen2ForCausalLM", "Gemma3ForCausalLM"])
def test_dense_models_have_no_super_experts(cls):
    model, tok = planted(cls)  # a super weight, but no expert to be super
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        assert find_super_experts(model, tok, PROMPTS) == []
    finally:
        handle.remove()
    assert calls == []  # a dense model costs no forward pass


@pytest.mark.parametrize("cls", MOE)
def test_an_moe_without_massive_outputs_has_none(cls):
    """One expert is always the largest; the rule must not call an ordinary one super."""
    assert find_super_experts(tiny_model(cls, seed=3), byte_tokenizer(), PROMPTS) == []


def test_the_rule_on_a_large_population():
    """Su et al.'s rule on 1,000 experts: each of its three tests rejects something the others pass."""
    rng = random.Random(0)
    values = [rng.uniform(0.5, 2.0) for _ in range(995)] + [500.0, 300.0, 30.0, 40.0, 2.5]
    maxima = [ExpertMaximum(i // 100, i % 100, f"m[{i}]", v, 0, 0, 0) for i, v in enumerate(values)]
    found = select_super_experts(maxima)
    assert [e.max_output for e in found] == [500.0, 300.0]  # 40 and 30 are in the top 0.5%, below 0.1 x 500
    cut = float(np.percentile(values, 99.5))
    assert cut < 30.0 and found[0].threshold == pytest.approx(max(cut, 50.0))
    # the percentile test alone: with a tenth of the largest at 0, the top 0.5% are exactly those above it
    loose = select_super_experts(maxima, fraction=0.0, min_ratio=0.0)
    assert sorted(e.max_output for e in loose) == sorted(v for v in values if v > cut)
    # the massiveness test: a flat population has no super expert, unless the test is turned off
    flat = [ExpertMaximum(0, i, f"m[{i}]", 1.0 + i / 1000, 0, 0, 0) for i in range(1000)]
    assert select_super_experts(flat) == []
    assert len(select_super_experts(flat, min_ratio=0.0)) == 5
    with pytest.raises(Exception, match="percentile"):
        select_super_experts(maxima, percentile=100.0)


@pytest.mark.parametrize("cls", MOE)
def test_pruning_the_super_expert_hurts_more_than_random_experts(cls):
    model, tok = planted(cls, SUPER)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    experts = find_super_experts(model, tok, PROMPTS)
    no_weights = SimpleNamespace(super_weights=[], super_activations=[])
    names = ["original", "no-super-experts", "random-experts"]
    windows = torch.cat([tok(text, return_tensors="pt").input_ids[:, :20] for text in (PROBE, *PROMPTS)])
    damage = {}
    for seed in range(4):
        conditions = build_conditions(model, no_weights, names, seed=seed, experts=experts)
        pruned = {c.name: [(s.layer, s.expert) for s in c.pruned] for c in conditions}
        assert pruned["no-super-experts"] == [(2, 1)]
        assert len(pruned["random-experts"]) == 1 and pruned["random-experts"] != [(2, 1)]
        stats = measure_conditions(model, windows, conditions)
        base = stats["original"].nll
        damage[seed] = (stats["no-super-experts"].nll - base, stats["random-experts"].nll - base)
    super_damage = {d[0] for d in damage.values()}
    assert len(super_damage) == 1 and super_damage.pop() > 0.1  # same expert every seed; it hurts
    assert all(d[0] > 5 * max(d[1], 0.0) + 0.1 for d in damage.values()), damage
    assert_state_equal(model, before)  # pruned and restored four times, bit-exactly


def test_random_experts_are_seeded_distinct_and_exclude_the_super_ones():
    model = tiny_model("Qwen3MoeForCausalLM")
    sites = [s for s in down_projections(model) if s.expert is not None]
    a = random_experts(model, 5, sites[:3], seed=7)
    assert [(s.layer, s.expert) for s in a] == [(s.layer, s.expert) for s in random_experts(model, 5, sites[:3], 7)]
    keys = {(s.layer, s.expert) for s in a}
    assert len(keys) == 5 and not keys & {(s.layer, s.expert) for s in sites[:3]}
    with pytest.raises(Exception, match="random experts"):
        random_experts(model, 14, sites[:3])


def test_scan_result_round_trips_its_super_experts():
    model, tok = planted("MixtralForCausalLM", SUPER)
    from superweight.detect.detection import find_super_weights

    result = find_super_weights(model, tok, PROMPTS, model_name="tiny")
    result.super_experts = find_super_experts(model, tok, PROMPTS)
    again = ScanResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.super_experts == result.super_experts and again.atlas is None
    old = result.to_dict()
    del old["super_experts"], old["atlas"]  # a scan written before super experts existed still reads
    assert ScanResult.from_dict(old).super_experts == []


@pytest.fixture(scope="module")
def moe_folder(tmp_path_factory):
    path = save_planted(tmp_path_factory.mktemp("moe"), "Qwen3MoeForCausalLM", SUPER)
    scan = cli("scan", str(path), "--json", "-q", "--min-loss-increase", "0.02", "--probe-text", PROBE,
               *[arg for p in PROMPTS for arg in ("--prompt", p)])  # fmt: skip
    assert scan.returncode == 0, scan.stderr
    (path.parent / "scan.json").write_text(scan.stdout)
    return path


@pytest.mark.slow
def test_cli_scan_lists_super_experts(moe_folder):
    from superweight.cli.scan import render

    data = json.loads((moe_folder.parent / "scan.json").read_text())
    assert [(e["layer"], e["expert"]) for e in data["super_experts"]] == [(2, 1)]
    table = render(ScanResult.from_dict(data))
    rows = table.split("super experts (Su et al. 2025")[1].splitlines()[3:]
    assert [r.split()[:2] for r in rows if r.strip() and r.split()[0].isdigit()] == [["2", "1"]]


@pytest.mark.slow
def test_cli_ablate_prunes_super_experts_against_random_ones(moe_folder, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("# the cat sat on the mat. " * 40)
    common = ["--scan", str(moe_folder.parent / "scan.json"), "--data", str(text), "--seq-len", "32",
              "--max-tokens", "96", "--no-cache", "-q"]  # fmt: skip
    proc = cli("ablate", str(moe_folder), *common, "--json", "--conditions", "original,no-super-experts,random-experts")
    assert proc.returncode == 0, proc.stderr
    rows = {c["name"]: c for c in json.loads(proc.stdout)["conditions"]}
    nats = {
        n: math.log(r["perplexity"][str(text)] / rows["original"]["perplexity"][str(text)]) for n, r in rows.items()
    }
    assert nats["no-super-experts"] > 0.1 and nats["no-super-experts"] > 3 * abs(nats["random-experts"]), nats
    assert rows["no-super-experts"]["edited_weights"] == 64 * 128  # one whole expert matrix
    pruned = json.loads(proc.stdout)["pruned_experts"]
    assert pruned["no-super-experts"] == [[2, 1]] and len(pruned["random-experts"]) == 1
    assert pruned["random-experts"] != [[2, 1]]


def test_cli_ablate_expert_conditions_reject_a_dense_model(tmp_path):
    folder = save_planted(tmp_path / "dense")
    text = tmp_path / "text.txt"
    text.write_text("# the cat sat on the mat. " * 10)
    args = ["ablate", str(folder), "--data", str(text), "--seq-len", "32", "--max-tokens", "64", "--no-cache", "-q"]
    assert_one_line_error(cli(*args, "--conditions", "original,no-super-experts"), "no routed experts")
