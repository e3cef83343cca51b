"""Confirmation is calibrated against a null: large weights without a large input are not super weights."""

from __future__ import annotations

import pytest
from conftest import assert_state_equal
from planted_sets import add_quiet_decoys
from tiny import PROBE, PROMPTS, Plant, byte_tokenizer, plant, tiny_model

from superweight.coordinates import SuperWeight
from superweight.detect.confirm import SetLosses, confirm_set
from superweight.detect.detection import find_super_weights
from superweight.detect.nulls import layer_nulls, matched_positions
from superweight.detect.probe import probe_windows, window_losses
from superweight.detect.result import DetectionConfig
from superweight.model.architectures import down_projections

LAYER, ROW, COL, VALUE = 2, 17, 33, 2.0


@pytest.fixture(scope="module")
def with_decoys():
    """A planted super weight of 2.0, and twelve weights of +-2.0 in the same tensor fed by quiet channels."""
    tok = byte_tokenizer()
    model = tiny_model("LlamaForCausalLM")
    plant(model, tok, Plant(LAYER, ROW, COL), weight=VALUE)
    decoys = add_quiet_decoys(model, LAYER, value=VALUE, count=12)
    return model, tok, decoys


def test_decoys_as_large_as_the_super_weight_are_not_found(with_decoys):
    model, tok, _ = with_decoys
    result = find_super_weights(model, tok, PROMPTS, DetectionConfig(min_loss_increase=0.02, probe_text=PROBE))
    assert [(w.layer, w.row, w.col) for w in result.super_weights + result.unconfirmed] == [(LAYER, ROW, COL)]
    ev = result.evidence_for(result.super_weights[0])
    assert ev.null_ratio > 50 and ev.null_z > 3  # far outside what zeroing a weight of its size does


def test_decoy_judged_directly_is_rejected_by_the_null_not_the_margin(with_decoys):
    """With the absolute margin switched off (0 nats), only the null stands between a decoy and 'confirmed'."""
    model, tok, decoys = with_decoys
    state = {k: v.clone() for k, v in model.state_dict().items()}
    sites = down_projections(model)
    windows = probe_windows(tok, PROBE, model=model)
    cfg = DetectionConfig(min_loss_increase=0.0, probe_text=PROBE)
    for module, row, col in decoys[:4]:
        decoy = SuperWeight(LAYER, module, row, col, VALUE, 0.0, 0.0, [])
        real = SuperWeight(LAYER, module, ROW, COL, VALUE, 0.0, 0.0, [])
        losses = SetLosses(model, lambda: window_losses(model, windows))
        nulls = layer_nulls(losses, sites, [decoy, real], draws=8)
        evidence, _, _ = confirm_set(losses, [decoy, real], cfg, None, nulls)
        assert not decoy.confirmed, (row, col, evidence[0])
        assert evidence[0].null_rejected or evidence[0].effect < 0  # cleared 0 nats, but not the null
        assert real.confirmed and evidence[1].null_ratio > 50
    assert_state_equal(model, state)


def test_null_draws_are_magnitude_matched_and_skip_the_candidates(with_decoys):
    model, _, decoys = with_decoys
    site = next(s for s in down_projections(model) if s.layer == LAYER)
    exclude = {(ROW, COL), (decoys[0][1], decoys[0][2])}
    picks = matched_positions(site, VALUE, 8, exclude, seed=0)
    assert len(set(picks)) == 8 and not set(picks) & exclude
    assert all(VALUE / 2 <= abs(float(site.weight[r, c])) <= 2 * VALUE for r, c in picks)  # the other decoys
    assert picks == matched_positions(site, VALUE, 8, exclude, seed=0)  # seeded
