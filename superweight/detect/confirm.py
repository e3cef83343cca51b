"""Confirm super weights as a set, in the order the search found them (issue 10).

Zeroing one weight at a time under-reports sets: when two weights of one row feed one super
activation, removing either leaves the other half, and a norm downstream can make half look like the
whole, so each alone costs little while both together break the model. So for the candidates
``w1, w2, ...`` in search order this measures the probe-loss increase of

* ``alone``: zeroing ``wi`` only (today's ``loss_increase``);
* ``marginal``: zeroing ``w1..wi`` minus zeroing ``w1..w(i-1)``;
* ``leave_one_out``: zeroing all minus zeroing all but ``wi``; and the whole set's increase;
* per *group* (candidates feeding one super activation: same layer, same row) the group's joint
  increase and each member's leave-one-out within the group.

A candidate is confirmed when its own or its marginal effect clears the bar, or when its group's
joint effect does and the group needs it (its in-group leave-one-out clears the bar too): the first
member of a pair has ``marginal == alone``, and without the group rule the search order alone would
decide which half of a pair is reported. That effect must also beat the layer's null (see
:mod:`superweight.detect.nulls`): above every draw, and ``null_z`` standard deviations above their mean.

Every set of weights is zeroed at most once (cached), and
every weight is restored bit-exactly (the interventions' context managers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from superweight.detect.probe import bootstrap_interval
from superweight.detect.result import WeightEvidence, WeightGroup
from superweight.model.interventions import refs_for, zeroed

if TYPE_CHECKING:
    from torch import nn

    from superweight.coordinates import SuperWeight
    from superweight.detect.contributions import Contributions
    from superweight.detect.nulls import NullStats
    from superweight.detect.result import DetectionConfig

Key = frozenset[tuple[str, int, int]]


class SetLosses:
    """Probe-loss increase (nats, mean over windows) of zeroing a set of weights; each set measured once.

    ``measure()`` returns the per-window probe losses of the model as it is at the time of the call.
    """

    def __init__(self, model: nn.Module, measure: Callable[[], list[float]]) -> None:
        self.model = model
        self.measure = measure
        self.base = measure()
        self.passes = 1
        self.cache: dict[Key, list[float]] = {frozenset(): [0.0] * len(self.base)}

    def windows(self, weights: Sequence[SuperWeight]) -> list[float]:
        """Per-window loss increase with ``weights`` zeroed together."""
        key: Key = frozenset(w.coordinate for w in weights)
        if key not in self.cache:
            with zeroed(refs_for(self.model, weights)):
                losses = self.measure()
            self.passes += 1
            self.cache[key] = [a - b for a, b in zip(losses, self.base, strict=True)]
        return self.cache[key]

    def difference(self, a: Sequence[SuperWeight], b: Sequence[SuperWeight]) -> list[float]:
        """Per-window increase of zeroing ``a`` minus that of zeroing ``b``."""
        return [x - y for x, y in zip(self.windows(a), self.windows(b), strict=True)]

    def increase(self, weights: Sequence[SuperWeight]) -> float:
        values = self.windows(weights)
        return sum(values) / len(values)

    @property
    def base_loss(self) -> float:
        return sum(self.base) / len(self.base)


def group_keys(found: Sequence[SuperWeight]) -> list[tuple[int, str, int]]:
    """Distinct (layer, module, row) in search order: one group per super activation."""
    keys: list[tuple[int, str, int]] = []
    for w in found:
        key = (w.layer, w.module, w.row)
        if key not in keys:
            keys.append(key)
    return keys


def confirm_set(
    losses: SetLosses,
    found: list[SuperWeight],
    cfg: DetectionConfig,
    contributions: dict[tuple[str, int], Contributions] | None = None,
    nulls: dict[int, NullStats] | None = None,
) -> tuple[list[WeightEvidence], list[WeightGroup], float]:
    """Judge ``found`` (search order) as a set; sets ``loss_increase`` and ``confirmed`` on each weight.

    ``contributions`` maps (module, row) to the decomposition of that super activation, for shares;
    ``nulls`` maps a layer to its null distribution: a confirmed effect must beat it too.
    Returns the per-candidate evidence, the groups, and the whole set's loss increase.
    """
    bar = cfg.min_loss_increase
    contributions = contributions or {}
    whole = losses.increase(found)
    keys = group_keys(found)
    evidence: list[WeightEvidence] = []
    for i, w in enumerate(found):
        contrib = contributions.get((w.module, w.row))
        ev = WeightEvidence(
            w.module,
            w.row,
            w.col,
            group=keys.index((w.layer, w.module, w.row)) + 1,
            share=contrib.share(w.col) if contrib is not None else math.nan,
            loss_alone=losses.increase([w]),
            loss_marginal=losses.increase(found[: i + 1]) - losses.increase(found[:i]),
            loss_leave_one_out=whole - losses.increase(found[:i] + found[i + 1 :]),
        )
        w.loss_increase = ev.loss_alone
        evidence.append(ev)
    groups: list[WeightGroup] = []
    for g, (layer, module, row) in enumerate(keys, start=1):
        members = [w for w in found if (w.layer, w.module, w.row) == (layer, module, row)]
        joint = losses.increase(members)
        contrib = contributions.get((module, row))
        for w in members:
            ev = evidence[found.index(w)]
            others = [m for m in members if m is not w]
            ev.loss_group_leave_one_out = joint - losses.increase(others) if others else ev.loss_alone
            i = found.index(w)
            paths = [("alone", losses.windows([w])), ("marginal", losses.difference(found[: i + 1], found[:i]))]
            if others and joint >= bar:
                paths.append(("group", losses.difference(members, others)))
            means = [(name, sum(v) / len(v), v) for name, v in paths]
            cleared = [m for m in means if m[1] >= bar]
            ev.confirmed_by, ev.effect, per_window = (
                cleared[0] if cleared else ("", *max(means, key=lambda m: m[1])[1:])
            )
            ev.effect_interval = bootstrap_interval(per_window)
            null = (nulls or {}).get(layer)
            if null is not None and null.draws:
                ev.null_max, ev.null_ratio, ev.null_z = null.max_abs, null.ratio(ev.effect), null.z(ev.effect)
                if ev.confirmed_by and not null.beaten_by(ev.effect, cfg.null_z):
                    ev.confirmed_by, ev.null_rejected = "", True
            w.confirmed = bool(ev.confirmed_by)
        groups.append(
            WeightGroup(
                group=g,
                layer=layer,
                module=module,
                row=row,
                members=[w.col for w in members],
                shares=[evidence[found.index(w)].share for w in members],
                joint_loss=joint,
                activation=contrib.value if contrib is not None else math.nan,
                token=contrib.token if contrib is not None else -1,
                top_contributors=contrib.top() if contrib is not None else [],
                confirmed=any(w.confirmed for w in members),
            )
        )
    return evidence, groups, whole
