"""What a quantization sweep measured, as typed results: the plan, the baseline, one row per variant.

:class:`QuantPlan` is validated when it is made (so a command fails on bad bits, blocks or methods before
it loads a model); :class:`QuantizationResult` is what ``results.json`` holds (``to_dict`` plus the
schema, see :mod:`superweight.results`) and what the report reads back with ``from_dict``, one key per
value. :func:`pareto_front` is the one Pareto front of the package (the figure and the docs use it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from superweight.coordinates import SuperActivation, SuperWeight
from superweight.errors import QuantizationError
from superweight.measure.perplexity import KLResult
from superweight.measure.runner import Provenance
from superweight.quant.methods import Method, check_combination, parse_method
from superweight.quant.rtn import QuantConfig, parse_block
from superweight.results import build

DEFAULT_METHODS = ("naive", "sw", "sw+clip", "row", "sparse:0.005")
DEFAULT_BLOCKS = (128, "channel")
CALIBRATION_TOKENS = 1024  # WikiText-2 validation tokens for sw+clip's search and SmoothQuant's factors
SMOOTHQUANT_ALPHA = 0.5  # SmoothQuant's migration strength (Xiao et al. 2023)


@dataclass(frozen=True)
class QuantPlan:
    """Which variants a sweep measures: every bits x block x method, plus simulated W8A8 if asked."""

    bits: tuple[int, ...] = (4,)
    blocks: tuple[int | str, ...] = DEFAULT_BLOCKS
    methods: tuple[str, ...] = DEFAULT_METHODS
    modules: str | None = None  # comma-separated globs over linear names (None: every decoder linear)
    activation: bool = False  # also simulated W8A8: naive, sa, smoothquant
    smoothquant_alpha: float = SMOOTHQUANT_ALPHA
    calib_tokens: int = CALIBRATION_TOKENS
    kl: bool = True  # KL from the unquantized model (costs windows x seq_len x vocab fp16 of memory)
    save: str | None = None  # write the (single) quantized variant as a checkpoint folder

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", tuple(self.bits))
        object.__setattr__(self, "blocks", tuple(parse_block(str(b)) for b in self.blocks))
        object.__setattr__(self, "methods", tuple(parse_method(str(m)).label for m in self.methods))
        for name in ("bits", "blocks", "methods"):
            if not getattr(self, name):
                raise QuantizationError("needs at least one value", option=name)
        if not 0 <= self.smoothquant_alpha <= 1:
            raise QuantizationError(f"must be in [0, 1] (got {self.smoothquant_alpha})", option="smoothquant_alpha")
        if self.calib_tokens < 2:
            raise QuantizationError(f"must be at least 2 (got {self.calib_tokens})", option="calib_tokens")
        runs = self.variants()  # QuantConfig checks every bit width, check_combination every pair
        if self.save is not None and len(runs) != 1:
            raise QuantizationError(
                f"{{option}} writes one model; give one bits, block and method (got {len(runs)} combinations)",
                option="save",
            )

    def variants(self) -> list[tuple[Method, QuantConfig]]:
        runs = [(parse_method(m), QuantConfig(b, blk)) for b in self.bits for blk in self.blocks for m in self.methods]
        for method, config in runs:
            check_combination(method, config)
        return runs

    @property
    def needs_calibration(self) -> bool:
        return self.activation or "sw+clip" in self.methods

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantPlan:
        return build(cls, data)


@dataclass
class Baseline:
    """The unquantized model: perplexity per source, accuracy per task, and their full records."""

    perplexity: dict[str, float]
    accuracy: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # per source: PerplexityResult; per task: TaskResult


@dataclass
class Variant:
    """One quantized model: its cost in bits per weight and what it scores."""

    method: str  # a weight method label (naive, sw, sparse:0.005, ...) or w8a8:<naive|sa|smoothquant>
    bits: int
    block: str
    bits_per_weight: float  # every stored bit: codes, fp16 scales and offsets, the sparse part
    perplexity: dict[str, float]
    accuracy: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    kl: KLResult | None = None  # KL(unquantized || this) on the plan's first source
    quantization: dict[str, Any] | None = None  # weight-only: QuantReport.to_dict() (bit counts, clip z)
    activation: dict[str, Any] | None = None  # W8A8: ActReport.to_dict() (held channels, alpha)
    checkpoint: dict[str, Any] | None = None  # {"path", "bytes"} when written or read as a checkpoint

    @property
    def is_activation(self) -> bool:
        """W8A8 variants quantize activations too: they are not comparable with weight-only points."""
        return self.activation is not None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Variant:
        variant = build(cls, data)
        variant.kl = None if data["kl"] is None else build(KLResult, data["kl"])
        return variant


@dataclass
class QuantizationResult:
    model: str
    architecture: str
    plan: QuantPlan
    baseline: Baseline
    variants: list[Variant]
    source: str  # the perplexity source that KL, the summaries and the figures use (the plan's first)
    modules: int  # linears quantized
    super_weights: list[SuperWeight]
    super_activations: list[SuperActivation]
    protection: dict[str, Any]  # what the protecting methods held out, by module (Protection.to_dict())
    provenance: Provenance

    def weight_only(self) -> list[Variant]:
        return [v for v in self.variants if not v.is_activation]

    def activation_variants(self) -> list[Variant]:
        return [v for v in self.variants if v.is_activation]

    def ppl(self, variant: Variant | Baseline) -> float:
        """``variant``'s perplexity on :attr:`source`."""
        return variant.perplexity[self.source]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizationResult:
        return cls(
            model=data["model"],
            architecture=data["architecture"],
            plan=QuantPlan.from_dict(data["plan"]),
            baseline=build(Baseline, data["baseline"]),
            variants=[Variant.from_dict(v) for v in data["variants"]],
            source=data["source"],
            modules=data["modules"],
            super_weights=[build(SuperWeight, w) for w in data["super_weights"]],
            super_activations=[build(SuperActivation, a) for a in data["super_activations"]],
            protection=data["protection"],
            provenance=Provenance.from_dict(data["provenance"]),
        )


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats at equal or fewer bits (x: bits per weight, y: lower is better).

    Non-finite points (a diverged variant's infinite perplexity) are never on the front.
    """
    front: list[tuple[float, float]] = []
    best = math.inf
    for x, y in sorted(p for p in points if math.isfinite(p[0]) and math.isfinite(p[1])):
        if y < best:
            front.append((x, y))
            best = y
    return front
