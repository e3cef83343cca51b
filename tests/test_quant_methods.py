"""Methods around super weights, on a tiny Llama with a planted super weight (no download)."""

from __future__ import annotations

import pytest
import torch
from tiny import PROBE, PROMPTS, Plant, planted

from superweight.errors import QuantizationError
from superweight.model.architectures import down_projections
from superweight.quant.methods import (
    Protection,
    WeightSnapshot,
    apply_quantization,
    clip_search,
    collect_inputs,
    exclusion_mask,
    hqq_groups,
    hqq_quantize,
    parse_method,
    quantize_tensor,
    select_linears,
)
from superweight.quant.rtn import QuantConfig, dequantize, quantize

PLANT = Plant(layer=1, row=5, col=17)


@pytest.fixture(scope="module")
def tiny():
    model, tok = planted("LlamaForCausalLM", PLANT)
    site = next(s for s in down_projections(model) if s.layer == PLANT.layer)
    return model, tok, site


def _loss(model, tok) -> float:
    ids = tok(PROBE, return_tensors="pt").input_ids
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def _protection(site) -> Protection:
    return Protection(weights={site.name: [(PLANT.row, PLANT.col)]}, rows={site.name: [PLANT.row]})


def test_sw_keeps_the_planted_super_weight_exactly_and_naive_large_blocks_do_not(tiny) -> None:
    _, _, site = tiny
    w = site.weight.detach().clone()
    planted = w[PLANT.row, PLANT.col].item()
    others = torch.ones_like(w, dtype=torch.bool)
    others[PLANT.row, PLANT.col] = False
    cfg = QuantConfig(3, "tensor")
    sw, _ = quantize_tensor(site.name, w, parse_method("sw"), cfg, _protection(site))
    naive, result = quantize_tensor(site.name, w, parse_method("naive"), cfg, _protection(site))
    assert sw[PLANT.row, PLANT.col].item() == planted
    assert naive[PLANT.row, PLANT.col].item() != planted
    # the super weight stretches the naive range: the other weights collapse onto one or two levels
    levels = result.codes[others].unique(return_counts=True)[1]
    assert levels.max().item() / others.sum().item() > 0.9
    err_sw = (sw - w)[others].pow(2).sum()
    err_naive = (naive - w)[others].pow(2).sum()
    assert err_sw * 20 < err_naive
    # at a small block the damage is confined to the super weight's own block
    small, _ = quantize_tensor(site.name, w, parse_method("naive"), QuantConfig(3, 32), _protection(site))
    assert (small - w)[others].pow(2).sum() < err_naive / 5


def test_model_loss_and_bit_exact_restore(tiny) -> None:
    model, tok, site = tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    base = _loss(model, tok)
    linears = select_linears(model, "down_proj")
    losses = {}
    with WeightSnapshot(linears) as snap:
        for name in ("naive", "sw"):
            apply_quantization(snap, parse_method(name), QuantConfig(3, "tensor"), _protection(site))
            losses[name] = _loss(model, tok)
            snap.restore()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert abs(losses["sw"] - base) < abs(losses["naive"] - base)


def test_row_and_sparse_masks(tiny) -> None:
    _, _, site = tiny
    w = site.weight.detach()
    coords = [(PLANT.row, PLANT.col)]
    row = exclusion_mask(w, parse_method("row"), coords, [PLANT.row])
    assert row[PLANT.row].all() and row.sum().item() == w.shape[1]
    sparse = exclusion_mask(w, parse_method("sparse:0.01"), coords, [])
    k = -(-w.numel() // 100)
    assert sparse[PLANT.row, PLANT.col] and sparse.sum().item() in (k, k + 1)
    kept = w.abs()[sparse]
    assert kept.min() >= w.abs()[~sparse].max()
    assert exclusion_mask(w, parse_method("naive"), coords, [PLANT.row]) is None


def test_sparse_bits_per_weight_charges_values_and_indices(tiny) -> None:
    model, _, site = tiny
    linears = select_linears(model, "down_proj")
    with WeightSnapshot(linears) as snap:
        naive = apply_quantization(snap, parse_method("naive"), QuantConfig(4, "channel"))
        sparse = apply_quantization(snap, parse_method("sparse:0.01"), QuantConfig(4, "channel"), _protection(site))
    n = naive.bit_count.weights
    held = sum(-(-linear.weight.numel() // 100) for _, linear in linears)
    extra = sparse.bit_count.total - naive.bit_count.total
    assert extra in range(held * 64, (held + 1) * 64 + 1)  # fp32 value + int32 index each
    assert sparse.bits_per_weight == pytest.approx(naive.bits_per_weight + extra / n)


def test_clip_search_is_never_worse_than_no_clipping(tiny) -> None:
    model, tok, site = tiny
    linears = select_linears(model, "down_proj")
    ids = tok(PROMPTS, return_tensors="pt", padding=True).input_ids
    inputs = collect_inputs(model, linears, ids, max_rows=64)[site.name]
    assert inputs.shape == (64, site.weight.shape[1])
    w = site.weight.detach().clone()
    exclude = exclusion_mask(w, parse_method("sw"), [(PLANT.row, PLANT.col)], [])
    z, approx, _, _ = clip_search(w, QuantConfig(3, "channel"), exclude, inputs)
    sw, _ = quantize_tensor(site.name, w, parse_method("sw"), QuantConfig(3, "channel"), _protection(site))

    def err(a):
        return (inputs @ (a - w).T).pow(2).sum()

    assert err(approx) <= err(sw) + 1e-9
    assert approx[PLANT.row, PLANT.col] == w[PLANT.row, PLANT.col]
    assert z > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hqq_reconstructs_a_tiny_tensor_better_than_rtn(seed: int) -> None:
    """HQQ's solver moves each group's zero point to cut the reconstruction error min-max RTN leaves."""
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(seed))
    config = QuantConfig(3, 32)
    codes, meta = hqq_quantize(w, config)
    hqq = dequantize(codes, meta)
    rtn = dequantize(*quantize(w, config))
    assert int(codes.max()) <= 7 and meta.groups == 16 * 2  # the same stored form: 3-bit codes, one scale per group
    assert (hqq - w).abs().mean() < 0.97 * (rtn - w).abs().mean()
    assert (hqq - w).pow(2).mean() < (rtn - w).pow(2).mean()
    q, scale, offset = hqq_groups(w.reshape(-1, 32), 3)  # dequantize is exactly scale * q + offset
    assert torch.allclose(hqq.reshape(-1, 32), (scale.half().float()[:, None] * q + offset.half().float()[:, None]))


def test_hqq_library_baseline_with_and_without_protection(tiny) -> None:
    pytest.importorskip("torchao")
    _, _, site = tiny
    w = site.weight.detach().clone()
    plain, res = quantize_tensor(site.name, w, parse_method("hqq"), QuantConfig(4, 32), _protection(site))
    held, _ = quantize_tensor(site.name, w, parse_method("hqq+sw"), QuantConfig(4, 32), _protection(site))
    assert held[PLANT.row, PLANT.col] == w[PLANT.row, PLANT.col]
    assert res.meta.groups == w.shape[0] * w.shape[1] // 32
    rtn, _ = quantize_tensor(site.name, w, parse_method("naive"), QuantConfig(4, 32), _protection(site))
    # HQQ optimises the same storage format: it must not reconstruct worse than RTN by much
    assert (plain - w).abs().mean() <= (rtn - w).abs().mean() * 1.1


@pytest.mark.parametrize(
    ("text", "message"),
    [("sparse", "needs a fraction"), ("sparse:0.7", "0 < F < 0.5"), ("gptq", "unknown method")],
)
def test_bad_methods_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(QuantizationError, match=message):
        parse_method(text)


def test_hqq_needs_asym_and_modules_must_match(tiny) -> None:
    model, _, site = tiny
    with pytest.raises(QuantizationError, match="asym"):
        quantize_tensor(site.name, site.weight, parse_method("hqq"), QuantConfig(4, 32, "sym"))
    with pytest.raises(QuantizationError, match="matched no decoder linear"):
        select_linears(model, "*.nothing")


def test_block_longer_than_a_row_fails_before_any_weight_changes(tiny) -> None:
    model, _, _ = tiny
    linears = select_linears(model)
    before = [m.weight.clone() for _, m in linears]
    with WeightSnapshot(linears) as snap, pytest.raises(QuantizationError, match="longer than a row"):
        apply_quantization(snap, parse_method("naive"), QuantConfig(4, 256))
    assert all(torch.equal(b, m.weight) for b, (_, m) in zip(before, linears, strict=True))


@pytest.mark.slow
def test_smollm2_per_tensor_rtn_needs_more_than_the_super_weight(smollm2, smollm2_scan, data_dir) -> None:
    """Real model, 256 test tokens: per-tensor 4-bit naive is ruined; holding out the super weight alone
    does not rescue it, the top 0.5% outliers do; weights come back bit-exactly."""
    from conftest import assert_state_equal

    from superweight.measure.corpus import load_text, tokenize_corpus
    from superweight.measure.perplexity import perplexity_on_ids

    model = smollm2.model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    windows = tokenize_corpus(smollm2.tokenizer, load_text("wikitext2", data_dir), seq_len=256, max_tokens=256)
    protection = Protection.from_scan(model, smollm2_scan)
    assert protection.weights, "the scan found no super weight to protect"
    linears = select_linears(model)
    ppl = {"fp": perplexity_on_ids(model, windows).perplexity}
    with WeightSnapshot(linears) as snap:
        for name in ("naive", "sw", "sparse:0.005"):
            apply_quantization(snap, parse_method(name), QuantConfig(4, "tensor"), protection)
            ppl[name] = perplexity_on_ids(model, windows).perplexity
            if name == "sw":
                (module, coords), *_ = protection.weights.items()
                r, c = coords[0]
                assert dict(linears)[module].weight[r, c] == snap.saved[module][r, c]
            snap.restore()
    assert_state_equal(model, state)
    assert ppl["naive"] > 10 * ppl["fp"]
    assert ppl["sw"] > 5 * ppl["fp"]  # one held-out weight is not enough in this model
    assert ppl["sparse:0.005"] < ppl["naive"] / 10
