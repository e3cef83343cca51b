"""Attack simulation: edits are exactly what was asked, always undone, and the real-model contrast holds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import assert_state_equal
from tiny import byte_tokenizer, tiny_model

from superweight.coordinates import SuperWeight
from superweight.errors import SuperweightError
from superweight.guard.attacks import AttackSpec, attacked, select_targets, simulate_attacks
from superweight.guard.hashing import hash_memory


def key(ref):
    return (ref.site.name, ref.row, ref.col)


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model("LlamaForCausalLM")
    lm = SimpleNamespace(model=model, tokenizer=byte_tokenizer(), spec="tiny")
    scan = SimpleNamespace(
        super_weights=[SuperWeight(1, "model.layers.1.mlp.down_proj", 5, 7, 0.0, 0.0, 0.0, [0])],
        super_activations=[],
    )
    return lm, scan


@pytest.mark.parametrize(
    "spec",
    [
        AttackSpec("bitflip", "sw", 1, bit="exponent"),
        AttackSpec("bitflip", "sw", 1, bit="sign"),
        AttackSpec("bitflip", "random", 200, bit="mantissa"),
        AttackSpec("bitflip", "random", 50, bit="random"),
        AttackSpec("zero", "topk", 5),
        AttackSpec("scale", "random", 10, alpha=-3.0),
        AttackSpec("sign", "sw"),
    ],
    ids=lambda s: s.label,
)
def test_attacks_change_what_they_say_and_restore_bit_exactly(tiny, spec):
    lm, scan = tiny
    before = {r.name: r.sha256 for r in hash_memory(lm.model)}
    targets = select_targets(lm, spec, scan)
    assert len(targets) == spec.n and len({key(t) for t in targets}) == spec.n
    old = [float(t.get()) for t in targets]
    with attacked(targets, spec):
        new = [float(t.get()) for t in targets]
        changed = {r.name for r in hash_memory(lm.model) if r.sha256 != before[r.name]}
    assert changed == {t.site.param_name for t, n, o in zip(targets, new, old, strict=True) if n != o}
    if (spec.kind == "bitflip" and spec.bit == "sign") or spec.kind == "sign":
        assert new == [-v for v in old]
    if spec.kind == "bitflip" and spec.bit == "exponent":
        assert all(abs(n) > 1e30 * abs(o) for n, o in zip(new, old, strict=True))  # exponent MSB: x 2^128
    if spec.kind == "zero":
        assert new == [0.0] * spec.n
    assert {r.name: r.sha256 for r in hash_memory(lm.model)} == before


def test_targets_avoid_super_weights_and_are_largest(tiny):
    lm, scan = tiny
    sw = key(select_targets(lm, AttackSpec("zero", "sw"), scan)[0])
    top = select_targets(lm, AttackSpec("zero", "topk", 20), scan)
    rand = select_targets(lm, AttackSpec("zero", "random", 500, seed=3), scan)
    assert sw not in {key(t) for t in top} and sw not in {key(t) for t in rand}
    mags = [abs(float(t.get())) for t in top]
    assert mags == sorted(mags, reverse=True)
    again = select_targets(lm, AttackSpec("zero", "random", 500, seed=3), scan)
    assert [key(t) for t in again] == [key(t) for t in rand]  # seeded


def test_asking_for_more_weights_than_there_are_is_an_error_not_a_hang(tiny):
    lm, scan = tiny
    total = sum(p.numel() for n, p in lm.model.named_parameters() if n.startswith("model.layers.") and p.dim() == 2)
    for target in ("random", "topk"):
        with pytest.raises(SuperweightError, match="more than the") as exc:
            select_targets(lm, AttackSpec("zero", target, total), scan)
        assert exc.value.option == "n"


def test_bad_specs():
    with pytest.raises(SuperweightError, match="unknown kind"):
        AttackSpec("melt", "sw")
    with pytest.raises(SuperweightError, match="at least 1"):
        AttackSpec("zero", "sw", 0)
    with pytest.raises(SuperweightError, match="unknown bit"):
        AttackSpec("bitflip", "sw", bit="middle")


@pytest.mark.slow
def test_real_model_super_weight_flip_vs_random_flips(smollm2, smollm2_scan, smollm2_state, data_dir):
    attacks = [
        AttackSpec("bitflip", "sw", 1, bit="exponent"),
        AttackSpec("bitflip", "random", 1, bit="sign"),
        AttackSpec("bitflip", "random", 1000, bit="mantissa"),
    ]
    report = simulate_attacks(smollm2, attacks, scan=smollm2_scan, max_tokens=512, data_dir=str(data_dir))
    sw, one, many = report.results
    assert sw.ratio > 3 and sw.continuation_changed  # x6 on 512 tokens, x8.9 on 2048 (docs/guard.md)
    assert sw.caught == {"fast": True, "hash": True, "canary": True}
    for r in (one, many):
        assert r.ratio < 1.1
        assert r.caught["hash"] and not r.caught["fast"]
    assert all(r.restored for r in report.results)
    assert_state_equal(smollm2.model, smollm2_state)
