"""Super weights come in sets: planted pairs are found and confirmed together, decoys are not (issue 10)."""

from __future__ import annotations

import json

import pytest
from conftest import assert_state_equal
from planted_sets import COLS, LAYER, ROW, add_quiet_decoys, planted_pair
from tiny import PROBE, PROMPTS

from superweight.detect.detection import find_super_weights
from superweight.detect.result import DetectionConfig, ScanResult

TINY = DetectionConfig(min_loss_increase=0.02, probe_text=PROBE)


@pytest.fixture(scope="module")
def pair_scan():
    model, tok = planted_pair()
    decoys = add_quiet_decoys(model, LAYER, value=1.1, count=6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = find_super_weights(model, tok, PROMPTS, TINY)
    return model, state, decoys, result


def test_planted_pair_is_found_and_confirmed_together(pair_scan):
    model, state, decoys, result = pair_scan
    pair = {(LAYER, ROW, c) for c in COLS}
    assert {(w.layer, w.row, w.col) for w in result.super_weights} == pair
    found = {w.coordinate for w in result.super_weights + result.unconfirmed}
    assert not found & set(decoys)  # as large as the pair's weights, but nothing large flows through them
    ev = {e.col: e for e in result.evidence if e.row == ROW}
    for col in COLS:  # each alone is harmless: the other half of the activation survives the final norm
        assert ev[col].loss_alone < TINY.min_loss_increase
        assert ev[col].loss_group_leave_one_out >= TINY.min_loss_increase
    assert ev[COLS[0]].loss_marginal == pytest.approx(ev[COLS[0]].loss_alone)  # nothing zeroed before it
    assert ev[COLS[1]].loss_marginal >= TINY.min_loss_increase  # given the first, the second breaks the model
    assert (ev[COLS[0]].confirmed_by, ev[COLS[1]].confirmed_by) == ("group", "marginal")
    assert ev[COLS[0]].group == ev[COLS[1]].group
    group = next(g for g in result.groups if g.row == ROW)
    assert group.members == list(COLS) and group.confirmed
    assert group.joint_loss >= 10 * max(ev[c].loss_alone for c in COLS)
    assert group.shares == pytest.approx([0.55, 0.45], abs=1e-3)  # weights 1.1 and 0.9 on equal inputs
    assert result.set_loss >= group.joint_loss - 1e-3
    assert_state_equal(model, state)


def test_set_fields_round_trip_and_keep_todays_fields(pair_scan):
    result = pair_scan[3]
    data = json.loads(json.dumps(result.to_dict()))
    w = data["super_weights"][0]
    assert set(w) >= {"loss_increase", "confirmed", "group", "share", "loss_alone", "loss_marginal",
                      "loss_leave_one_out"}  # fmt: skip
    assert w["loss_increase"] == w["loss_alone"]
    assert {"group", "members", "shares", "joint_loss"} <= set(data["groups"][0])
    again = ScanResult.from_dict(data)
    assert json.dumps(again.to_dict()) == json.dumps(result.to_dict())  # (NaN == NaN as text)
    assert data["timings"]["forward_passes"] > len(PROMPTS)


def test_single_weight_is_confirmed_alone():
    model, tok = planted_pair(weights=(2.0, 0.0))  # the second column fires, but writes nothing into the row
    result = find_super_weights(model, tok, PROMPTS, TINY)
    assert [(w.layer, w.row, w.col) for w in result.super_weights] == [(LAYER, ROW, COLS[0])]
    ev = result.evidence_for(result.super_weights[0])
    assert ev.confirmed_by == "alone" and ev.share == pytest.approx(1.0, abs=1e-3)


def test_agreement_survives_adding_a_bos_token():
    model, tok = planted_pair(weights=(2.0, 0.0))
    tok.bos_token = "!"  # prompts get "!" prepended: the trigger moves to position 1
    result = find_super_weights(model, tok, PROMPTS, TINY)
    ev = result.evidence_for(result.super_weights[0])
    assert result.super_weights[0].agreement == 1.0 and ev.bos_agreement == 1.0
