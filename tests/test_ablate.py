"""The experiment engine: hidden-state reuse equals full passes, Table 1 / Figure 6 on SmolLM2, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_one_line_error, assert_state_equal, cli
from tiny import PROBE, PROMPTS, Plant, save_planted, tiny_model

from superweight.measure.ablation import AblationResult, run_ablation, run_scaling
from superweight.measure.conditions import Condition, Probe, measure_conditions, supports_reuse
from superweight.measure.settings import EvalSettings
from superweight.model.architectures import down_projections, layerwise_classes
from superweight.model.interventions import WeightRef, random_k_refs, top_k_refs


def conditions_for(model) -> tuple[list[Condition], Probe]:
    sites = down_projections(model)
    site = next(s for s in sites if s.layer == 2 and s.expert is None) if sites[0].expert is None else sites[-1]
    refs = [WeightRef(site, 3, 5), WeightRef(site, 7, 1)]
    late = [WeightRef(sites[-1], 1, 1)]
    return [
        Condition("original"),
        Condition("no-sw", refs),
        Condition("no-sw+sa", refs, restores=[(site, 3, [0])]) if site.expert is None else Condition("x2", refs, 2.0),
        Condition("top-k", top_k_refs(model, 20, refs)),
        Condition("random-k", random_k_refs(model, 20, refs)),
        Condition("alpha=3", refs, alpha=3.0),
        Condition("late", late),
    ], Probe(site, 3)


@pytest.mark.parametrize("cls", [*layerwise_classes(), "GPT2LMHeadModel", "OPTForCausalLM"])
def test_reuse_equals_full_passes(cls):
    model = tiny_model(cls, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    conditions, probe = conditions_for(model)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    full = measure_conditions(model, ids, conditions, probe=probe, reuse=False)
    fast = measure_conditions(model, ids, conditions, probe=probe, reuse=True)
    for c in conditions:
        assert fast[c.name].nll == pytest.approx(full[c.name].nll, rel=1e-6, abs=1e-7), c.name
        assert fast[c.name].super_activation == pytest.approx(full[c.name].super_activation, rel=1e-5, abs=1e-6)
    reused = sum(s.reused_passes for s in fast.values())
    if supports_reuse(model):
        assert reused == 2 * 4  # no-sw, no-sw+sa, alpha=3, late start at layer >= 2, on both windows
    else:
        assert reused == 0  # families it cannot do safely get full passes
    # the losses differ between conditions: the comparison above is not vacuous
    assert len({round(s.nll, 9) for s in full.values()}) > 3
    # no budget for saved hidden states: full passes, same numbers
    tight = measure_conditions(model, ids, conditions, probe=probe, budget_bytes=0)
    assert sum(s.reused_passes for s in tight.values()) == 0
    assert all(tight[n].nll == full[n].nll for n in full)
    assert_state_equal(model, before)


def test_reuse_without_the_original_condition_captures_first():
    model = tiny_model("LlamaForCausalLM", seed=2)
    conditions, probe = conditions_for(model)
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    full = measure_conditions(model, ids, conditions[1:], probe=probe, reuse=False)
    fast = measure_conditions(model, ids, conditions[1:], probe=probe, reuse=True)
    assert all(fast[n].nll == pytest.approx(full[n].nll, rel=1e-6) for n in full)
    assert fast["no-sw"].reused_passes == 1


@pytest.mark.slow
def test_ablation_on_smollm2_shows_collapse_recovery_and_controls(
    smollm2, smollm2_scan, smollm2_state, data_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    settings = EvalSettings(data_dir=str(data_dir), seq_len=256, max_tokens=512)
    result = run_ablation(smollm2, smollm2_scan, settings)
    assert_state_equal(smollm2.model, smollm2_state)
    rows = {c.name: c for c in result.conditions}
    assert list(rows) == ["original", "no-sw", "no-sw+sa", "top-k", "random-k"]
    ppl = {n: r.perplexity["wikitext2"] for n, r in rows.items()}
    assert ppl["no-sw"] > 2 * ppl["original"]  # the collapse
    assert ppl["no-sw+sa"] < ppl["no-sw"]  # restoring the super activation recovers
    assert 0.5 < result.recovery <= 1.05
    assert abs(ppl["random-k"] / ppl["original"] - 1) < 0.05  # 7000 random weights: no effect
    sa = {n: r.super_activation for n, r in rows.items()}
    assert abs(sa["no-sw"]) < 0.5 * abs(sa["original"])  # Figure 4: the super activation collapses too
    assert sa["no-sw+sa"] == pytest.approx(sa["original"], rel=1e-3)
    assert rows["top-k"].edited_weights == 7000 and rows["no-sw"].edited_weights == len(smollm2_scan.super_weights)
    assert result.token_shift and result.token_shift[0].p_edited > result.token_shift[0].p_original
    assert result.continuations[0].prompt == "Summer is hot. Winter is"
    prov = result.provenance
    assert prov.data["wikitext2"]["sha256"].startswith("173c87a5") and prov.versions["torch"]
    assert prov.passes["no-sw:wikitext2"]["reused"] == 2  # started from layer 11's input
    doc = json.loads(json.dumps(result.to_dict()))  # JSON-ready, and it round-trips
    assert json.loads(json.dumps(AblationResult.from_dict(doc).to_dict())) == doc

    again = run_ablation(smollm2, smollm2_scan, settings, ["original", "no-sw"], shift=False)
    assert again.provenance.baseline_cache_hits == ["perplexity:wikitext2"]
    assert again.conditions[0].perplexity == rows["original"].perplexity
    assert again.conditions[1].perplexity["wikitext2"] == pytest.approx(ppl["no-sw"], rel=1e-9)


@pytest.mark.slow
def test_scaling_curve_on_smollm2(smollm2, smollm2_scan, smollm2_state, data_dir, tmp_path, monkeypatch):
    from superweight.report.figures import render
    from superweight.report.measure import scale_curve

    monkeypatch.setenv("SUPERWEIGHT_CACHE", str(tmp_path / "cache"))
    settings = EvalSettings(data_dir=str(data_dir), seq_len=256, max_tokens=256)
    result = run_scaling(smollm2, smollm2_scan, settings, [0.0, 2.0])
    assert_state_equal(smollm2.model, smollm2_state)
    alphas = [p.alpha for p in result.points]
    assert alphas == [0.0, 1.0, 2.0]  # alpha=1 added as the baseline
    values = {p.alpha: p.value for p in result.points}
    assert values[0.0] > values[1.0]
    assert result.best_value == min(values.values()) and result.baseline_value == values[1.0]
    assert result.gain == pytest.approx(values[1.0] / result.best_value - 1)
    assert render(scale_curve(result), "png")[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def planted_folder(tmp_path_factory):
    path = save_planted(tmp_path_factory.mktemp("planted"), "Qwen2ForCausalLM", Plant(layer=1, row=20, col=50))
    scan = cli(
        "scan",
        str(path),
        "--json",
        "-q",
        "--min-loss-increase",
        "0.02",
        "--probe-text",
        PROBE,
        *[arg for p in PROMPTS for arg in ("--prompt", p)],
    )
    assert scan.returncode == 0, scan.stderr
    (path.parent / "scan.json").write_text(scan.stdout)
    return path


@pytest.mark.slow
def test_cli_ablate_and_scale_on_a_planted_model(planted_folder, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("# the cat sat on the mat. " * 40)
    scan = str(planted_folder.parent / "scan.json")
    common = ["--scan", scan, "--data", str(text), "--seq-len", "32", "--max-tokens", "96", "--no-cache"]
    proc = cli("ablate", str(planted_folder), *common, "--json", "-q", "-k", "10", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) >= {"model", "super_weights", "conditions", "recovery", "provenance"}
    assert [c["name"] for c in data["conditions"]] == ["original", "no-sw", "no-sw+sa", "top-k", "random-k"]
    assert set(data["conditions"][0]) >= {"name", "perplexity", "accuracy", "super_activation"}
    assert json.loads((tmp_path / "run" / "results.json").read_text())["command"] == "ablate"
    table = cli("ablate", str(planted_folder), *common, "-q", "--conditions", "original,no-sw")
    assert table.returncode == 0 and "no-sw" in table.stdout and "ppl" in table.stdout, table.stderr
    proc = cli("scale", str(planted_folder), *common, "--alphas", "0,2", "-q", "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr
    assert "best alpha" in proc.stdout and (tmp_path / "s" / "figures" / "scale_curve.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--conditions", "original,nope"], "unknown condition"),
        (["--data-dir", "/no/such/dir"], "does not exist"),
        (["--data", "/no/such/file.txt"], "unknown data source"),
        (["--max-tokens", "0"], "--max-tokens: must be"),
        (["--scan", "/no/such/scan.json"], "--scan: /no/such/scan.json does not exist"),
        (["-k", "0"], "-k: must be at least 1"),
        (["--tasks", "mmlu"], "unknown task"),
    ],
)
def test_cli_errors_are_one_line(planted_folder, args, message):
    scan = [] if "--scan" in args else ["--scan", str(planted_folder.parent / "scan.json")]
    text = planted_folder.parent / "text.txt"
    text.write_text("# the cat sat on the mat. " * 10)
    data = [] if "--data" in args else ["--data", str(text)]
    assert_one_line_error(cli("ablate", str(planted_folder), *scan, *data, "--no-cache", "-q", *args), message)


def test_cli_scale_rejects_bad_alphas(planted_folder):
    assert_one_line_error(cli("scale", str(planted_folder), "--alphas", "0,abc"), "--alphas")


@pytest.mark.slow
def test_down_proj_pattern_serves_every_step_of_an_unregistered_model(tmp_path):
    """`--down-proj` registers its adapter once at load: scan and ablate both work on a Bloom model."""
    import transformers as T
    from tiny import byte_tokenizer, plant

    from superweight.model.architectures import register_pattern

    pattern = "transformer.h.*.mlp.dense_4h_to_h"
    torch.manual_seed(0)
    config = T.BloomConfig(vocab_size=256, hidden_size=64, n_layer=4, n_head=4)
    model = T.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval().requires_grad_(False)
    tok = byte_tokenizer()
    register_pattern(model, pattern)
    plant(model, tok, Plant(layer=1, row=20, col=50))
    model.save_pretrained(tmp_path / "bloom")
    tok.save_pretrained(tmp_path / "bloom")
    folder = str(tmp_path / "bloom")
    text = tmp_path / "text.txt"
    text.write_text("# the cat sat on the mat. " * 40)
    without = cli("ablate", folder, "--data", str(text), "-q")
    assert_one_line_error(without, "unsupported architecture BloomForCausalLM")
    assert "--down-proj PATTERN" in without.stderr
    prompts = [arg for p in PROMPTS for arg in ("--prompt", p)]
    scan = cli("scan", folder, "--down-proj", pattern, "--json", "-q", "--min-loss-increase", "0.02",
               "--probe-text", PROBE, *prompts)  # fmt: skip
    assert scan.returncode == 0, scan.stderr
    data = json.loads(scan.stdout)
    assert [(w["layer"], w["row"], w["col"]) for w in data["super_weights"] if w["confirmed"]] == [(1, 20, 50)]
    (tmp_path / "scan.json").write_text(scan.stdout)
    proc = cli("ablate", folder, "--down-proj", pattern, "--scan", str(tmp_path / "scan.json"), "--data", str(text),
               "--seq-len", "32", "--max-tokens", "96", "--no-cache", "-k", "10", "--json", "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {c["name"]: c for c in json.loads(proc.stdout)["conditions"]}
    assert rows["no-sw"]["perplexity"][str(text)] > rows["original"]["perplexity"][str(text)]
