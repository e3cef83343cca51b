"""A null model for causal confirmation: what zeroing *ordinary* weights of the same size costs.

A fixed margin (0.25 nats) says nothing about how much a probe moves when any large weight is
zeroed; an activation ratio is a detector, not a measure of importance ("Structure is not mechanism").
So, for each layer with a candidate, several draws each zero one weight per candidate of that layer,
taken at random from the *same tensor* with a magnitude in the candidate's range (|w| within a factor
of two; the nearest magnitudes when the tensor has too few), the candidates themselves excluded. A
candidate's effect is then reported against that distribution: the ratio to its largest |effect| and
a z-score, beside the absolute margin.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from superweight.coordinates import SuperWeight
    from superweight.detect.confirm import SetLosses
    from superweight.model.architectures import DownProj

STD_FLOOR = 1e-6  # nats: below this, loss changes are float noise, not a distribution


@dataclass(frozen=True)
class NullWeight:
    """A weight zeroed for the null (the coordinate protocol ``refs_for`` takes)."""

    module: str
    row: int
    col: int

    @property
    def coordinate(self) -> tuple[str, int, int]:
        return (self.module, self.row, self.col)


@dataclass
class NullStats:
    """The null distribution of one layer: each draw's probe-loss increase (nats)."""

    layer: int
    draws: list[float]

    @property
    def max_abs(self) -> float:
        return max((abs(d) for d in self.draws), default=0.0)

    def ratio(self, effect: float) -> float:
        """How many times the largest null |effect| ``effect`` is (nan when every draw was exactly 0)."""
        return effect / self.max_abs if self.max_abs > 0 else math.nan

    def z(self, effect: float) -> float:
        if len(self.draws) < 2:
            return math.nan
        std = max(statistics.stdev(self.draws), STD_FLOOR)
        return (effect - statistics.fmean(self.draws)) / std

    def beaten_by(self, effect: float, min_z: float) -> bool:
        """Above every draw and ``min_z`` standard deviations above their mean."""
        if not self.draws:
            return True
        return effect > self.max_abs and self.z(effect) >= min_z


def matched_positions(site: DownProj, value: float, count: int, exclude: set[tuple[int, int]], seed: int):
    """``count`` (row, col) of ``site`` drawn at random among weights with |w| near |value| (seeded)."""
    import torch

    w = site.weight.detach().abs().float().reshape(-1).cpu()
    cols = site.weight.shape[1]
    excluded = torch.tensor([r * cols + c for r, c in exclude], dtype=torch.long)
    target = max(abs(value), 1e-30)
    keep = (w >= target / 2) & (w <= target * 2)
    keep[excluded] = False
    band = keep.nonzero().flatten()
    if band.numel() < count:  # too few in range: the nearest magnitudes
        distance = (torch.log(w.clamp_min(1e-30)) - math.log(target)).abs()
        distance[excluded] = math.inf
        band = distance.argsort()[:count]
    g = torch.Generator().manual_seed(seed)
    pick = band[torch.randperm(band.numel(), generator=g)[:count]]
    return [divmod(int(i), cols) for i in pick]


def layer_nulls(
    losses: SetLosses,
    sites: Sequence[DownProj],
    found: Sequence[SuperWeight],
    draws: int,
    seed: int = 0,
) -> dict[int, NullStats]:
    """For each layer with a candidate: ``draws`` null effects, each zeroing one matched weight per candidate."""
    by_label = {s.label: s for s in sites}
    taken = {w.coordinate for w in found}
    out: dict[int, NullStats] = {}
    for layer in sorted({w.layer for w in found}):
        members = [w for w in found if w.layer == layer]
        picks: list[list[NullWeight]] = [[] for _ in range(draws)]
        for k, w in enumerate(members):
            exclude = {(r, c) for (m, r, c) in taken if m == w.module}
            positions = matched_positions(by_label[w.module], w.value, draws, exclude, seed + 1000 * layer + k)
            for d, (r, c) in enumerate(positions):
                picks[d].append(NullWeight(w.module, r, c))
        out[layer] = NullStats(layer, [losses.increase(p) for p in picks if p])
    return out
