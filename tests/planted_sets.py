"""Tiny Llamas with *sets* of super weights and decoys planted where we choose (issue 10).

Built on tests/tiny.py: ``plant`` makes input channel ``col`` fire on the trigger token and puts one
large weight at ``[row, col]``. Here a second input channel is made to fire the same way and a second
weight is put in the *same row*, so that one super activation is fed by two weights. The final norm
then makes half of the activation look almost like the whole: each weight alone costs little, both
together cost a lot (the case the paper's Table 2 lists for Llama-13B/30B, OLMo-7B, Phi-3).
"""

from __future__ import annotations

import torch
from tiny import Plant, byte_tokenizer, plant, tiny_model

from superweight.model.architectures import decoder_layers, down_projections

LAYER, ROW, COLS = 2, 17, (33, 90)


@torch.no_grad()
def fire(model: torch.nn.Module, layer: int, col: int, gain: float = 4.0) -> None:
    """Make intermediate channel ``col`` of Llama layer ``layer`` fire on the trigger (residual direction 0)."""
    mlp = decoder_layers(model)[layer].mlp
    for proj in (mlp.gate_proj, mlp.up_proj):
        proj.weight[col] = 0.0
        proj.weight[col, 0] = gain


def site(model: torch.nn.Module, layer: int):
    return next(s for s in down_projections(model) if s.layer == layer)


@torch.no_grad()
def planted_pair(weights: tuple[float, float] = (1.1, 0.9), seed: int = 0):
    """A tiny Llama whose super activation (layer 2, row 17) is fed by two weights, columns 33 and 90."""
    tok = byte_tokenizer()
    model = tiny_model("LlamaForCausalLM", seed=seed)
    plant(model, tok, Plant(LAYER, ROW, COLS[0]), weight=weights[0])
    fire(model, LAYER, COLS[1])
    site(model, LAYER).weight[ROW, COLS[1]] = weights[1]
    return model, tok


@torch.no_grad()
def add_quiet_decoys(model: torch.nn.Module, layer: int, value: float, count: int, seed: int = 1) -> list[tuple]:
    """Put ``count`` weights of size ``value`` in layer ``layer``'s down-projection, in rows and columns
    that stay quiet: large weights with no large input behind them. Returns their (module, row, col)."""
    g = torch.Generator().manual_seed(seed)
    s = site(model, layer)
    rows, cols = s.weight.shape
    out = []
    while len(out) < count:
        r, c = int(torch.randint(1, rows, (1,), generator=g)), int(torch.randint(0, cols, (1,), generator=g))
        if r in (ROW,) or c in COLS or any((r, c) == (o[1], o[2]) for o in out):
            continue
        s.weight[r, c] = value if len(out) % 2 == 0 else -value
        out.append((s.label, r, c))
    return out
