"""Zero-shot tasks from local files through lm-evaluation-harness; skipped (not crashed) when they cannot run."""

from __future__ import annotations

import json

import pytest
from conftest import assert_state_equal

from superweight.errors import DataError
from superweight.measure.zeroshot import LOCAL_TASKS, TaskSuite, local_docs, plan_tasks

COUNTS = {"arc_easy": 2376, "arc_challenge": 1172, "hellaswag": 10042, "lambada_openai": 5153, "piqa": 1838,
          "winogrande": 1267, "boolq": 3270}  # fmt: skip


@pytest.mark.parametrize("task", sorted(LOCAL_TASKS))
def test_local_copies_load_in_the_hub_schema(task, data_dir):
    docs = local_docs(task, data_dir)
    assert len(docs) == COUNTS[task]
    first = docs[0]
    if task.startswith("arc_"):
        assert first["answerKey"] in first["choices"]["label"] and isinstance(first["question"], str)
    elif task == "piqa":
        assert first["label"] == 0 and {d["label"] for d in docs} == {0, 1}
    elif task == "winogrande":
        assert first["answer"] in ("1", "2") and "_" in first["sentence"]
    elif task == "boolq":
        assert {d["label"] for d in docs} == {0, 1}  # "false" is 0, not bool("false")
    elif task == "hellaswag":
        assert first["activity_label"] == "Roof shingle removal" and len(first["endings"]) == 4
    else:
        assert first["text"].split(" ")[-1] == "signs"


def test_malformed_local_files_are_clear_errors(tmp_path):
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa" / "valid.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n' * 3)
    (tmp_path / "piqa" / "valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(DataError, match="2 labels for 3 examples"):
        local_docs("piqa", tmp_path)
    (tmp_path / "hellaswag").mkdir()
    (tmp_path / "hellaswag" / "hellaswag_val_full.txt").write_text("a: b\n0\nx\ny\nz\n")
    with pytest.raises(DataError, match="multiple of 6"):
        local_docs("hellaswag", tmp_path)
    (tmp_path / "arc_easy").mkdir()
    (tmp_path / "arc_easy" / "ARC-Easy-Test.jsonl").write_text(json.dumps({"question": "q?", "answerKey": "A"}))
    with pytest.raises(DataError, match="stem, choices"):
        local_docs("arc_easy", tmp_path)
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "val.jsonl").write_text('{"passage": "p"}\n')
    with pytest.raises(DataError, match=r"val\.jsonl:1 lacks field"):
        local_docs("boolq", tmp_path)
    (tmp_path / "boolq" / "val.jsonl").write_text('{"passage": "p"}\nnot json\n')
    with pytest.raises(DataError, match=r"val\.jsonl:2 is not valid JSON"):
        local_docs("boolq", tmp_path)
    with pytest.raises(DataError, match=r"winogrande/dev\.jsonl is missing"):
        local_docs("winogrande", tmp_path)


def test_missing_data_offline_is_skipped_with_a_reason(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    runnable, skipped = plan_tasks(["piqa", "sciq"], data_dir)
    assert list(runnable) == ["piqa"] and runnable["piqa"][0] == "local"
    assert "offline" in skipped["sciq"].skipped and skipped["sciq"].accuracy is None
    runnable, skipped = plan_tasks(["piqa"], tmp_path)  # a folder without piqa/
    assert not runnable and "no local copy" in skipped["piqa"].skipped
    with pytest.raises(DataError, match="unknown task"):
        plan_tasks(["mmlu"], data_dir)


@pytest.mark.slow
def test_harness_accuracy_on_smollm2_from_local_files(smollm2, smollm2_scan, smollm2_state, data_dir, monkeypatch):
    from superweight.model.interventions import refs_for, zeroed

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model, tok = smollm2.model, smollm2.tokenizer
    with TaskSuite(model, tok, ["piqa", "lambada_openai", "sciq"], data_dir=data_dir) as suite:
        first = suite.evaluate(limit=12)
        with zeroed(refs_for(model, smollm2_scan.super_weights)):
            broken = suite.evaluate(limit=12)
        again = suite.evaluate(limit=12)
    assert_state_equal(model, smollm2_state)
    assert first["sciq"].skipped and first["sciq"].samples == 0
    for task in ("piqa", "lambada_openai"):
        r = first[task]
        assert r.samples == 12 and 0.0 <= r.accuracy <= 1.0 and r.source.startswith("local:")
        assert again[task].accuracy == r.accuracy  # edit undone: the same answers
    assert first["piqa"].sha256 and first["piqa"].acc_norm is not None
    # LAMBADA's last-word accuracy needs the super weight (SmolLM2 gets some right, none once it is zeroed)
    assert first["lambada_openai"].accuracy > broken["lambada_openai"].accuracy
