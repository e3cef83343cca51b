"""Ablation and scaling (Yu et al. 2024, Table 1 and Figures 4-6) as library verbs with typed results.

``run_ablation`` measures the model as loaded, with its super weights zeroed, zeroed with the super
activation put back, and against two controls (the k largest / k random other weights zeroed);
``run_scaling`` multiplies the super weights by each alpha. Both take the coordinates from any scan-like
``Findings`` (a scan, a saved scan, a manifest) and restore every weight bit-exactly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from superweight.coordinates import Findings, SuperActivation, SuperWeight
from superweight.errors import SuperweightError
from superweight.measure.conditions import Condition, Probe
from superweight.measure.runner import Measured, Provenance, measure, provenance
from superweight.measure.settings import EvalSettings
from superweight.model.interventions import CONTROL_K, refs_for
from superweight.results import build

if TYPE_CHECKING:
    import torch
    from torch import nn

    from superweight.model.architectures import DownProj
    from superweight.model.loading import LoadedModel

CONDITIONS = ("original", "no-sw", "no-sw+sa", "top-k", "random-k")
# Mixture-of-experts models: the super experts pruned, and as many random other experts (Su et al. 2025).
EXPERT_CONDITIONS = ("no-super-experts", "random-experts")
PROMPTS = ("Summer is hot. Winter is", "The capital of France is", "My favourite colour is")
DEFAULT_ALPHAS = (0.0, 0.2, 0.5, 1.0, 1.5, 2.0, 3.0)


@dataclass
class ConditionResult:
    """One condition's numbers: perplexity per source, accuracy per task, the super activation."""

    name: str
    edited_weights: int
    perplexity: dict[str, float]
    accuracy: dict[str, float]
    details: dict[str, Any]  # per source / task: the full PerplexityResult / TaskResult
    super_activation: float | None = None


@dataclass
class TokenShift:
    token: int
    text: str
    p_original: float
    p_edited: float
    ratio: float | None


@dataclass
class Continuation:
    prompt: str
    original: str
    edited: str
    condition: str


def _findings(data: dict[str, Any]) -> tuple[list[SuperWeight], list[SuperActivation]]:
    return [build(SuperWeight, w) for w in data["super_weights"]], [
        build(SuperActivation, a) for a in data["super_activations"]
    ]


@dataclass
class AblationResult:
    model: str
    architecture: str
    super_weights: list[SuperWeight]
    super_activations: list[SuperActivation]
    conditions: list[ConditionResult]
    recovery: float | None  # share of the loss zeroing added that restoring the super activation takes back
    recovery_metric: str
    k: int
    scope: str
    provenance: Provenance
    token_shift: list[TokenShift] = field(default_factory=list)
    continuations: list[Continuation] = field(default_factory=list)
    # expert conditions: condition name -> the [layer, expert] pairs it pruned (super experts, the random control)
    pruned_experts: dict[str, list[list[int]]] = field(default_factory=dict)

    def condition(self, name: str) -> ConditionResult | None:
        return next((c for c in self.conditions if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AblationResult:
        weights, activations = _findings(data)
        return cls(
            model=data["model"],
            architecture=data["architecture"],
            super_weights=weights,
            super_activations=activations,
            conditions=[build(ConditionResult, c) for c in data["conditions"]],
            recovery=data["recovery"],
            recovery_metric=data["recovery_metric"],
            k=data["k"],
            scope=data["scope"],
            provenance=Provenance.from_dict(data["provenance"]),
            token_shift=[build(TokenShift, t) for t in data["token_shift"]],
            continuations=[build(Continuation, c) for c in data["continuations"]],
            pruned_experts={k: [list(p) for p in v] for k, v in (data.get("pruned_experts") or {}).items()},
        )


@dataclass
class ScalePoint:
    alpha: float
    perplexity: dict[str, float]
    accuracy: dict[str, float]
    details: dict[str, Any]
    value: float  # the metric the best alpha is chosen by
    super_activation: float | None = None


@dataclass
class ScalingResult:
    model: str
    architecture: str
    super_weights: list[SuperWeight]
    metric: str  # "perplexity:<source>" (lower is better) or "accuracy:mean" (higher is better)
    points: list[ScalePoint]
    best_alpha: float
    best_value: float
    baseline_value: float  # at alpha = 1
    gain: float
    gain_meaning: str
    provenance: Provenance

    @property
    def lower_is_better(self) -> bool:
        return self.metric.startswith("perplexity")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScalingResult:
        return cls(
            **{k: data[k] for k in ("model", "architecture", "metric", "best_alpha", "best_value",
                                    "baseline_value", "gain", "gain_meaning")},
            super_weights=[build(SuperWeight, w) for w in data["super_weights"]],
            points=[build(ScalePoint, p) for p in data["points"]],
            provenance=Provenance.from_dict(data["provenance"]),
        )  # fmt: skip


def activation_probe(model: nn.Module, scan: Findings) -> Probe | None:
    """Where the (first) super activation is read: its super weight's down-projection, at its channel."""
    from superweight.model.architectures import down_projections, find_down_proj

    if not scan.super_activations:
        return None
    sa = scan.super_activations[0]
    sw = next((w for w in scan.super_weights if w.layer == sa.layer and w.row == sa.channel), None)
    sites = down_projections(model)
    if sw is not None:
        site = find_down_proj(sites, sw.module)
    else:
        site = next(s for s in sites if s.layer == sa.layer and s.expert is None)
    return Probe(site, sa.channel)


def check_conditions(names: Sequence[str]) -> None:
    """Fail on an unknown condition name before anything is loaded."""
    known = CONDITIONS + EXPERT_CONDITIONS
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SuperweightError(
            f"unknown condition(s) {', '.join(unknown) or '(none given)'}; choose from {','.join(known)}",
            option="conditions",
        )


class ExpertCoordinate(Protocol):
    """An expert as results name it (a scan's super experts): decoder layer and expert index."""

    layer: int
    expert: int


def expert_sites(model: nn.Module, experts: Sequence[ExpertCoordinate]) -> list[DownProj]:
    """The fused-MoE down-projection of each ``(layer, expert)``; a typed error for one the model lacks."""
    from superweight.model.architectures import down_projections

    by_key = {(s.layer, s.expert): s for s in down_projections(model) if s.expert is not None}
    if not by_key:
        raise SuperweightError(
            "this model has no routed experts; the expert conditions apply to mixture-of-experts models",
            option="conditions",
        )
    missing = [(e.layer, e.expert) for e in experts if (e.layer, e.expert) not in by_key]
    if missing:
        raise SuperweightError(f"this model has no expert(s) {missing} (layer, expert)", option="experts")
    return [by_key[(e.layer, e.expert)] for e in experts]


def random_experts(model: nn.Module, count: int, exclude: Sequence[DownProj] = (), seed: int = 0) -> list[DownProj]:
    """``count`` distinct routed experts drawn uniformly (seeded) from all but ``exclude``: the control."""
    import random

    from superweight.model.architectures import down_projections

    skip = {(s.layer, s.expert) for s in exclude}
    pool = [s for s in down_projections(model) if s.expert is not None and (s.layer, s.expert) not in skip]
    if count > len(pool):
        raise SuperweightError(f"{count} random experts asked for, but only {len(pool)} others exist", option="experts")
    return sorted(random.Random(seed).sample(pool, count), key=lambda s: (s.layer, s.expert))


def build_conditions(
    model: nn.Module,
    scan: Findings,
    names: Sequence[str] = CONDITIONS,
    *,
    k: int = CONTROL_K,
    scope: str = "down_proj",
    seed: int = 0,
    experts: Sequence[ExpertCoordinate] = (),
) -> list[Condition]:
    """The paper's Table 1 conditions for the super weights in ``scan`` (and the super ``experts``)."""
    from superweight.model.interventions import random_k_refs, top_k_refs

    check_conditions(names)
    refs = refs_for(model, scan.super_weights)
    probe = activation_probe(model, scan)
    pruned: list[DownProj] = []
    if any(n in EXPERT_CONDITIONS for n in names):
        pruned = expert_sites(model, experts)
        if not pruned:
            raise SuperweightError("no super expert was found to prune; drop the expert conditions", "conditions")
    out = []
    for name in names:
        if name == "no-super-experts":
            out.append(Condition(name, pruned=pruned))
        elif name == "random-experts":
            out.append(Condition(name, pruned=random_experts(model, len(pruned), pruned, seed)))
        elif name == "original":
            out.append(Condition(name))
        elif name == "no-sw":
            out.append(Condition(name, refs))
        elif name == "no-sw+sa":
            if probe is None:
                raise SuperweightError("no super activation was found to restore; drop no-sw+sa", option="conditions")
            tokens = scan.super_activations[0].tokens or None
            out.append(Condition(name, refs, restores=[(probe.site, probe.channel, tokens)]))
        elif name == "top-k":
            out.append(Condition(name, top_k_refs(model, k, refs, scope)))
        else:
            out.append(Condition(name, random_k_refs(model, k, refs, scope, seed)))
    return out


def _recovery(rows: dict[str, dict[str, Any]], source: str) -> float | None:
    """Share of the loss that zeroing added which restoring the super activation takes back (in nats)."""
    try:
        orig, no_sw, restored = (rows[n]["details"][source]["nll"] for n in ("original", "no-sw", "no-sw+sa"))
    except KeyError:
        return None
    damage = no_sw - orig
    return (no_sw - restored) / damage if damage > 0 else None


def token_shift(tokenizer: Any, base: torch.Tensor, edited: torch.Tensor, top: int = 15) -> list[TokenShift]:
    """Tokens whose mean next-token probability grew most (Figure 5: mostly stopwords in the paper)."""
    import torch

    rows = []
    for i in torch.topk(edited - base, top).indices.tolist():
        p0, p1 = float(base[i]), float(edited[i])
        rows.append(TokenShift(i, tokenizer.decode([i]), p0, p1, p1 / p0 if p0 > 0 else None))
    return rows


def continuations(
    lm: LoadedModel, condition: Condition, prompts: Sequence[str] = PROMPTS, max_new_tokens: int = 8
) -> list[Continuation]:
    """Greedy continuations of fixed prompts, with the model as loaded and under ``condition``."""
    from superweight.measure.generation import greedy

    out = []
    for prompt in prompts:
        original = greedy(lm.model, lm.tokenizer, prompt, max_new_tokens)
        with condition.apply():
            edited = greedy(lm.model, lm.tokenizer, prompt, max_new_tokens)
        out.append(Continuation(prompt, original, edited, condition.name))
    return out


def _edited(condition: Condition) -> int:
    """Weights a condition changes: its scalar edits plus every weight of the matrices it prunes."""
    return len(condition.refs) + sum(site.weight.numel() for site in condition.pruned)


def _rows(measured: Measured, name: str) -> dict[str, Any]:
    row = measured.rows[name]
    return {"perplexity": row["perplexity"], "accuracy": row["accuracy"], "details": row["details"],
            "super_activation": row.get("super_activation")}  # fmt: skip


def _need_super_weights(lm: LoadedModel, scan: Findings, verb: str) -> None:
    if not scan.super_weights:
        raise SuperweightError(f"no super weight was found in {lm.spec}; nothing to {verb} (see `superweight scan`)")


def run_ablation(
    lm: LoadedModel,
    scan: Findings,
    settings: EvalSettings | None = None,
    names: Sequence[str] = CONDITIONS,
    *,
    k: int = CONTROL_K,
    scope: str = "down_proj",
    seed: int = 0,
    shift: bool = True,
    experts: Sequence[ExpertCoordinate] = (),
) -> AblationResult:
    """Table 1 and Figures 4-5 of Yu et al.: every condition x every metric (and Su et al.'s expert pruning)."""
    settings = settings or EvalSettings()
    if any(n not in EXPERT_CONDITIONS and n != "original" for n in names):
        _need_super_weights(lm, scan, "ablate")
    start = time.perf_counter()
    conditions = build_conditions(lm.model, scan, names, k=k, scope=scope, seed=seed, experts=experts)
    tracked = [n for n in ("original", "no-sw") if n in names] if shift else []
    measured = measure(lm, conditions, settings, probe=activation_probe(lm.model, scan), token_stats=tracked)
    first = settings.sources[0]
    result = AblationResult(
        model=lm.spec,
        architecture=lm.architecture,
        super_weights=list(scan.super_weights),
        super_activations=list(scan.super_activations),
        conditions=[ConditionResult(c.name, _edited(c), **_rows(measured, c.name)) for c in conditions],
        recovery=_recovery(measured.rows, first),
        recovery_metric=f"nll:{first}",
        k=k,
        scope=scope,
        provenance=provenance(lm, settings, measured, 0.0),
        pruned_experts={c.name: [[s.layer, int(s.expert)] for s in c.pruned] for c in conditions if c.pruned},
    )
    if len(tracked) == 2:
        no_sw = next(c for c in conditions if c.name == "no-sw")
        result.token_shift = token_shift(lm.tokenizer, measured.token_probs["original"], measured.token_probs["no-sw"])
        result.continuations = continuations(lm, no_sw)
    result.provenance.seconds = time.perf_counter() - start
    return result


def run_scaling(
    lm: LoadedModel, scan: Findings, settings: EvalSettings | None = None, alphas: Sequence[float] = DEFAULT_ALPHAS
) -> ScalingResult:
    """Figure 6 of Yu et al.: every metric per super-weight scale factor, the best alpha and its gain."""
    settings = settings or EvalSettings()
    _need_super_weights(lm, scan, "scale")
    alphas = sorted({float(a) for a in alphas} | {1.0})  # alpha=1 is the baseline every gain is measured against
    start = time.perf_counter()
    refs = refs_for(lm.model, scan.super_weights)
    conditions = [Condition(f"alpha={a:g}", refs, alpha=a) for a in alphas]
    measured = measure(lm, conditions, settings, probe=activation_probe(lm.model, scan))
    by_accuracy = bool(settings.tasks) and all(measured.rows[c.name]["accuracy"] for c in conditions)
    metric = "accuracy:mean" if by_accuracy else f"perplexity:{settings.sources[0]}"
    points = []
    for a, c in zip(alphas, conditions, strict=True):
        row = _rows(measured, c.name)
        value = (sum(row["accuracy"].values()) / len(row["accuracy"]) if by_accuracy
                 else row["perplexity"][settings.sources[0]])  # fmt: skip
        points.append(ScalePoint(a, value=value, **row))
    best = (max if by_accuracy else min)(points, key=lambda p: p.value)
    base = next(p for p in points if p.alpha == 1.0)
    gain = best.value - base.value if by_accuracy else base.value / best.value - 1
    return ScalingResult(
        model=lm.spec,
        architecture=lm.architecture,
        super_weights=list(scan.super_weights),
        metric=metric,
        points=points,
        best_alpha=best.alpha,
        best_value=best.value,
        baseline_value=base.value,
        gain=gain,
        gain_meaning="accuracy points over alpha=1" if by_accuracy else "relative perplexity reduction over alpha=1",
        provenance=provenance(lm, settings, measured, time.perf_counter() - start),
    )
