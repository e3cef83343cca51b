"""The prevention study on a very small model: real training from scratch, scans, checkpoints, resumption."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_one_line_error, cli

from superweight.results import read_document
from superweight.study.prevention import PreventionSettings, activation_penalty, run_prevention
from superweight.study.tinylm import single_scale_norms, tiny_llama
from superweight.study.training import TrainSettings

TEXT = "".join(f"The river {w} past the old town, and the market square is {w} in spring.\n"
               for w in ("flows", "runs", "bends", "turns", "winds", "moves", "goes", "glides") * 40)  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread for these trainings (on a busy 2-core machine several times faster), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _settings(train_file, data_dir, steps=6):
    train = TrainSettings(steps=steps, eval_every=3, lr=3e-3, batch_size=2, seq_len=32, source=str(train_file))
    return PreventionSettings(train=train, hidden=32, layers=2, heads=2, intermediate=64, warmup=2, eval_tokens=512,
                              data_dir=str(data_dir))  # fmt: skip


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "train.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def whole(train_file, data_dir, tmp_path_factory):
    return run_prevention(_settings(train_file, data_dir), checkpoint_dir=tmp_path_factory.mktemp("whole"))


def test_each_variant_trains_and_every_checkpoint_is_scanned(whole):
    assert [v.name for v in whole.variants] == ["baseline", "act_penalty", "single_scale"]
    for v in whole.variants:
        assert [s.step for s in v.snapshots] == [0, 3, 6]
        assert v.snapshots[-1].train_loss < v.snapshots[1].train_loss  # the loss goes down
        assert v.snapshots[-1].perplexity < v.snapshots[0].perplexity
        assert len(v.snapshots[-1].ratios) == 2 and all(r >= 1 for r in v.snapshots[-1].ratios)
    base, single = whole.variant("baseline"), whole.variant("single_scale")
    # 2 norms per layer + the final one, each with one gain instead of `hidden`
    assert base.parameters - single.parameters == (2 * 2 + 1) * (32 - 1)
    assert whole.cost("baseline") == 1.0
    assert whole.data["train"]["sha256"] != whole.data["eval"]["sha256"]
    assert type(whole).from_dict(whole.to_dict()).to_dict() == whole.to_dict()


def test_the_penalty_pushes_the_largest_activation_down():
    h = torch.ones(1, 4, 8)
    h[0, 2, 5] = 50.0
    h.requires_grad_(True)
    out = type("Out", (), {"hidden_states": (None, h)})()
    activation_penalty(1.0)(out).backward()
    assert h.grad[0, 2, 5] > 0 and h.grad.abs().sum() == h.grad[0, 2, 5].abs()  # only the peak is pushed


def test_single_scale_norms_keep_one_gain_per_norm():
    model = tiny_llama(32, 2, 2, 64, 32, 0)
    assert single_scale_norms(model) == 5
    norms = [m for n, m in model.named_modules() if type(m).__name__ == "SingleScaleRMSNorm"]
    assert len(norms) == 5 and all(m.weight.shape == (1,) for m in norms)


def test_an_interrupted_run_resumes_from_its_checkpoint_exactly(whole, train_file, data_dir, tmp_path):
    settings = _settings(train_file, data_dir)
    settings.variants = ("baseline",)

    def stop(variant, step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_prevention(settings, checkpoint_dir=tmp_path, on_checkpoint=stop)
    resumed = run_prevention(settings, checkpoint_dir=tmp_path)
    assert resumed.variants[0].resumed_from == 3
    expected = [s.to_dict() for s in whole.variant("baseline").snapshots]
    assert [s.to_dict() for s in resumed.variants[0].snapshots] == expected


def test_cli_writes_a_run_folder(train_file, data_dir, tmp_path):
    out = tmp_path / "run"
    proc = cli("study", "prevention", "--train-data", str(train_file), "--data-dir", str(data_dir), "--steps", "2",
               "--eval-every", "1", "--train-batch", "2", "--seq-len", "32", "--hidden", "16", "--layers", "2",
               "--heads", "2", "--intermediate", "32", "--eval-tokens", "256", "--variants", "baseline,single_scale",
               "--warmup", "1", "--threads", "1", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = read_document(out, "study-prevention")
    assert [v["name"] for v in doc["variants"]] == ["baseline", "single_scale"]
    assert (out / "report.html").is_file() and (out / "figures" / "prevention_curves.png").is_file()


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        (["--steps", "0"], "--steps"),
        (["--variants", "baseline,nonsense"], "--variants"),
        (["--train-data", "/nonexistent/train.txt"], "nonexistent"),
        (["--hidden", "30", "--heads", "4"], "--hidden"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, extra, text):
    assert_one_line_error(cli("study", "prevention", "--out", str(tmp_path / "run"), *extra, timeout=120), text)
