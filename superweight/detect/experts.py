"""Super experts of mixture-of-experts models (Su et al. 2025, "Unveiling Super Experts in MoE LLMs").

Su et al. profile, for every routed expert ``e`` of every layer ``l``, the largest magnitude its
down-projection writes on calibration text, ``a[l, e] = max |h(x) @ W_down[l, e]|`` (before the
router weight), and call an expert *super* when ``a[l, e]`` is above the 99.5th percentile of all
the ``a`` and above a tenth of the largest (their Algorithm 1, stage 2). These experts produce the massive
activations of MoE models, as super weights do in dense ones; pruning them (their output set to 0)
is catastrophic where pruning random experts is not.

Differences from the paper, said here so that a reader can judge them: the paper's stage 1 keeps
only the layers where massive activations form; here an expert must instead be massive itself, its
maximum at least ``MIN_RATIO`` (10) times the median expert's (what a massive activation is: orders
of magnitude above the typical value), so that a model without massive activations has no super
expert even though one expert is always the largest. The calibration text is the scan prompts, and shared
experts (Qwen2-MoE's ``shared_expert``) are dense down-projections, not routed experts, so they are
not part of the population. The percentile is linear interpolation (numpy's and torch's default).
With fewer than 200 experts the 99.5th percentile lies above every value but the largest, so a
small model can have at most one super expert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from superweight.errors import SuperweightError

if TYPE_CHECKING:
    from torch import nn

PERCENTILE = 99.5  # Su et al., Algorithm 1
FRACTION = 0.1  # ...and above this share of the largest expert maximum
# Our stand-in for the paper's first stage (profile only layers where massive activations form): an
# expert's maximum must also be massive, at least this many times the median expert's. Without it,
# any model with fewer than 200 experts would always have one "super expert", however ordinary.
MIN_RATIO = 10.0


@dataclass
class ExpertMaximum:
    """One routed expert's largest |down-projection output| over the profiling prompts."""

    layer: int
    expert: int
    module: str  # the expert's label, "name[e]", as super weights name it
    value: float  # a[l, e] (>= 0)
    channel: int  # hidden channel of that maximum
    token: int  # token position (in ``prompt``)
    prompt: int


@dataclass
class SuperExpert:
    """An expert whose output maximum clears Su et al.'s rule."""

    layer: int
    expert: int
    module: str
    max_output: float  # a[l, e]
    channel: int
    token: int
    prompt: int
    threshold: float  # max(99.5th percentile, 0.1 x largest, 10 x median) over all experts of the model
    share_of_largest: float  # a[l, e] / max a


def select_super_experts(
    maxima: Sequence[ExpertMaximum],
    percentile: float = PERCENTILE,
    fraction: float = FRACTION,
    min_ratio: float = MIN_RATIO,
) -> list[SuperExpert]:
    """Su et al.'s rule on a profile: above the ``percentile`` of all maxima and ``fraction`` x the largest.

    And at least ``min_ratio`` x the median maximum (see the module docstring; 0 turns it off).
    """
    import torch

    if not 0 < percentile < 100:
        raise SuperweightError(f"must be in (0, 100) (got {percentile})", option="percentile")
    if not 0 <= fraction <= 1:
        raise SuperweightError(f"must be in [0, 1] (got {fraction})", option="fraction")
    if not min_ratio >= 0:
        raise SuperweightError(f"must be >= 0 (got {min_ratio})", option="min_ratio")
    if not maxima:
        return []
    values = torch.tensor([m.value for m in maxima], dtype=torch.float64)
    cut = float(torch.quantile(values, percentile / 100))
    largest = float(values.max())
    floor = min_ratio * float(values.median())
    threshold = max(cut, fraction * largest, floor)
    chosen = [m for m in maxima if m.value > cut and m.value > fraction * largest and m.value >= floor]
    chosen.sort(key=lambda m: -m.value)
    return [
        SuperExpert(m.layer, m.expert, m.module, m.value, m.channel, m.token, m.prompt, threshold,
                    m.value / largest if largest > 0 else 0.0)
        for m in chosen
    ]  # fmt: skip


def profile_experts(model: nn.Module, prompt_ids: Sequence[Any]) -> list[ExpertMaximum]:
    """``a[l, e]`` for every routed expert of ``model`` (empty for a dense model: no forward pass is run)."""
    import torch

    from superweight.model.architectures import down_projections
    from superweight.model.capture import capture_down_proj

    sites = [s for s in down_projections(model) if s.expert is not None]
    if not sites:
        return []
    best: dict[int, ExpertMaximum] = {}
    with torch.no_grad():
        for p, ids in enumerate(prompt_ids):
            with capture_down_proj(sites) as records:
                model(ids)
            for i, site in enumerate(sites):
                y = records[i].y.abs()  # (tokens, hidden); zero where the router did not pick this expert
                flat = int(y.argmax())
                token, channel = divmod(flat, y.shape[1])
                value = float(y[token, channel])
                if i not in best or value > best[i].value:
                    best[i] = ExpertMaximum(site.layer, int(site.expert), site.label, value, channel, token, p)
    return [best[i] for i in range(len(sites))]


def find_super_experts(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    percentile: float = PERCENTILE,
    fraction: float = FRACTION,
    min_ratio: float = MIN_RATIO,
) -> list[SuperExpert]:
    """Profile every routed expert on ``prompts`` and return the super experts, largest first.

    Example:
        >>> lm = load_model("./Qwen3-30B-A3B")
        >>> [(e.layer, e.expert) for e in find_super_experts(lm.model, lm.tokenizer, ["Hello"])]
    """
    if not prompts or any(not p or not p.strip() for p in prompts):
        raise SuperweightError("give at least one non-empty prompt to profile experts with", option="prompt")
    from superweight.model.architectures import down_projections

    if not any(s.expert is not None for s in down_projections(model)):
        return []
    device = next(model.parameters()).device
    ids = [tokenizer(p, return_tensors="pt").input_ids.to(device) for p in prompts]
    return select_super_experts(profile_experts(model, ids), percentile, fraction, min_ratio)
