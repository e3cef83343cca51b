"""What a scan finds, as typed results that round-trip through JSON (``to_dict`` / ``from_dict``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from superweight.coordinates import SuperActivation, SuperWeight
from superweight.detect.atlas import AtlasAgreement
from superweight.detect.experts import SuperExpert
from superweight.errors import ResultFileError, SuperweightError
from superweight.results import build, read_document

DEFAULT_PROMPTS: tuple[str, ...] = (
    "Summer is hot. Winter is",
    "The capital of France is Paris, and the capital of Italy is",
    "def add(a, b):\n    return a + b",
    "In 1969, two astronauts walked on the Moon while millions watched on television.",
)

PROBE_TEXT = (
    "The river flows through the old town, past the market square and the church. In spring, the water "
    "rises with melting snow from the mountains, and the fishermen wait for the first warm days. Most of "
    "the houses along the bank were built in the eighteenth century, when trade on the river made the town "
    "rich. Today, visitors come to walk along the water, to eat in the small restaurants, and to see the "
    "bridge that has stood for more than three hundred years."
)


@dataclass
class DetectionConfig:
    """How spikes are decided and candidates confirmed. Defaults work across scales and dtypes."""

    z_threshold: float = 3.5  # robust z of log|max activation| vs the other layers (Iglewicz-Hoaglin: 3.5)
    min_ratio: float = 5.0  # ...and at least this many times the other layers' median
    mad_floor: float = (
        0.25  # floor on the MAD of log-magnitudes, so near-identical layers cannot make tiny noise a spike
    )
    max_iterations: int = 8  # cap on zero-and-rerun rounds
    min_spike_drop: float = 0.3  # zeroing a candidate must lower its layer's output spike by this fraction
    min_loss_increase: float = 0.25  # nats of probe loss zeroing must add to confirm (x1.28 perplexity)
    null_draws: int = 8  # magnitude-matched random weights zeroed per layer with a candidate (0: no null)
    null_z: float = 3.0  # a confirmed effect must beat every null draw and sit this many SDs above their mean
    fire_fraction: float = 0.25  # a token "fires" where |activation| >= this fraction of the peak
    probe_windows: int = 4  # the default probe: windows of WikiText-2 validation (built-in text without data)
    probe_tokens: int = 64  # ...of this many tokens each (see docs/detect.md: why 4 x 64)
    probe_text: str | None = None  # a text of your own instead (one window when it is short)

    def __post_init__(self) -> None:
        for name in ("z_threshold", "mad_floor"):
            if not getattr(self, name) > 0:
                raise SuperweightError(f"must be > 0 (got {getattr(self, name)})", option=name)
        if not self.min_ratio >= 1:
            raise SuperweightError(f"must be at least 1 (got {self.min_ratio})", option="min_ratio")
        if self.null_draws < 0:
            raise SuperweightError(f"must be >= 0 (got {self.null_draws})", option="null_draws")
        if self.max_iterations < 1:
            raise SuperweightError(f"must be at least 1 (got {self.max_iterations})", option="max_iterations")
        for name in ("min_spike_drop", "fire_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise SuperweightError(f"must be in (0, 1] (got {getattr(self, name)})", option=name)
        if not self.min_loss_increase >= 0:
            raise SuperweightError(f"must be >= 0 nats (got {self.min_loss_increase})", option="min_loss_increase")
        if self.probe_windows < 1 or self.probe_tokens < 8:
            raise SuperweightError(
                f"needs >= 1 window of >= 8 tokens (got {self.probe_windows} x {self.probe_tokens})", option="probe"
            )
        if self.probe_text is not None and not self.probe_text.strip():
            raise SuperweightError("the probe text is empty", option="probe_text")


@dataclass
class LayerStats:
    """Per-layer evidence: the largest |input| and |output| of its down-projection(s) over all prompts."""

    layer: int
    max_input: float
    input_channel: int
    max_output: float
    output_channel: int
    token: int  # position of the output max
    input_z: float = 0.0
    output_z: float = 0.0
    spike: bool = False


@dataclass
class WeightRow:
    """One down-projection row holding super weights (or candidates), for the heat map of the report."""

    label: str
    module: str
    row: int
    values: list[float]  # rounded to 5 significant digits, so results.json stays small
    marks: list[int]  # the columns found in this row


@dataclass
class WeightEvidence:
    """How one candidate was judged as part of the set the search found (issue 10), beside ``SuperWeight``.

    Losses are probe-loss increases in nats over the intact model: ``loss_alone`` (= ``loss_increase``),
    ``loss_marginal`` given the candidates found before it already zeroed, ``loss_leave_one_out``: the
    whole set zeroed minus the set without it. ``share``: its part of its super activation
    (``W[row, col] * x[col] / y[row]`` at the peak token).
    """

    module: str
    row: int
    col: int
    group: int = 0
    share: float = float("nan")
    loss_alone: float = float("nan")
    loss_marginal: float = float("nan")
    loss_leave_one_out: float = float("nan")
    loss_group_leave_one_out: float = float("nan")  # its group zeroed minus the group without it
    confirmed_by: str = ""  # "alone", "marginal", "group" or "" (not confirmed)
    effect: float = float("nan")  # the loss increase judged: the path that cleared the bar, else the largest
    effect_interval: list[float] = field(default_factory=list)  # 95% bootstrap interval over probe windows
    null_max: float = float("nan")  # largest |loss increase| of magnitude-matched random weights of its tensor
    null_ratio: float = float("nan")  # effect / null_max
    null_z: float = float("nan")  # (effect - null mean) / null std
    null_rejected: bool = False  # cleared the margin, but not the null
    label: str = ""  # e.g. an opposite-sign pair cancelling an earlier super activation
    bos_agreement: float | None = None  # `agreement` with BOS added (or removed); None: the tokenizer has none

    @property
    def coordinate(self) -> tuple[str, int, int]:
        return (self.module, self.row, self.col)


@dataclass
class WeightGroup:
    """Candidates that feed one super activation (same layer, same output row): judged together."""

    group: int
    layer: int
    module: str
    row: int
    members: list[int]  # columns, in the order the search found them
    shares: list[float]  # each member's share of the activation
    joint_loss: float  # probe-loss increase with every member zeroed together
    activation: float  # the down-projection output at (peak token, row), model intact
    token: int
    top_contributors: list[dict[str, float]] = field(default_factory=list)  # largest |share| input channels
    confirmed: bool = False


@dataclass
class ScanResult:
    model: str
    architecture: str
    num_parameters: int
    prompts: list[str]
    super_weights: list[SuperWeight]  # confirmed
    unconfirmed: list[SuperWeight]
    super_activations: list[SuperActivation]
    layers: list[LayerStats]
    timings: dict[str, float]
    base_loss: float
    config: DetectionConfig
    iterations: list[dict[str, Any]] = field(default_factory=list)
    # largest |hidden state| after each layer (first prompt): massive activations with or without a super weight
    residual_stream: list[dict[str, Any]] = field(default_factory=list)
    rows: list[WeightRow] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)  # where the model came from (path, kind, dequantized_from)
    evidence: list[WeightEvidence] = field(default_factory=list)  # one per candidate (super_weights + unconfirmed)
    groups: list[WeightGroup] = field(default_factory=list)
    set_loss: float = float("nan")  # probe-loss increase with every candidate zeroed at once
    probe: dict[str, Any] = field(default_factory=dict)  # source, windows, tokens of the confirmation probe
    fp16: dict[str, Any] = field(default_factory=dict)  # largest |value| seen vs float16's 65,504
    massive: dict[str, Any] = field(default_factory=dict)  # where a massive activation comes from (none confirmed)

    def evidence_for(self, weight: SuperWeight) -> WeightEvidence | None:
        return next((e for e in self.evidence if e.coordinate == weight.coordinate), None)

    def _weight_dict(self, weight: SuperWeight) -> dict[str, Any]:
        ev = self.evidence_for(weight)
        return {**asdict(weight), **(asdict(ev) if ev is not None else {})}

    # --- super experts (MoE models, detect/experts.py) and the atlas's word on this model (detect/atlas.py)
    super_experts: list[SuperExpert] = field(default_factory=list)
    atlas: AtlasAgreement | None = None

    def to_dict(self) -> dict[str, Any]:
        config = asdict(self.config)
        config.pop("probe_text")
        return {
            "model": self.model,
            "architecture": self.architecture,
            "num_parameters": self.num_parameters,
            "prompts": list(self.prompts),
            "super_weights": [self._weight_dict(w) for w in self.super_weights + self.unconfirmed],
            "groups": [asdict(g) for g in self.groups],
            "set_loss": self.set_loss,
            "probe": dict(self.probe),
            "fp16": dict(self.fp16),
            "massive": dict(self.massive),
            "super_activations": [asdict(a) for a in self.super_activations],
            "layers": [asdict(s) for s in self.layers],
            "residual_stream": self.residual_stream,
            "rows": [asdict(r) for r in self.rows],
            "source": dict(self.source),
            "timings": dict(self.timings),
            "base_loss": self.base_loss,
            "detection": {**config, "iterations": self.iterations},
            # --- super experts and atlas agreement
            "super_experts": [asdict(e) for e in self.super_experts],
            "atlas": self.atlas.to_dict() if self.atlas is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanResult:
        """Rebuild a result from its JSON (for ablate/quantize/fingerprint given a saved scan)."""
        try:
            weights = [build(SuperWeight, w) for w in data["super_weights"]]
            detection = dict(data["detection"])
            iterations = detection.pop("iterations")
            return cls(
                model=data["model"],
                architecture=data["architecture"],
                num_parameters=int(data["num_parameters"]),
                prompts=list(data["prompts"]),
                super_weights=[w for w in weights if w.confirmed],
                unconfirmed=[w for w in weights if not w.confirmed],
                super_activations=[build(SuperActivation, a) for a in data["super_activations"]],
                layers=[build(LayerStats, s) for s in data["layers"]],
                timings=dict(data["timings"]),
                base_loss=float(data["base_loss"]),
                config=build(DetectionConfig, detection),
                iterations=iterations,
                residual_stream=list(data["residual_stream"]),
                rows=[build(WeightRow, r) for r in data["rows"]],
                source=dict(data["source"]),
                evidence=[build(WeightEvidence, w) for w in data["super_weights"] if "loss_alone" in w],
                groups=[build(WeightGroup, g) for g in data.get("groups", [])],
                set_loss=float(data.get("set_loss", float("nan"))),
                probe=dict(data.get("probe", {})),
                fp16=dict(data.get("fp16", {})),
                massive=dict(data.get("massive", {})),
                # --- super experts and atlas agreement (absent from older scans)
                super_experts=[build(SuperExpert, e) for e in data.get("super_experts") or []],
                atlas=AtlasAgreement.from_dict(data["atlas"]) if data.get("atlas") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultFileError(f"not a superweight scan result ({type(exc).__name__}: {exc})") from None


def read_scan(path: str | Path, option: str | None = "scan") -> ScanResult:
    """The scan saved at ``path`` (``superweight scan --json`` or a run folder's results.json)."""
    return ScanResult.from_dict(read_document(path, "scan", option=option))
