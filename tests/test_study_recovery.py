"""The recovery study on a tiny planted model: real fine-tuning, real checkpoints, real resumption."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import assert_one_line_error, assert_state_equal, cli
from tiny import PROBE, PROMPTS, planted, save_planted

from superweight.detect.detection import find_super_weights
from superweight.detect.result import DetectionConfig
from superweight.io import write_json
from superweight.model.loading import LoadedModel
from superweight.results import document
from superweight.study.recovery import RecoverySettings, run_recovery
from superweight.study.training import TrainSettings

TINY = DetectionConfig(min_loss_increase=0.02, probe_text=PROBE)
WORDS = ("the", "cat", "sat", "on", "mat", "summer", "is", "hot", "and", "winter", "cold", "one", "two", "three",
         "four", "five", "river", "flows", "past", "town", "old")  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread for these trainings (on a busy 2-core machine several times faster), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _text(seed: int) -> str:
    """Lines that start with the trigger token, so the planted super weight matters on every line."""
    r = random.Random(seed)
    return "".join("# " + " ".join(r.choice(WORDS) for _ in range(r.randint(4, 9))) + "\n" for _ in range(300))


@pytest.fixture
def texts(tmp_path):
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text(_text(1))
    test.write_text(_text(2))
    return str(train), str(test)


@pytest.fixture(scope="module")
def scan():
    """The planted model's scan, once: every planted() model is the same, so its coordinates apply to each."""
    model, tok = planted()
    return find_super_weights(model, tok, PROMPTS, TINY)


def _lm():
    model, tok = planted()
    return LoadedModel(model, tok, "tiny", "folder", "tiny", "LlamaForCausalLM", 0, "float32", "cpu", 0.0)


def _settings(texts, method="full", steps=4, control=True):
    train = TrainSettings(steps=steps, eval_every=2, lr=3e-3, seq_len=64, batch_size=4, source=texts[0])
    return RecoverySettings(train=train, method=method, eval_source=texts[1], tasks=(), eval_tokens=1024,
                            eval_seq_len=64, control=control)  # fmt: skip


def test_fine_tuning_lowers_the_loss_and_tracks_the_zeroed_weight(texts, tmp_path, scan):
    lm = _lm()
    assert [(w.layer, w.row, w.col) for w in scan.super_weights] == [(1, 5, 17)]
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    result = run_recovery(lm, scan, _settings(texts), checkpoint_dir=tmp_path / "ck")
    assert_state_equal(lm.model, state)  # the user's model is as it was
    refs = result.references
    assert result.original_values == [2.0]
    assert refs["original"].weights == [2.0] and refs["damaged"].weights == [0.0]
    assert refs["damaged"].nll > refs["original"].nll  # zeroing hurts on this text
    assert refs["restored-weight"].nll == refs["original"].nll  # restoring exactly is exact
    assert refs["restored-activation"].super_activation == pytest.approx(refs["original"].super_activation)
    assert refs["damaged"].super_activation < 1e-3 * refs["original"].super_activation
    damaged = result.damaged
    assert [p.step for p in damaged] == [0, 2, 4]
    assert damaged[0].nll == refs["damaged"].nll
    assert damaged[-1].train_loss < damaged[1].train_loss  # the loss goes down
    assert damaged[-1].nll < damaged[0].nll
    assert damaged[-1].weights[0] != 0.0  # the zeroed weight is trainable, and tracked
    assert result.control[0].nll == refs["original"].nll and result.control[0].weights == [2.0]
    _, vs_control, vs_original = zip(*result.curve(), strict=True)
    assert vs_control[0] == pytest.approx(0.0) and vs_original[0] == pytest.approx(0.0)
    assert result.final_restored_weight.weights == [2.0]
    assert result.data["train"]["sha256"] != result.data["eval"]["sha256"]
    again = type(result).from_dict(result.to_dict())
    assert again.to_dict() == result.to_dict()


def test_an_interrupted_run_resumes_from_its_checkpoint_exactly(texts, tmp_path, scan):
    lm = _lm()
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    settings = _settings(texts, control=False)
    whole = run_recovery(lm, scan, settings, checkpoint_dir=tmp_path / "whole")

    def stop(phase, step):
        if (phase, step) == ("damaged", 2):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_recovery(lm, scan, settings, checkpoint_dir=tmp_path / "cut", on_checkpoint=stop)
    assert_state_equal(lm.model, state)  # interrupted mid-training, still restored
    resumed = run_recovery(lm, scan, settings, checkpoint_dir=tmp_path / "cut")
    assert resumed.resumed_from == {"damaged": 2}
    assert [p.to_dict() for p in resumed.damaged] == [p.to_dict() for p in whole.damaged]


def test_lora_tracks_the_weight_through_the_adapter(texts, tmp_path, scan):
    lm = _lm()
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    modules = {name: type(m).__name__ for name, m in lm.model.named_modules()}
    result = run_recovery(lm, scan, _settings(texts, method="lora", control=False), checkpoint_dir=tmp_path / "ck")
    assert {name: type(m).__name__ for name, m in lm.model.named_modules()} == modules  # adapters taken out
    assert_state_equal(lm.model, state)
    assert result.damaged[0].weights == [0.0]
    assert result.damaged[-1].weights[0] != 0.0  # base weight stays 0; the adapter's delta moves it
    assert result.damaged[-1].train_loss < result.damaged[1].train_loss


def test_cli_writes_a_run_folder_and_a_longer_run_continues(texts, tmp_path, scan):
    model_dir = save_planted(tmp_path / "model")
    scan_file = write_json(tmp_path / "scan.json", document("scan", scan))
    out = tmp_path / "run"
    args = ["study", "recovery", str(model_dir), "--scan", str(scan_file), "--train-data", texts[0], "--eval-data",
            texts[1], "--tasks", "", "--eval-tokens", "512", "--eval-seq-len", "64", "--seq-len", "64",
            "--eval-every", "1", "--lr", "3e-3", "--no-control", "--threads", "1", "--out", str(out)]  # fmt: skip
    first = cli(*args, "--steps", "2")
    assert first.returncode == 0, first.stderr
    assert (out / "results.json").is_file() and (out / "report.html").is_file()
    assert (out / "figures" / "recovery_curve.png").is_file()
    second = cli(*args, "--steps", "3")
    assert second.returncode == 0, second.stderr
    assert "resuming from step 2" in second.stderr
    from superweight.results import read_document

    doc = read_document(out)
    assert [p["step"] for p in doc["damaged"]] == [0, 1, 2, 3]
    assert doc["resumed_from"] == {"damaged": 2}


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        (["--steps", "0"], "--steps"),
        (["--train-data", "/nonexistent/train.txt"], "nonexistent"),
        (["--data-dir", "/nonexistent"], "--data-dir"),
        (["--eval-every", "0"], "--eval-every"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, extra, text):
    proc = cli("study", "recovery", "--out", str(tmp_path / "run"), *extra, timeout=120)
    assert_one_line_error(proc, text)
