"""Simulated W8A8: per-token INT8 with the super activation held out, SmoothQuant, exact restore."""

from __future__ import annotations

import pytest
import torch
from tiny import PROBE, PROMPTS, Plant, planted

from superweight.detect.detection import find_super_weights
from superweight.detect.result import DetectionConfig
from superweight.errors import QuantizationError
from superweight.quant.methods import select_linears
from superweight.quant.w8a8 import (
    held_channels,
    quantize_int8_per_tensor,
    quantize_int8_per_token,
    smoothing_factors,
    w8a8,
)

PLANT = Plant(layer=1, row=5, col=17)


@pytest.fixture(scope="module")
def tiny():
    model, tok = planted("LlamaForCausalLM", PLANT)
    scan = find_super_weights(model, tok, PROMPTS, DetectionConfig(min_loss_increase=0.02, probe_text=PROBE))
    return model, tok, scan


def test_per_token_int8_holds_the_massive_channel_out() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, generator=g)
    x[0, 7] = 2000.0  # a super activation at token 0
    naive = quantize_int8_per_token(x)
    held = quantize_int8_per_token(x, [7])
    assert held[0, 7] == x[0, 7]
    rest = torch.ones_like(x, dtype=torch.bool)
    rest[:, 7] = False
    # naive: token 0's other channels all round to 0 (step 2000/127 > their size); held out: fine
    assert (naive[0][rest[0]] == 0).all()
    assert (held - x)[rest].abs().max() < 0.05
    assert torch.equal(naive[1:], held[1:].where(rest[1:], naive[1:]))  # other tokens: same scale either way


def test_per_tensor_int8_by_hand() -> None:
    w = torch.tensor([[1.27, -0.5], [0.004, 0.0]])
    q = quantize_int8_per_tensor(w)
    assert torch.allclose(q, torch.tensor([[1.27, -0.5], [0.0, 0.0]]), atol=1e-6)


def test_sa_holds_the_scanned_channels(tiny) -> None:
    model, _, scan = tiny
    assert [(w.layer, w.row, w.col) for w in scan.super_weights] == [(1, 5, 17)]
    linears = select_linears(model)
    held = held_channels(linears, scan, model.config.hidden_size)
    assert held["model.layers.1.mlp.down_proj"] == [17]
    assert held["model.layers.2.self_attn.q_proj"] == [5]


def _loss(model, tok) -> float:
    ids = tok(PROBE, return_tensors="pt").input_ids
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def _quantized_input(model, tok, module: str) -> torch.Tensor:
    """What ``module`` receives at token 0 (after the W8A8 hooks, which run first)."""
    seen = []
    target = dict(model.named_modules())[module]
    handle = target.register_forward_pre_hook(lambda m, args: seen.append(args[0][0, 0].clone()))
    try:
        _loss(model, tok)
    finally:
        handle.remove()
    return seen[0]


def test_w8a8_variants_change_the_model_and_restore_it_exactly(tiny) -> None:
    model, tok, scan = tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    linears = select_linears(model)
    held = held_channels(linears, scan, model.config.hidden_size)
    ids = tok(PROMPTS, return_tensors="pt", padding=True).input_ids
    smoothing = smoothing_factors(model, linears, ids, alpha=0.5)
    # q, k and v read the same tensor, so they share one set of factors (foldable into the norm)
    q, k = smoothing["model.layers.0.self_attn.q_proj"], smoothing["model.layers.0.self_attn.k_proj"]
    assert torch.equal(q, k)
    consumer = "model.layers.2.self_attn.q_proj"  # reads the residual that carries the super activation
    x = _quantized_input(model, tok, consumer)
    base, base_x = _loss(model, tok), torch.cat([x[: PLANT.row], x[PLANT.row + 1 :]])
    losses, errors = {}, {}
    for method in ("naive", "sa", "smoothquant"):
        with w8a8(linears, method, held=held, smoothing=smoothing):
            losses[method] = _loss(model, tok)
            x = _quantized_input(model, tok, consumer)
            others = torch.cat([x[: PLANT.row], x[PLANT.row + 1 :]])
            errors[method] = float((others - base_x).norm() / base_x.norm())
        assert all(torch.equal(model.state_dict()[n], v) for n, v in state.items())
    assert losses["naive"] != base
    # weight rounding upstream dominates both errors in this random tiny model; holding the spike out
    # must still help (the mechanism itself is checked exactly in the per-token test above)
    assert errors["sa"] < errors["naive"]


def test_bad_activation_options(tiny) -> None:
    model, _, _ = tiny
    linears = select_linears(model)
    with pytest.raises(QuantizationError, match="unknown activation method"), w8a8(linears, "fp8"):
        pass
    with pytest.raises(QuantizationError, match="smoothing factors"), w8a8(linears, "smoothquant"):
        pass
    with pytest.raises(QuantizationError, match="alpha"):
        smoothing_factors(model, linears, torch.zeros(1, 4, dtype=torch.long), alpha=1.5)
