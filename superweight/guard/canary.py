"""A behavioural canary: what one fixed prompt does inside the model, compared within tolerances.

Hashes cannot match once a model is converted (another dtype, re-quantized, another file format), but
its behaviour should barely move. The canary records, for one fixed prompt, the super activation's
magnitude after every layer (the quantity a damaged super weight destroys first) and the top-k
next-token logits. A later run passes when every layer's magnitude is within a relative tolerance (in
log space, so small layers are not judged by noise), the top-1 token is the same, the top-k sets
mostly overlap, and the shared logits are within an absolute tolerance.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from superweight.errors import SuperweightError

if TYPE_CHECKING:
    from torch import nn

CANARY_PROMPT = "The quick brown fox jumps over the lazy dog. Summer is hot. Winter is"


@dataclass
class CanaryTolerance:
    """How far a converted model may drift before the canary fails (defaults pass bf16/Q8 copies)."""

    activation_rel: float = 0.25  # per-layer super-activation magnitude, relative (|log ratio| <= log(1+x))
    activation_floor: float = 0.02  # ...of magnitudes floored at this fraction of the largest one
    logit_abs: float = 1.5  # shared top-k logits, absolute difference
    min_topk_overlap: float = 0.6  # share of the reference top-k ids still in the top-k

    def __post_init__(self) -> None:
        if self.activation_rel <= 0 or self.logit_abs <= 0 or not 0 < self.min_topk_overlap <= 1:
            raise ValueError("canary tolerances must be positive and the overlap in (0, 1]")


@dataclass
class Canary:
    """One canary run: enough to compare another copy of the model against."""

    prompt: str
    channel: int | None  # the super activation's hidden channel (None: max over all channels)
    layer_magnitudes: list[float]  # max |hidden[token, channel]| after each decoder layer
    top_ids: list[int]
    top_logits: list[float]
    digest: str  # sha256 of the top-k ids and logits rounded to 0.01: equal digests need no tolerance
    dtype: str = "float32"
    tolerance: CanaryTolerance = field(default_factory=CanaryTolerance)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Canary:
        try:
            tol = CanaryTolerance(**data.get("tolerance", {}))
            names = {f.name for f in fields(cls)} - {"tolerance"}
            return cls(**{k: v for k, v in data.items() if k in names}, tolerance=tol)
        except (TypeError, ValueError) as exc:
            raise SuperweightError(f"the manifest's canary is malformed ({exc}); re-create the manifest") from None


@dataclass
class CanaryCheck:
    passed: bool
    reasons: list[str]  # why it failed (empty when it passed)
    max_activation_change: float  # largest relative change of a layer's magnitude
    max_logit_change: float
    topk_overlap: float
    top1_same: bool
    same_digest: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _digest(ids: list[int], logits: list[float]) -> str:
    payload = json.dumps([ids, [round(v, 2) for v in logits]])
    return hashlib.sha256(payload.encode()).hexdigest()


def run_canary(
    model: nn.Module,
    tokenizer: Any,
    channel: int | None = None,
    *,
    prompt: str = CANARY_PROMPT,
    top_k: int = 10,
    tolerance: CanaryTolerance | None = None,
) -> Canary:
    """Run the fixed prompt once and record per-layer magnitudes and the top-k next-token logits."""
    import torch

    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    magnitudes = []
    for hidden in out.hidden_states[1:]:  # [0] is the embedding output
        h = hidden[0].float()
        h = h[:, channel] if channel is not None else h
        magnitudes.append(float(h.abs().max()))
    logits = out.logits[0, -1].float()
    values, top = torch.topk(logits, top_k)
    top_ids, top_logits = [int(i) for i in top], [float(v) for v in values]
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return Canary(prompt, channel, magnitudes, top_ids, top_logits, _digest(top_ids, top_logits), dtype,
                  tolerance or CanaryTolerance())  # fmt: skip


def compare_canary(reference: Canary, current: Canary) -> CanaryCheck:
    """Does ``current`` behave like ``reference``, within the reference's tolerances?"""
    tol = reference.tolerance
    reasons = []
    if reference.prompt != current.prompt or reference.channel != current.channel:
        raise SuperweightError("the canaries were run on different prompts or channels; re-run with the manifest's")
    ref_m, cur_m = reference.layer_magnitudes, current.layer_magnitudes
    if len(ref_m) != len(cur_m):
        reasons.append(f"the model has {len(cur_m)} layers, the manifest {len(ref_m)}")
        worst = math.inf
    else:
        floor = tol.activation_floor * max(max(ref_m), 1e-12)
        changes = [abs(math.log(max(c, floor) / max(r, floor))) if math.isfinite(c) else math.inf
                   for r, c in zip(ref_m, cur_m, strict=True)]  # fmt: skip
        worst_layer = max(range(len(changes)), key=changes.__getitem__)
        worst = math.expm1(changes[worst_layer]) if math.isfinite(changes[worst_layer]) else math.inf
        if changes[worst_layer] > math.log1p(tol.activation_rel):
            reasons.append(
                f"layer {worst_layer}'s activation magnitude moved {ref_m[worst_layer]:.4g} -> "
                f"{cur_m[worst_layer]:.4g} (tolerance {tol.activation_rel:.0%})"
            )
    ref_top = dict(zip(reference.top_ids, reference.top_logits, strict=True))
    cur_top = dict(zip(current.top_ids, current.top_logits, strict=True))
    shared = [i for i in ref_top if i in cur_top]
    overlap = len(shared) / len(ref_top)
    logit_change = max((abs(ref_top[i] - cur_top[i]) for i in shared), default=math.inf)
    if not all(math.isfinite(v) for v in current.top_logits):
        logit_change = math.inf
    top1 = reference.top_ids[0] == current.top_ids[0]
    if not top1:
        reasons.append(f"the top next token changed ({reference.top_ids[0]} -> {current.top_ids[0]})")
    if overlap < tol.min_topk_overlap:
        reasons.append(f"only {overlap:.0%} of the top-{len(ref_top)} tokens are still there")
    if logit_change > tol.logit_abs:
        reasons.append(f"top-k logits moved by up to {logit_change:.3g} (tolerance {tol.logit_abs})")
    return CanaryCheck(not reasons, reasons, worst, logit_change, overlap, top1, reference.digest == current.digest)
