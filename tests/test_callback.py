"""The training guard on the real SmolLM2 with a few real training steps (tiny batch, short sequence):
a step that wrecks the super weight is caught within N steps, ``stop`` stops, ``protect`` keeps it
bit-exact, LoRA's merged value is what is checked, and another architecture is one clear error."""

from __future__ import annotations

import copy

import pytest
import torch

from superweight.errors import SuperweightError
from superweight.guard.callback import SuperWeightCallback, attach
from superweight.guard.journal import read_records
from superweight.guard.reference import ReferenceMismatchError, locate

TEXT = "The river flows through the old town, past the market square and the church."


@pytest.fixture
def trainable(smollm2):
    """A private copy of the real model (the session's stays pristine) with two layers trainable."""
    model = copy.deepcopy(smollm2.model)
    for layer in (11, 12):
        model.model.layers[layer].mlp.requires_grad_(True)
    yield model
    del model


@pytest.fixture(scope="module")
def batch(smollm2):
    ids = smollm2.tokenizer(TEXT, return_tensors="pt")["input_ids"][:, :16]
    return {"input_ids": ids, "labels": ids.clone()}


def super_weight(model, scan):
    sw = scan.super_weights[0]
    return model.model.layers[sw.layer].mlp.down_proj.weight, (sw.row, sw.col)


def train_steps(model, batch, optimizer, guard, steps: int, corrupt=None, lr: float = 0.0):
    """``corrupt=(step, weight, index)``: a corrupted gradient there, so that this SGD step sets it to ~0."""
    for i in range(1, steps + 1):
        model(**batch).loss.backward()
        if corrupt is not None and i == corrupt[0]:
            _, w, idx = corrupt
            w.grad[idx] = w.data[idx] / lr
        optimizer.step()
        optimizer.zero_grad()
        guard.step()
        if guard.should_stop:
            break


def test_plain_loop_warns_within_n_steps_of_a_step_that_zeroes_the_super_weight(
    trainable, batch, smollm2, smollm2_scan, tmp_path
):
    log = tmp_path / "run" / "guard.jsonl"
    guard = attach(trainable, smollm2_scan, tokenizer=smollm2.tokenizer, every=2, policy="warn", log=log)
    w, idx = super_weight(trainable, smollm2_scan)
    lr = 1e-4
    opt = torch.optim.SGD([p for p in trainable.parameters() if p.requires_grad], lr=lr)
    train_steps(trainable, batch, opt, guard, steps=4, corrupt=(3, w, idx), lr=lr)
    assert abs(float(w.detach()[idx])) < 1e-3  # the step did zero it
    assert [(c.step, c.ok) for c in guard.checks] == [(0, True), (2, True), (4, False)]
    bad = guard.checks[-1]
    assert bad.action == "warned" and not guard.should_stop
    assert any("super weight" in r for r in bad.reasons) and any("super activation" in r for r in bad.reasons)
    assert bad.activation_change > 0.5  # the canary collapses with the weight
    records = read_records(log)
    assert [r["step"] for r in records] == [0, 2, 4] and records[-1]["ok"] is False
    assert records[1]["weights"][0]["change"] < 1e-3  # ordinary steps barely move it


def make_trainer(model, tok, batch, out, callback, lr: float, steps: int, save_steps: int = 0):
    from transformers import Trainer, TrainingArguments

    rows = [{"input_ids": batch["input_ids"][0], "labels": batch["labels"][0]}] * steps
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=1, learning_rate=lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.1, report_to=[], logging_strategy="no",
        disable_tqdm=True, use_cpu=True, save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
    )  # fmt: skip
    return Trainer(model=model, args=args, train_dataset=rows, processing_class=tok, callbacks=[callback])


def test_trainer_stop_ends_training_and_skips_the_damaged_checkpoint(trainable, batch, smollm2, smollm2_scan, tmp_path):
    log = tmp_path / "guard.jsonl"
    callback = SuperWeightCallback(smollm2_scan, every=1, policy="stop", log=log)
    trainer = make_trainer(
        trainable, smollm2.tokenizer, batch, tmp_path / "out", callback, lr=0.5, steps=4, save_steps=1
    )
    trainer.train()
    assert trainer.state.global_step == 1  # stopped at the first check, not at max_steps=4
    assert callback.should_stop and "step 1" in callback.reason
    assert not list((tmp_path / "out").glob("checkpoint-*"))  # the damaged checkpoint was not written
    last = read_records(log)[-1]
    assert last["event"] == "save" and last["action"] == "stopped" and last["step"] == 1


def test_trainer_protect_keeps_the_super_weights_bit_exact(trainable, batch, smollm2, smollm2_scan, tmp_path):
    w, idx = super_weight(trainable, smollm2_scan)
    before = w.detach().clone()
    callback = SuperWeightCallback(smollm2_scan, every=1, policy="protect")
    make_trainer(trainable, smollm2.tokenizer, batch, tmp_path / "out", callback, lr=1e-3, steps=2).train()
    after = w.detach()
    assert torch.equal(after[idx], before[idx])  # bit-exact
    moved = (after != before).float().mean()
    assert moved > 0.9  # while nearly every other element of the same tensor changed
    assert all(c.weights[0].bit_exact for c in callback.guard.checks)
    trainable.zero_grad()
    trainable(**batch).loss.backward()
    assert w.grad[idx] != 0  # the gradient mask came off when training ended


def test_lora_merged_super_weight_is_guarded_and_protected(smollm2, smollm2_scan, batch):
    from peft import LoraConfig
    from peft.tuners.lora import Linear as LoraLinear

    sw = smollm2_scan.super_weights[0]
    model = copy.deepcopy(smollm2.model)
    mlp = model.model.layers[sw.layer].mlp
    # peft's own LoRA layer, installed directly: get_peft_model fails here while probing torchao (it
    # wants torchao >= 0.16; 0.13 is installed), before it ever reaches this layer
    mlp.down_proj = layer = LoraLinear(mlp.down_proj, "default", LoraConfig(r=4, lora_alpha=8), r=4, lora_alpha=8)
    base = layer.base_layer.weight[sw.row, sw.col].clone()

    def peft_merged() -> float:  # peft's own merge, computed as a full delta matrix
        return float((base + layer.get_delta_weight("default")[sw.row, sw.col]).detach())

    params = [p for p in model.parameters() if p.requires_grad]
    with attach(model, smollm2_scan, tokenizer=smollm2.tokenizer, every=1, policy="protect") as guard:
        opt = torch.optim.AdamW(params, lr=0.05)
        for _ in range(2):
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
            guard.step()
        lora_b = layer.lora_B["default"].weight
        assert torch.count_nonzero(lora_b) > 0  # the adapter learned ...
        assert torch.count_nonzero(lora_b[sw.row]) == 0  # ... but not the row feeding the super weight
        assert all(c.ok and c.weights[0].bit_exact for c in guard.checks)
        assert guard.weights[0].value().item() == base.item() == peft_merged()

    warn = attach(model, smollm2_scan, tokenizer=smollm2.tokenizer, every=1, policy="warn", tolerance=None)
    opt = torch.optim.AdamW(params, lr=0.5)
    for _ in range(2):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        warn.step()
    merged = warn.weights[0].value().item()
    assert merged == pytest.approx(peft_merged(), rel=1e-5, abs=1e-5) and merged != base.item()
    assert not warn.checks[-1].ok  # a large-lr LoRA moves the merged super weight: caught
    assert torch.equal(layer.base_layer.weight[sw.row, sw.col], base)  # the base weight itself never moved


def test_manifest_reference_and_another_architecture(smollm2, smollm2_scan, tmp_path):
    from tiny import planted

    from superweight.guard.fingerprint import fingerprint_memory
    from superweight.guard.manifest import load_manifest, save_manifest
    from superweight.io import write_json
    from superweight.results import document

    path = save_manifest(fingerprint_memory(smollm2, smollm2_scan, canary=False), tmp_path / "m.json")
    model = copy.deepcopy(smollm2.model)
    w, idx = super_weight(model, smollm2_scan)
    guard = attach(model, path, tokenizer=smollm2.tokenizer)
    assert guard.checks[0].ok and guard.checks[0].weights[0].bit_exact
    assert attach(model, load_manifest(path)).reference.weights == guard.reference.weights  # in memory too
    scan_file = write_json(tmp_path / "scan.json", document("scan", smollm2_scan))  # as `scan --json` saves it
    from_scan = attach(model, scan_file).reference
    assert [(w.module, w.row, w.col) for w in from_scan.weights] == [
        (w.module, w.row, w.col) for w in guard.reference.weights
    ]
    with torch.no_grad():
        w[idx] *= -1  # already damaged when the guard is attached: the manifest still knows the value
    assert not attach(model, path, tokenizer=smollm2.tokenizer).checks[0].ok

    gpt2, _ = planted("GPT2LMHeadModel")
    with pytest.raises(ReferenceMismatchError, match=r"is a GPT2LMHeadModel, but the reference .* LlamaForCausalLM"):
        attach(gpt2, smollm2_scan)
    with pytest.raises(SuperweightError, match="unknown policy 'freeze'"):
        attach(model, smollm2_scan, policy="freeze")
    small, _ = planted("LlamaForCausalLM")
    with pytest.raises(ReferenceMismatchError, match=r"no model\.layers\.11\.mlp\.down_proj|too small"):
        locate(small, guard.reference)
