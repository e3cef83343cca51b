"""Rank super-weight candidates from the tensors alone: no model built, no forward pass, no data.

A super weight turns one input channel ``col`` of a down-projection, which fires hard on a few
tokens, into a massive output in channel ``row``. What the weights can say about that:

* ``|W_down[row, col]|``: the entry itself is an outlier of its matrix;
* ``||gamma * up[col]|| * ||gamma * gate[col]||``: how hard channel ``col`` can fire, from the rows
  of the up (and gate) projections that feed it, with the gain of the norm in front of the MLP folded
  in (``gamma``; Gemma's ``1 + w``), since that gain scales every input of those rows;
* post-norm families (Gemma 2/3, OLMo 2): ``|post_gain[row]|`` of the norm after the MLP.

The product is divided by its layer's median, so layers of different scale compare, and the
coordinates are ranked. Tensors are read one at a time (:mod:`superweight.model.shards`) and scored
in row blocks, so memory stays at one stored matrix plus a block. It is a fast pre-filter and an
offline audit: activation detection (``scan``) remains the judge, and every candidate here says
``method: "weights-only"``. Mixture-of-experts tensors are not scored.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from superweight.errors import SuperweightError, UnsupportedArchitectureError
from superweight.results import build

if TYPE_CHECKING:
    import torch

    from superweight.coordinates import SuperWeight
    from superweight.model.shards import ShardReader

METHOD = "weights-only"
# down-projection -> the projections feeding its input channels (Conv1D: stored transposed)
FEEDS = {
    "mlp.down_proj": (("mlp.gate_proj", "mlp.up_proj"), ("mlp.gate_up_proj",)),
    "fc2": (("fc1",),),
    "mlp.dense_4h_to_h": (("mlp.dense_h_to_4h",),),
    "mlp.fc_out": (("mlp.fc_in",),),
    "mlp.c_proj": (("mlp.c_fc",),),
}
PRE_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2", "final_layer_norm")
POST_NORM = "post_feedforward_layernorm"
_DOWN = re.compile(r"^(?P<prefix>.*?)(?P<layer>\d+)\.(?P<down>" + "|".join(re.escape(k) for k in FEEDS) + r")\.weight$")
BLOCK_ROWS = 512


@dataclass
class WeightCandidate:
    layer: int
    module: str
    row: int
    col: int
    value: float
    score: float  # the product, divided by its layer's median
    method: str = METHOD


@dataclass
class WeightsOnlyResult:
    model: str
    format: str
    candidates: list[WeightCandidate]  # best first
    layers: int
    bytes_read: int
    timings: dict[str, float] = field(default_factory=dict)
    method: str = METHOD
    score: str = "|W_down[row,col]| * ||gamma*up[col]|| * ||gamma*gate[col]|| * |post_gain[row]|, / layer median"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "method": self.method,
            "score": self.score,
            "format": self.format,
            "layers": self.layers,
            "bytes_read": self.bytes_read,
            "timings": dict(self.timings),
            "candidates": [asdict(c) for c in self.candidates],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightsOnlyResult:
        return cls(
            model=data["model"],
            format=data["format"],
            candidates=[build(WeightCandidate, c) for c in data["candidates"]],
            layers=int(data["layers"]),
            bytes_read=int(data["bytes_read"]),
            timings=dict(data.get("timings", {})),
        )

    def rank_of(self, module: str, row: int, col: int) -> int | None:
        """1-based rank of a coordinate in the list, None when it is not in it."""
        for i, c in enumerate(self.candidates):
            if (c.module, c.row, c.col) == (module, row, col):
                return i + 1
        return None


def _norm_gain(reader: ShardReader, prefix: str, names: tuple[str, ...]) -> torch.Tensor | None:
    import torch

    model_type = str(reader.config.get("model_type", ""))
    for name in names:
        if name == "post_attention_layernorm" and model_type.startswith("olmo2"):
            continue  # OLMo 2 normalises the attention output there, not the MLP's input
        full = f"{prefix}{name}.weight"
        if reader.has(full):
            gain = reader.get(full, torch.float32)
            # Gemma scales by (1 + w); llama.cpp stores Gemma's norms with the 1 already added
            if model_type.startswith("gemma") and reader.format == "safetensors":
                gain = gain + 1.0
            return gain.abs()
    return None


def _feed_norms(reader: ShardReader, prefix: str, down: str, gain: torch.Tensor | None) -> torch.Tensor:
    """Per input channel of the down-projection: product of the norms of the rows that feed it."""
    import torch

    for group in FEEDS[down]:
        names = [f"{prefix}{n}.weight" for n in group]
        if not all(reader.has(n) for n in names):
            continue
        out: torch.Tensor | None = None
        for name in names:
            w = reader.get(name)
            if down == "mlp.c_proj":
                w = w.T  # Conv1D stores (in, out)
            norms = []
            for start in range(0, w.shape[0], BLOCK_ROWS):
                block = w[start : start + BLOCK_ROWS].float()
                if gain is not None and block.shape[1] == gain.shape[0]:
                    block = block * gain
                norms.append(block.norm(dim=1))
            del w
            n = torch.cat(norms)
            if name.endswith("gate_up_proj.weight"):  # fused: gate rows, then up rows
                n = n[: n.shape[0] // 2] * n[n.shape[0] // 2 :]
            out = n if out is None else out * n
        if out is not None:
            return out
    raise UnsupportedArchitectureError(f"no up/gate projection found next to {prefix}{down}")


def _score_layer(reader: ShardReader, name: str, prefix: str, down: str, per_layer: int):
    import torch

    gain = _norm_gain(reader, prefix, PRE_NORMS)
    feed = _feed_norms(reader, prefix, down, gain)
    post = _norm_gain(reader, prefix, (POST_NORM,))
    w = reader.get(name)
    if down == "mlp.c_proj":
        w = w.T
    if w.shape[1] != feed.shape[0]:
        raise UnsupportedArchitectureError(f"{name} has {w.shape[1]} inputs but its feeding rows give {feed.shape[0]}")
    values, rows, cols, sample = [], [], [], []
    for start in range(0, w.shape[0], BLOCK_ROWS):
        block = w[start : start + BLOCK_ROWS].float().abs() * feed
        if post is not None:
            block = block * post[start : start + BLOCK_ROWS, None]
        flat = block.reshape(-1)
        sample.append(flat[::97])
        v, i = torch.topk(flat, min(per_layer, flat.numel()))
        values.append(v)
        rows.append(i // block.shape[1] + start)
        cols.append(i % block.shape[1])
    values_t, rows_t, cols_t = torch.cat(values), torch.cat(rows), torch.cat(cols)
    median = float(torch.cat(sample).median())
    top = torch.topk(values_t, min(per_layer, values_t.numel())).indices
    out = []
    for j in top.tolist():
        r, c = int(rows_t[j]), int(cols_t[j])
        out.append((float(values_t[j]) / max(median, 1e-30), r, c, float(w[r, c])))
    return out


def weight_scan(spec: str | None, top_k: int = 100, per_layer: int = 16) -> WeightsOnlyResult:
    """Rank down-projection coordinates of ``spec``'s files by the weight-only score (best first)."""
    from superweight.model.shards import open_shards
    from superweight.progress import track

    if top_k < 1:
        raise SuperweightError(f"must be at least 1 (got {top_k})", option="top_k")
    start = time.perf_counter()
    reader = open_shards(spec)
    downs = []
    for name in reader.names():
        match = _DOWN.match(name)
        if match:
            downs.append((int(match["layer"]), name, f"{match['prefix']}{match['layer']}.", match["down"]))
    if not downs:
        raise UnsupportedArchitectureError(
            f"{spec or 'the default model'} has no dense down-projection tensors this weight-only score knows "
            f"({', '.join(FEEDS)}); mixture-of-experts tensors are not scored"
        )
    downs.sort()
    found: list[WeightCandidate] = []
    for layer, name, prefix, down in track(downs, "weight-only scoring"):
        module = name[: -len(".weight")]
        for score, row, col, value in _score_layer(reader, name, prefix, down, per_layer):
            found.append(WeightCandidate(layer, module, row, col, value, score))
    found.sort(key=lambda c: -c.score)
    return WeightsOnlyResult(
        model=str(spec),
        format=reader.format,
        candidates=found[:top_k],
        layers=len(downs),
        bytes_read=reader.bytes_read,
        timings={"scan_s": time.perf_counter() - start},
    )


@dataclass
class WeightsOnlyCheck:
    """How the weight-only list ranks the super weights activation detection confirmed."""

    model: str
    ranks: list[dict[str, Any]]  # one per confirmed super weight: layer, module, row, col, rank (None: not listed)
    precision_at: dict[int, float]  # share of the top k that are confirmed super weights
    recall_at: dict[int, float]  # share of the confirmed super weights in the top k

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_with_scan(
    result: WeightsOnlyResult, confirmed: list[SuperWeight], ks: tuple[int, ...] = (1, 3, 10, 50)
) -> WeightsOnlyCheck:
    """Rank of each confirmed super weight in ``result``, and precision / recall at each k."""
    truth = {(w.module, w.row, w.col) for w in confirmed}
    ranks = [
        {"layer": w.layer, "module": w.module, "row": w.row, "col": w.col, "rank": result.rank_of(*w.coordinate)}
        for w in confirmed
    ]
    listed = [(c.module, c.row, c.col) for c in result.candidates]
    precision, recall = {}, {}
    for k in ks:
        hits = len(truth & set(listed[:k]))
        precision[k] = hits / k
        recall[k] = hits / len(truth) if truth else float("nan")
    return WeightsOnlyCheck(result.model, ranks, precision, recall)
