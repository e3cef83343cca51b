"""Interventions on tiny models: the exact values they change, and bit-exact restore (also on error)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_state_equal
from tiny import PROBE, Plant, byte_tokenizer, plant, tiny_model

from superweight.errors import SuperweightError
from superweight.measure.conditions import Condition
from superweight.model.architectures import down_projections, linear_layers
from superweight.model.interventions import (
    WeightRef,
    first_layer,
    random_k_refs,
    restored_activation,
    scaled,
    scope_sites,
    top_k_refs,
    zeroed,
)

ROW, COL, LAYER = 20, 50, 1


@pytest.fixture(scope="module")
def planted():
    tok = byte_tokenizer()
    model = tiny_model("LlamaForCausalLM")
    plant(model, tok, Plant(layer=LAYER, row=ROW, col=COL))
    ids = tok(PROBE, return_tensors="pt").input_ids
    return model, ids


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def sw_ref(model) -> WeightRef:
    return WeightRef(down_projections(model)[LAYER], ROW, COL)


def test_zeroed_and_scaled_change_exactly_one_value_and_restore(planted):
    model, _ = planted
    before = state(model)
    ref = sw_ref(model)
    original = float(ref.get())
    assert original == 2.0
    with zeroed([ref]):
        assert float(ref.get()) == 0.0
        weight = ref.site.weight
        diff = (weight != before[f"{ref.site.name}.weight"]).nonzero().tolist()
        assert diff == [[ROW, COL]]
    assert_state_equal(model, before)
    with scaled([ref], 3.0):
        assert float(ref.get()) == original * 3.0
    assert_state_equal(model, before)


def test_restore_happens_after_an_exception_and_for_nested_duplicates(planted):
    model, _ = planted
    before = state(model)
    ref = sw_ref(model)
    with pytest.raises(RuntimeError), zeroed([ref, ref]), scaled([ref], 5.0):
        raise RuntimeError("boom")
    assert_state_equal(model, before)


def down_out(model, ids, site):
    seen = {}
    handle = site.module.register_forward_hook(lambda m, i, o: seen.__setitem__("y", o.detach().clone()))
    with torch.no_grad():
        logits = model(ids).logits
    handle.remove()
    return seen["y"][0], logits


def restore_hook_left(model, ids, site) -> bool:
    """Whether a restore hook still acts on ``site``: it would pin channel ROW of token 0 at MARK."""
    y, _ = down_out(model, ids, site)
    return float(y[0, ROW]) == MARK


MARK = -7.5


def test_restored_activation_puts_back_the_super_activation_only(planted):
    model, ids = planted
    before = state(model)
    ref = sw_ref(model)
    site = ref.site
    base_y, base_logits = down_out(model, ids, site)
    assert abs(float(base_y[0, ROW])) > 10 * float(base_y[1:, ROW].abs().max())  # the planted super activation

    with zeroed([ref]):
        zero_y, zero_logits = down_out(model, ids, site)
    assert abs(float(zero_y[0, ROW])) < 0.1 * abs(float(base_y[0, ROW]))

    with restored_activation(site, ROW, [0]), zeroed([ref]):
        rest_y, rest_logits = down_out(model, ids, site)
    torch.testing.assert_close(rest_y[0, ROW], base_y[0, ROW])  # put back
    torch.testing.assert_close(rest_y[1:, ROW], zero_y[1:, ROW])  # other tokens: still without the weight
    torch.testing.assert_close(rest_y[:, :ROW], zero_y[:, :ROW])  # other channels untouched
    assert (rest_logits - base_logits).abs().max() < (zero_logits - base_logits).abs().max()

    # on the unedited model it is the identity; the hook is gone afterwards
    with restored_activation(site, ROW, None):
        _, same_logits = down_out(model, ids, site)
    torch.testing.assert_close(same_logits, base_logits, rtol=0, atol=1e-5)
    assert_state_equal(model, before)

    with restored_activation(site, ROW, [0], value=MARK):
        assert restore_hook_left(model, ids, site)
    assert not restore_hook_left(model, ids, site)  # the hook is gone afterwards


def test_restored_activation_removes_its_hook_on_error(planted):
    model, ids = planted
    site = sw_ref(model).site
    with pytest.raises(ValueError), restored_activation(site, ROW, [0], value=MARK):
        assert restore_hook_left(model, ids, site)
        raise ValueError
    assert not restore_hook_left(model, ids, site)
    with pytest.raises(SuperweightError, match="out of range"), restored_activation(site, 10_000):
        pass


def test_top_k_is_the_k_largest_magnitudes_other_than_the_excluded(planted):
    model, _ = planted
    ref = sw_ref(model)
    k = 25
    refs = top_k_refs(model, k, exclude=[ref])
    assert len(refs) == k and len({(r.site.name, r.row, r.col) for r in refs}) == k
    assert (ref.site.name, ROW, COL) not in {(r.site.name, r.row, r.col) for r in refs}
    # brute force over every down-projection weight except the excluded one
    everything = []
    for site in down_projections(model):
        w = site.weight.abs().clone()
        if site.name == ref.site.name:
            w[ROW, COL] = -1
        everything.append(w.flatten())
    expected = torch.topk(torch.cat(everything), k).values
    got = torch.tensor(sorted((float(r.get().abs()) for r in refs), reverse=True))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    wide = top_k_refs(model, 200, scope="all")
    assert {r.site.name for r in wide} - {s.name for s in down_projections(model)}  # other matrices too
    assert len(scope_sites(model, "all")) == len(linear_layers(model))
    with pytest.raises(SuperweightError, match="scope"):
        top_k_refs(model, 5, scope="everything")


def test_random_k_is_distinct_seeded_and_excludes(planted):
    model, _ = planted
    ref = sw_ref(model)
    a = random_k_refs(model, 300, exclude=[ref], seed=1)
    b = random_k_refs(model, 300, exclude=[ref], seed=1)
    c = random_k_refs(model, 300, exclude=[ref], seed=2)
    key = lambda refs: [(r.site.name, r.row, r.col) for r in refs]  # noqa: E731
    assert key(a) == key(b) and key(a) != key(c)
    assert len(set(key(a))) == 300 and (ref.site.name, ROW, COL) not in set(key(a))
    assert len({r.site.layer for r in a}) == len(down_projections(model))  # spread over every layer
    assert first_layer(a) == 0 and first_layer([]) is None
    with pytest.raises(SuperweightError, match="other weights in scope") as exc:
        random_k_refs(model, 10**9)
    assert exc.value.option == "k"


def test_condition_apply_restores_everything_on_error(planted):
    model, ids = planted
    before = state(model)
    ref = sw_ref(model)
    cond = Condition("mix", [ref, *top_k_refs(model, 50, [ref])], restores=[(ref.site, ROW, [0])])
    assert cond.start_layer() == min(r.site.layer for r in cond.refs) <= LAYER  # the earliest edit
    base_y, _ = down_out(model, ids, ref.site)
    with pytest.raises(KeyError), cond.apply():
        assert float(ref.get()) == 0.0
        y, _ = down_out(model, ids, ref.site)  # zeroed, yet channel ROW of token 0 is put back
        torch.testing.assert_close(y[0, ROW], base_y[0, ROW], rtol=1e-5, atol=1e-4)
        raise KeyError
    assert_state_equal(model, before)
    after_y, _ = down_out(model, ids, ref.site)
    torch.testing.assert_close(after_y, base_y, rtol=0, atol=0)
    assert Condition("alpha=1", [ref], alpha=1.0).is_original and Condition("o").start_layer() is None
