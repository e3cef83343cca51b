"""Small Llama-architecture models trained from scratch, and the architectural regularizer.

A byte-level tokenizer (256 tokens, no merges, built in memory) keeps the embedding small, so a
model of a few million parameters trains on two CPU cores in minutes. ``single_scale`` replaces every
RMSNorm's per-channel gain with one scalar: Outlier-Safe Pre-Training (Park et al. 2025) calls this
single-scale RMSNorm, and argues that per-channel gains are what lets a few channels grow massive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


def byte_tokenizer() -> Any:
    """A 256-token byte-level tokenizer: every byte one token, so any text is covered."""
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    newline = "\u010a"  # byte 10 (a newline) as ByteLevel spells it: a token of the vocabulary, not an added one
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=newline, pad_token=newline)


def _single_scale_norm_class() -> type:
    import torch

    class SingleScaleRMSNorm(torch.nn.Module):
        """RMSNorm with one learned gain for all channels (OSP's SSNorm)."""

        def __init__(self, eps: float) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))
            self.variance_epsilon = eps

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            dtype = x.dtype
            x = x.float()
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
            return self.weight * x.to(dtype)

    return SingleScaleRMSNorm


def single_scale_norms(model: nn.Module) -> int:
    """Replace every RMSNorm of ``model`` by a single-scale one (in place); how many were replaced."""
    norm = _single_scale_norm_class()
    targets = [(name, m) for name, m in model.named_modules() if type(m).__name__.endswith("RMSNorm")]
    for name, module in targets:
        path, _, child = name.rpartition(".")
        parent = model.get_submodule(path) if path else model
        setattr(parent, child, norm(getattr(module, "variance_epsilon", 1e-6)))
    return len(targets)


def tiny_llama(hidden: int, layers: int, heads: int, intermediate: int, context: int, seed: int) -> nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` over the byte vocabulary (seeded)."""
    import torch
    import transformers as T

    config = T.LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=intermediate,
                           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                           max_position_embeddings=context, tie_word_embeddings=False,
                           pad_token_id=198, bos_token_id=198, eos_token_id=198)  # fmt: skip
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    return model.eval()
