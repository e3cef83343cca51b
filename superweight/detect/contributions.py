"""Who feeds a super activation: each down-projection input channel's share ``W[row, j] * x[j] / y[row]``.

A super activation is one number, ``y[token, row] = sum_j W[row, j] * x[token, j] (+ bias)``. When one
weight dominates that sum, zeroing it removes the activation; when two share it, zeroing either alone
leaves the other half, which a norm downstream can make look like the whole. Reporting every member's
share is what lets a scan say "one super activation, fed by two weights" instead of two weak candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from superweight.model.architectures import DownProj
    from superweight.model.capture import SiteActivations


@dataclass
class Contributions:
    """The decomposition of one output channel's largest value (the model intact, over all prompts)."""

    prompt: int
    token: int
    value: float  # y[token, row] as captured
    shares: torch.Tensor  # (in_features,) W[row, j] * x[token, j] / sum_j(...), float32

    def share(self, col: int) -> float:
        return float(self.shares[col])

    def top(self, k: int = 5) -> list[dict[str, float]]:
        """The ``k`` input channels with the largest |share|, as JSON-ready ``{"col", "share"}`` rows."""
        order = self.shares.abs().argsort(descending=True)[:k]
        return [{"col": int(j), "share": float(self.shares[j])} for j in order]


def decompose(acts: list[dict[int, SiteActivations]], site_index: int, site: DownProj, row: int) -> Contributions:
    """Decompose output ``row`` of ``site`` at the prompt and token where its |value| is largest.

    ``acts`` holds one ``{site index: activations}`` record per prompt, measured with the model intact.
    """
    best = max(range(len(acts)), key=lambda p: float(acts[p][site_index].y[:, row].abs().max()))
    rec = acts[best][site_index]
    token = int(rec.y[:, row].abs().argmax())
    terms = site.weight[row].detach().float() * rec.x[token].to(site.weight.device)
    bias = getattr(site.module, "bias", None) if site.expert is None else None
    # the raw sum (not the captured y, which post-norm families record after their norm)
    denominator = float(terms.sum()) + (float(bias[row]) if bias is not None else 0.0)
    value = float(rec.y[token, row])
    if abs(denominator) < 1e-30:
        denominator = 1.0
    return Contributions(best, token, value, (terms / denominator).cpu())
