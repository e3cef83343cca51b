"""Checkpoint diff on real tiny files: change statistics, super weight fates, and GGUF vs safetensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from superweight.guard.diff import diff_checkpoints
from superweight.guard.manifest import SuperWeightEntry
from superweight.model.files import gguf_tensor_name

SW = SuperWeightEntry(layer=1, module="model.layers.1.mlp.down_proj", row=5, col=7, expert=None,
                      param="model.layers.1.mlp.down_proj.weight", index=[5, 7], value=40.0,
                      memory_dtype="float32", memory_bits="00002042")  # fmt: skip


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[5, 7] = 40.0  # a planted super weight
    return model


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    model = tiny_llama()
    path = tmp_path_factory.mktemp("diff") / "a"
    model.save_pretrained(path)
    return model, path


def variant(base, tmp_path, name, edit):
    model = tiny_llama()
    with torch.no_grad():
        edit(model)
    model.save_pretrained(tmp_path / name)
    return diff_checkpoints(str(base[1]), str(tmp_path / name), super_weights=[SW])


def test_change_statistics_sorted_and_exact(base, tmp_path):
    def edit(m):
        m.model.layers[3].mlp.up_proj.weight.mul_(1.1)
        m.model.layers[0].self_attn.o_proj.weight[2, 3] += 0.05  # rel. change ~0.04

    report = variant(base, tmp_path, "b", edit)
    changed = [t for t in report.tensors if not t.identical_bytes]
    assert [t.name for t in changed] == [
        "model.layers.3.mlp.up_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
    ]
    up = changed[0]
    assert up.rel_change == pytest.approx(0.1, rel=1e-4) and up.changed == up.numel
    o = changed[1]
    assert o.changed == 1 and o.max_change == pytest.approx(0.05, rel=1e-4)
    assert all(t.rel_change == 0 for t in report.tensors[2:])
    assert report.super_weights[0].fate == "kept"


@pytest.mark.parametrize(
    ("edit", "fate", "moved_to"),
    [
        (lambda w: w.__setitem__((5, 7), 20.0), "scaled", None),
        (lambda w: w.__setitem__((5, 7), -40.0), "scaled", None),
        (lambda w: w.__setitem__((5, 7), 0.0), "removed", None),
        (lambda w: (w.__setitem__((5, 7), 0.0), w.__setitem__((9, 3), 38.0)), "moved", [9, 3]),
    ],
)
def test_super_weight_fates(base, tmp_path, edit, fate, moved_to):
    report = variant(base, tmp_path, "b", lambda m: edit(m.model.layers[1].mlp.down_proj.weight))
    got = report.super_weights[0]
    assert got.fate == fate and got.moved_to == moved_to and got.value_a == 40.0


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf Q/K permutation."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_gguf_against_safetensors_is_matched_and_unpermuted(base, tmp_path):
    import gguf

    model, path = base
    writer = gguf.GGUFWriter(str(tmp_path / "a.gguf"), "llama")
    writer.add_block_count(4)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied
        w = t.numpy()
        if name.endswith("q_proj.weight"):
            w = permute(w, 4)
        elif name.endswith("k_proj.weight"):
            w = permute(w, 2)
        writer.add_tensor(gguf_tensor_name(name, "llama", 4), np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    report = diff_checkpoints(str(path), str(tmp_path / "a.gguf"), super_weights=[SW])
    assert report.formats == ["safetensors", "gguf"]
    assert len(report.tensors) >= 38
    assert all(t.rel_change == 0 and t.changed == 0 for t in report.tensors), report.tensors[:2]
    assert report.super_weights[0].fate == "kept" and report.super_weights[0].value_b == 40.0
