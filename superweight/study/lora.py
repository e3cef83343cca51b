"""LoRA adapters on every decoder Linear, with peft's own LoRA layer, put in and taken out in place.

``peft.get_peft_model`` cannot be used here: peft 0.21 refuses to dispatch any layer when the
installed torchao is older than 0.16 (superweight pins torchao 0.13 for quantization). The layer
class itself (``peft.tuners.lora.Linear``) has no such check, so each Linear is wrapped with it
directly; ``adapters_removed`` puts the original modules back, so the model is as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

ADAPTER = "default"


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, child = name.rpartition(".")
    return (model.get_submodule(path) if path else model), child


@contextmanager
def lora_adapters(model: nn.Module, rank: int, alpha: float, seed: int) -> Iterator[list[str]]:
    """Freeze the model and wrap each decoder Linear with a seeded LoRA adapter inside the block."""
    import torch
    from peft import LoraConfig
    from peft.tuners.lora import Linear as LoraLinear

    from superweight.model.architectures import linear_layers

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0)
    model.requires_grad_(False)
    targets = [(name, module) for name, module in linear_layers(model) if type(module).__name__ == "Linear"]
    torch.manual_seed(seed)
    wrapped: list[tuple[str, nn.Module]] = []
    try:
        for name, module in targets:
            parent, child = _parent(model, name)
            setattr(parent, child, LoraLinear(module, ADAPTER, config, r=rank, lora_alpha=alpha))
            wrapped.append((name, module))
        yield [name for name, _ in wrapped]
    finally:
        for name, module in wrapped:
            parent, child = _parent(model, name)
            setattr(parent, child, module)
