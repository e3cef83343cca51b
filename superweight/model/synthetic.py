"""Write a Llama-shaped checkpoint of any size with planted super weights, one shard per layer.

For benchmarks and memory tests at real sizes (7B, 13B) on machines that cannot hold such a model:
the weights are random (``N(0, std)``, windows of one random pool), never all in memory at once.
Each plant mimics a real super weight: a trigger byte (``#`` for the first plant, ``$`` for the
second, ...) at the start of the text owns one residual direction that no layer writes into; in the
plant's layer the up and gate rows of input channel ``col`` read only that direction, so the channel
fires on the trigger alone, and ``down_proj[row, col]`` turns it into a massive output. The head is
given a reason to need it, so zeroing the plant raises the loss (causal confirmation works).
Decoys are large down-projection entries whose input channel never fires: they must not be found.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRIGGERS = "#$%&"


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int = 32000

    def parameters(self) -> int:
        per_layer = 4 * self.hidden**2 + 3 * self.hidden * self.intermediate + 2 * self.hidden
        return self.layers * per_layer + 2 * self.vocab * self.hidden + self.hidden


LLAMA2_7B = Shape(4096, 11008, 32, 32)
LLAMA2_13B = Shape(5120, 13824, 40, 40)


@dataclass(frozen=True)
class Planted:
    layer: int
    row: int
    col: int
    value: float = 2.0


@dataclass
class SyntheticModel:
    path: Path
    shape: Shape
    plants: list[Planted]
    decoys: list[Planted] = field(default_factory=list)
    bytes_written: int = 0

    def prompts(self) -> list[str]:
        """Texts starting with every trigger, so that each plant fires."""
        lead = TRIGGERS[: len(self.plants)]
        return [f"{lead} the cat sat on the mat", f"{lead} summer is hot and winter is cold"]

    def probe(self) -> str:
        return f"{TRIGGERS[: len(self.plants)]} the old river"


def _tokenizer() -> Any:
    """A 256-token byte-level tokenizer: every byte is one token (same as the tests' tiny models)."""
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="\n", pad_token="\n")


def write_planted(
    path: str | Path,
    shape: Shape,
    plants: list[Planted],
    decoys: list[Planted] = (),
    dtype: str = "bfloat16",
    std: float = 0.02,
    seed: int = 0,
) -> SyntheticModel:
    """Write the checkpoint (config, tokenizer, one safetensors shard per layer) into ``path``."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from superweight.errors import SuperweightError

    if len(plants) > len(TRIGGERS) or not plants:
        raise SuperweightError(f"between 1 and {len(TRIGGERS)} plants (got {len(plants)})", option="plants")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    torch_dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    tok = _tokenizer()
    directions = list(range(len(plants)))  # residual direction d belongs to trigger d
    model = SyntheticModel(out, shape, list(plants), list(decoys))
    weight_map: dict[str, str] = {}
    h, inter = shape.hidden, shape.intermediate

    # one pool of random values, windows of it at random offsets: writing is then as fast as the disk
    pool = (torch.randn(1 << 26, generator=gen) * std).to(torch_dtype)

    def rand(*size: int) -> torch.Tensor:
        n, parts = math.prod(size), []
        while n > 0:
            take = min(n, pool.numel() // 2)
            start = int(torch.randint(0, pool.numel() - take + 1, (1,), generator=gen))
            parts.append(pool[start : start + take])
            n -= take
        return torch.cat(parts).reshape(size)  # a copy: plants never touch the pool

    def save(tensors: dict[str, torch.Tensor], name: str) -> None:
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        for key, t in tensors.items():
            weight_map[key] = name
            model.bytes_written += t.numel() * t.element_size()

    emb = rand(shape.vocab, h) * (1 / std)
    head = rand(shape.vocab, h)
    emb[:, directions] = 0
    probe_ids = tok(model.probe()).input_ids
    for d, plant in enumerate(plants):
        trigger = tok.convert_tokens_to_ids(TRIGGERS[d])
        emb[trigger] = 0
        emb[trigger, d] = 10.0
        head[probe_ids[d + 1], plant.row] = 6.0  # the trigger's position predicts the next probe token through it
    norm = torch.ones(h, dtype=torch_dtype)
    save({"model.embed_tokens.weight": emb, "lm_head.weight": head, "model.norm.weight": norm}, "model-emb.safetensors")
    del emb, head
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        t = {p + f"self_attn.{n}_proj.weight": rand(h, h) for n in ("q", "k", "v", "o")}
        t[p + "mlp.gate_proj.weight"] = rand(inter, h)
        t[p + "mlp.up_proj.weight"] = rand(inter, h)
        t[p + "mlp.down_proj.weight"] = rand(h, inter)
        t[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch_dtype)
        t[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch_dtype)
        for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            t[p + name][directions] = 0  # nothing writes into a trigger's direction
        for d, plant in enumerate(plants):
            if plant.layer == i:
                for name in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                    t[p + name][plant.col] = 0
                    t[p + name][plant.col, d] = 4.0
                t[p + "mlp.down_proj.weight"][plant.row] = 0
                t[p + "mlp.down_proj.weight"][plant.row, plant.col] = plant.value
        for decoy in decoys:
            if decoy.layer == i:
                t[p + "mlp.down_proj.weight"][decoy.row, decoy.col] = decoy.value
        save(t, f"model-layer-{i:03d}.safetensors")
        del t
    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=h, intermediate_size=inter,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.heads, max_position_embeddings=4096, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, dtype=dtype)  # fmt: skip
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(out)
    tok.save_pretrained(out)
    index = {"metadata": {"total_size": model.bytes_written}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return model
