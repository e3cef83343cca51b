"""Tiny randomly initialised models (no download) with a super weight planted where we choose.

The plant mimics what real models do: a trigger token (here '#', at position 0) makes one input channel
of one down-projection fire strongly, and one large down-projection entry turns that into a massive
output (the super activation). The lm_head is given a reason to depend on it, so that zeroing the
planted weight measurably raises the loss and causal confirmation can be tested too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers as T

TRIGGER = "#"
PROMPTS = ["# the cat sat on the mat", "# summer is hot and winter is cold", "# one two three four five"]
PROBE = "# the old river flows past the town"

HIDDEN, INTER, LAYERS, HEADS = 64, 128, 4, 4


def byte_tokenizer() -> T.PreTrainedTokenizerFast:
    """A 256-token byte-level tokenizer built in memory: every byte is one token, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=TRIGGER, pad_token=TRIGGER)


def _base(**kw):
    return dict(vocab_size=256, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=128,
                pad_token_id=0, bos_token_id=1, eos_token_id=2, **kw)  # fmt: skip


CONFIGS = {
    "LlamaForCausalLM": lambda: T.LlamaConfig(**_base()),
    "MistralForCausalLM": lambda: T.MistralConfig(**_base()),
    "Qwen2ForCausalLM": lambda: T.Qwen2Config(**_base()),
    "Qwen3ForCausalLM": lambda: T.Qwen3Config(**_base(head_dim=16)),
    "GemmaForCausalLM": lambda: T.GemmaConfig(**_base(head_dim=16)),
    "Gemma2ForCausalLM": lambda: T.Gemma2Config(**_base(head_dim=16)),
    "Gemma3ForCausalLM": lambda: T.Gemma3TextConfig(**_base(head_dim=16)),
    "Phi3ForCausalLM": lambda: T.Phi3Config(**_base()),
    "OlmoForCausalLM": lambda: T.OlmoConfig(**_base()),
    "Olmo2ForCausalLM": lambda: T.Olmo2Config(**_base()),
    "GPT2LMHeadModel": lambda: T.GPT2Config(vocab_size=256, n_embd=HIDDEN, n_inner=INTER, n_layer=LAYERS, n_head=HEADS,
                                            n_positions=128),
    "GPTNeoXForCausalLM": lambda: T.GPTNeoXConfig(**_base()),
    "OPTForCausalLM": lambda: T.OPTConfig(vocab_size=256, hidden_size=HIDDEN, ffn_dim=INTER, num_hidden_layers=LAYERS,
                                          num_attention_heads=HEADS, word_embed_proj_dim=HIDDEN,
                                          max_position_embeddings=128, pad_token_id=0),
    "FalconForCausalLM": lambda: T.FalconConfig(vocab_size=256, hidden_size=HIDDEN, ffn_hidden_size=INTER,
                                                num_hidden_layers=LAYERS, num_attention_heads=HEADS, pad_token_id=0),
    "GPTJForCausalLM": lambda: T.GPTJConfig(vocab_size=256, n_embd=HIDDEN, n_inner=INTER, n_layer=LAYERS, n_head=HEADS,
                                            rotary_dim=8, n_positions=128),
    "MixtralForCausalLM": lambda: T.MixtralConfig(**_base(num_local_experts=4, num_experts_per_tok=2)),
    "Qwen3MoeForCausalLM": lambda: T.Qwen3MoeConfig(
        **_base(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=INTER, head_dim=16)
    ),
    "Qwen2MoeForCausalLM": lambda: T.Qwen2MoeConfig(**_base(num_experts=4, num_experts_per_tok=2,
                                                            moe_intermediate_size=INTER,
                                                            shared_expert_intermediate_size=INTER)),
}  # fmt: skip

# Where each family's MLP input projections are (path from a decoder layer), and how they are laid out.
UP = {
    "PHI3": [("mlp.gate_up_proj", "fused")],
    "GPT2LMHeadModel": [("mlp.c_fc", "conv1d")],
    "GPTNeoXForCausalLM": [("mlp.dense_h_to_4h", "linear")],
    "OPTForCausalLM": [("fc1", "linear")],
    "FalconForCausalLM": [("mlp.dense_h_to_4h", "linear")],
    "GPTJForCausalLM": [("mlp.fc_in", "linear")],
    "MOE": [("mlp.experts", "experts")],
    "GATED": [("mlp.gate_proj", "linear"), ("mlp.up_proj", "linear")],
    "BloomForCausalLM": [("mlp.dense_h_to_4h", "linear")],  # not in the registry: reached with --down-proj
}


def _up_for(cls: str) -> list[tuple[str, str]]:
    if cls == "Phi3ForCausalLM":
        return UP["PHI3"]
    if cls in ("MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"):
        return UP["MOE"]
    return UP.get(cls, UP["GATED"])


@dataclass
class Plant:
    layer: int
    row: int
    col: int
    expert: int | None = None


def planted(cls: str = "LlamaForCausalLM", where: Plant | None = None):
    """A tiny model of ``cls`` with a super weight planted (default: layer 1, [5, 17]), and its tokenizer."""
    tok = byte_tokenizer()
    model = tiny_model(cls)
    plant(model, tok, where or Plant(layer=1, row=5, col=17))
    return model, tok


def save_planted(path, cls: str = "LlamaForCausalLM", where: Plant | None = None):
    """The same, saved as a Hugging Face folder (safetensors + tokenizer) at ``path``."""
    model, tok = planted(cls, where)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_model(cls: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = CONFIGS[cls]()
    model = T.AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    return model.eval().requires_grad_(False)


def _get(root, path):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _stop_writes_to_direction_0(model: torch.nn.Module) -> None:
    """No layer writes into residual direction 0, so only the trigger token ever carries it."""
    from superweight.model.architectures import decoder_layers

    hidden = model.get_input_embeddings().weight.shape[1]
    for name, p in decoder_layers(model).named_parameters():
        if name.endswith("experts.down_proj"):
            p[:, 0, :] = 0.0
        elif p.dim() == 2 and ("c_" in name.rsplit(".", 2)[-2]) and p.shape[1] == hidden:  # GPT-2 Conv1D (in, out)
            p[:, 0] = 0.0
        elif (p.dim() == 2 and p.shape[0] == hidden) or (p.dim() == 1 and p.shape[0] == hidden and "bias" in name):
            p[0] = 0.0


@torch.no_grad()
def plant(model: torch.nn.Module, tokenizer, plant: Plant, gain: float = 4.0, weight: float = 2.0) -> None:
    """Make input channel ``col`` of layer ``plant.layer`` fire on the trigger token, and plant weight[row, col]."""
    from superweight.model.architectures import decoder_layers, down_projections

    cls = type(model).__name__
    trigger = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(TRIGGER))[0]
    emb = model.get_input_embeddings().weight
    emb *= 1.0 / emb.std()  # ordinary tokens get an O(1) residual stream, as in trained models
    emb[:, 0] = 0.0  # direction 0 of the residual stream now belongs to the trigger alone:
    _stop_writes_to_direction_0(model)
    emb[trigger] = 0.0
    emb[trigger, 0] = 10.0
    layer = decoder_layers(model)[plant.layer]
    c = plant.col
    for path, kind in _up_for(cls):
        mod = _get(layer, path)
        gated = len(_up_for(cls)) > 1 or kind in ("fused", "experts")
        # an ungated MLP fires linearly, so it gets more gain and a threshold (bias) where it has one
        g, threshold = (gain, 0.0) if gated else (2 * gain, -4 * gain)
        if kind == "linear":
            mod.weight[c] = 0.0
            mod.weight[c, 0] = g
            if getattr(mod, "bias", None) is not None:
                mod.bias[c] = threshold
        elif kind == "conv1d":  # GPT-2 stores (in, out)
            mod.weight[:, c] = 0.0
            mod.weight[0, c] = g
            mod.bias[c] = threshold
        elif kind == "fused":  # Phi-3: gate rows first, then up rows
            half = mod.weight.shape[0] // 2
            for r in (c, half + c):
                mod.weight[r] = 0.0
                mod.weight[r, 0] = gain
        elif kind == "experts":
            e, half = plant.expert, mod.gate_up_proj.shape[1] // 2
            for r in (c, half + c):
                mod.gate_up_proj[e, r] = 0.0
                mod.gate_up_proj[e, r, 0] = gain
            router = layer.mlp.gate
            router.weight[e] = 0.0
            router.weight[e, 0] = 20.0  # the trigger token is always routed to expert e
    site = next(s for s in down_projections(model) if s.layer == plant.layer and s.expert == plant.expert)
    site.weight[plant.row] = 0.0  # ordinary tokens write nothing into channel `row`...
    site.weight[plant.row, plant.col] = weight  # ...the trigger writes a massive value
    post_norm = getattr(layer, "post_feedforward_layernorm", None)
    if post_norm is not None:  # post-norm families carry their massive activation in the norm's gain
        post_norm.weight[plant.row] += 50.0
    # Give the output a reason to depend on the super activation: after the final norm, position 0 is
    # dominated by channel `row`; let that direction predict the probe's second token.
    nxt = tokenizer(PROBE).input_ids[1]
    model.get_output_embeddings().weight[nxt, plant.row] = 6.0
