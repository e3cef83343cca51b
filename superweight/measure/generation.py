"""Greedy continuations: the plainest view of what an edit does to a model's behaviour."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


def greedy(model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int = 8) -> str:
    """The model's greedy (argmax) continuation of ``prompt``, decoded, without the prompt."""
    import torch

    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").to(device)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
