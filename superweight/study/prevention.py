"""Can training keep super weights from forming? Small Llamas from scratch, with and without regularizers.

Each variant trains the same seeded model on the same batches: ``baseline``; ``act_penalty``, which
adds ``penalty * mean_layers (max|h| / rms(h))^2`` of the residual stream (h after each decoder layer,
rms detached) so the largest activations cost loss; and ``single_scale``, OSP's single-scale RMSNorm
(superweight.study.tinylm). At every checkpoint the model is scanned (superweight.detect) and its
residual stream measured: the largest |h| over the median |h| per layer ("massive" from
``MASSIVE_RATIO``; Sun et al. 2024 report ~1000x in LLMs), and perplexity on the test split.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.errors import SuperweightError
from superweight.progress import log, track
from superweight.study.training import TrainSettings

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

VARIANTS = {
    "baseline": "no regularizer",
    "act_penalty": "penalty on the largest residual-stream activation per layer, relative to its RMS",
    "single_scale": "single-scale RMSNorm (one gain per norm, Outlier-Safe Pre-Training 2025)",
}
MASSIVE_RATIO = 100.0  # max|h| / median|h| at or above this counts as a massive activation


def _default_train() -> TrainSettings:
    return TrainSettings(steps=200, eval_every=50, lr=3e-3, batch_size=8, seq_len=128)


@dataclass
class PreventionSettings:
    """Model size, training, which variants, and how checkpoints are measured."""

    train: TrainSettings = field(default_factory=_default_train)
    variants: tuple[str, ...] = tuple(VARIANTS)
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 512
    penalty: float = 1e-3
    warmup: int = 20  # linear warm-up steps, then cosine decay to a tenth of lr
    eval_tokens: int = 16384
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainSettings.from_dict(self.train)
        self.variants = tuple(self.variants)
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise SuperweightError(f"unknown variant(s) {', '.join(unknown) or '(none)'}; choose from "
                                   f"{', '.join(VARIANTS)}", option="variants")  # fmt: skip
        for name in ("hidden", "layers", "heads", "intermediate", "eval_tokens"):
            if getattr(self, name) < 1:
                raise SuperweightError(f"must be at least 1 (got {getattr(self, name)})", option=name)
        if self.hidden % self.heads:
            raise SuperweightError(f"{self.hidden} is not divisible by {self.heads} heads", option="hidden")
        if not self.penalty >= 0 or self.warmup < 0:
            raise SuperweightError("must be >= 0", option="penalty" if not self.penalty >= 0 else "warmup")
        if self.train.split == "test":
            raise SuperweightError("the test split is the evaluation text; train on validation", "train_split")

    def check_data(self) -> None:
        from superweight.measure.corpus import load_text

        load_text(self.train.source, self.data_dir, self.train.split)
        load_text("wikitext2", self.data_dir, "test")

    def fingerprint(self, variant: str) -> str:
        data = self.to_dict()
        data["train"] = {k: v for k, v in data["train"].items() if k != "steps"}
        data["variants"] = variant
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "train": self.train.to_dict(), "variants": list(self.variants)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreventionSettings:
        from superweight.results import build

        return build(cls, data)


@dataclass
class Snapshot:
    """One checkpoint of one variant: its loss, its residual stream, and what a scan finds."""

    step: int
    train_loss: float | None
    nll: float
    perplexity: float
    max_activation: float  # largest |h| in the residual stream (any layer, any token)
    ratios: list[float]  # per layer: max|h| / median|h|
    max_down_input: float  # largest |down_proj input| the scan saw (any layer)
    max_down_output: float
    super_weights: list[dict[str, Any]] = field(default_factory=list)  # confirmed: layer, row, col, value, loss
    candidates: int = 0  # found but not confirmed

    @property
    def max_ratio(self) -> float:
        return max(self.ratios) if self.ratios else math.nan

    @property
    def massive(self) -> bool:
        return self.max_ratio >= MASSIVE_RATIO

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "max_ratio": self.max_ratio, "massive": self.massive}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        from superweight.results import build

        return build(cls, data)


@dataclass
class VariantResult:
    name: str
    description: str
    parameters: int
    snapshots: list[Snapshot]
    seconds: float = 0.0
    resumed_from: int | None = None

    @property
    def final(self) -> Snapshot:
        return self.snapshots[-1]

    def first_massive(self) -> int | None:
        return next((s.step for s in self.snapshots if s.massive), None)

    def first_super_weight(self) -> int | None:
        return next((s.step for s in self.snapshots if s.super_weights), None)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters,
                "snapshots": [s.to_dict() for s in self.snapshots], "seconds": self.seconds,
                "resumed_from": self.resumed_from, "first_massive": self.first_massive(),
                "first_super_weight": self.first_super_weight()}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantResult:
        return cls(data["name"], data["description"], int(data["parameters"]),
                   [Snapshot.from_dict(s) for s in data["snapshots"]], float(data.get("seconds", 0.0)),
                   data.get("resumed_from"))  # fmt: skip


@dataclass
class PreventionResult:
    settings: PreventionSettings
    variants: list[VariantResult]
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    massive_ratio: float = MASSIVE_RATIO

    @property
    def model(self) -> str:
        s = self.settings
        return f"Llama {s.layers}x{s.hidden} (byte-level, from scratch)"

    def variant(self, name: str) -> VariantResult | None:
        return next((v for v in self.variants if v.name == name), None)

    def cost(self, name: str) -> float | None:
        """Final perplexity of ``name`` over the baseline's (the price of the regularizer)."""
        base, other = self.variant("baseline"), self.variant(name)
        if base is None or other is None:
            return None
        return other.final.perplexity / base.final.perplexity

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "settings": self.settings.to_dict(),
                "variants": [v.to_dict() for v in self.variants], "data": dict(self.data), "seconds": self.seconds,
                "massive_ratio": self.massive_ratio,
                "cost": {v.name: self.cost(v.name) for v in self.variants}}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreventionResult:
        return cls(PreventionSettings.from_dict(data["settings"]),
                   [VariantResult.from_dict(v) for v in data["variants"]], dict(data.get("data", {})),
                   float(data.get("seconds", 0.0)), float(data.get("massive_ratio", MASSIVE_RATIO)))  # fmt: skip


# ------------------------------------------------------------------------------------------- running


def activation_penalty(weight: float) -> Callable[[Any], torch.Tensor]:
    """The ``act_penalty`` regularizer on a forward's hidden states (embeddings excluded)."""

    def penalty(out: Any) -> torch.Tensor:
        terms = []
        for h in out.hidden_states[1:]:
            peak = h.abs().amax(dim=(-2, -1))
            rms = h.detach().pow(2).mean(dim=(-2, -1)).sqrt().clamp_min(1e-6)
            terms.append(((peak / rms) ** 2).mean())
        return weight * sum(terms) / len(terms)

    return penalty


def residual_ratios(model: nn.Module, windows: torch.Tensor) -> tuple[float, list[float]]:
    """The largest |h| and, per decoder layer, max|h| / median|h| of the residual stream on ``windows``."""
    import torch

    with torch.no_grad():
        hidden = model(input_ids=windows, output_hidden_states=True, use_cache=False).hidden_states[1:-1]
        # the last entry is after the final norm in HF; the last layer's raw output is read with a hook below
        from superweight.model.architectures import decoder_layers
        from superweight.model.capture import capture_layer_outputs

        with capture_layer_outputs(decoder_layers(model)) as outs:
            model(input_ids=windows[:1], use_cache=False)
        last = outs[len(decoder_layers(model)) - 1]
    ratios, peak = [], 0.0
    for h in [*hidden, last]:
        a = h.abs().float()
        top = float(a.max())
        peak = max(peak, top)
        ratios.append(top / max(float(a.median()), 1e-12))
    return peak, ratios


def _lr_at(step: int, settings: PreventionSettings) -> float:
    lr, total, warm = settings.train.lr, settings.train.steps, settings.warmup
    if step < warm:
        return lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _snapshot(model: nn.Module, tok: Any, step: int, loss: float | None, eval_windows: Any) -> Snapshot:
    from superweight.detect.detection import find_super_weights
    from superweight.measure.perplexity import score_windows
    from superweight.progress import is_quiet, set_quiet

    ppl = score_windows(model, eval_windows, desc=f"perplexity step {step}").perplexity
    peak, ratios = residual_ratios(model, eval_windows.ids[:4])
    quiet = is_quiet()
    set_quiet(True)  # one scan per checkpoint: its round-by-round log would drown the progress
    try:
        scan = find_super_weights(model, tok, model_name="prevention")
    finally:
        set_quiet(quiet)
    return Snapshot(
        step=step,
        train_loss=loss,
        nll=ppl.nll,
        perplexity=ppl.perplexity,
        max_activation=peak,
        ratios=ratios,
        max_down_input=max(s.max_input for s in scan.layers),
        max_down_output=max(s.max_output for s in scan.layers),
        super_weights=[
            {"layer": w.layer, "row": w.row, "col": w.col, "value": w.value, "loss_increase": w.loss_increase}
            for w in scan.super_weights
        ],
        candidates=len(scan.unconfirmed),
    )


def _train_variant(
    name: str,
    settings: PreventionSettings,
    tok: Any,
    train_ids: torch.Tensor,
    eval_windows: Any,
    folder: Path | None,
    on_checkpoint: Callable[[str, int], None] | None,
) -> VariantResult:
    import torch

    from superweight.study.checkpoint import load_checkpoint, save_checkpoint
    from superweight.study.tinylm import single_scale_norms, tiny_llama
    from superweight.study.training import batch_at, make_optimizer, train_step

    train = settings.train
    start_time = time.perf_counter()
    model = tiny_llama(settings.hidden, settings.layers, settings.heads, settings.intermediate, train.seq_len,
                       train.seed)  # fmt: skip
    if name == "single_scale":
        single_scale_norms(model)
    params = dict(model.named_parameters())
    optimizer = make_optimizer(list(params.values()), train)
    extra = activation_penalty(settings.penalty) if name == "act_penalty" else None
    fingerprint = settings.fingerprint(name)
    snapshots: list[Snapshot] = []
    start, resumed, elapsed = 0, None, 0.0
    saved = load_checkpoint(folder) if folder is not None else None
    if saved is not None:
        if saved.state.get("fingerprint") != fingerprint:
            raise SuperweightError(f"{folder} holds a checkpoint of other settings; give a new output folder "
                                   "or restart", option="out")  # fmt: skip
        with torch.no_grad():
            for key, value in saved.model.items():
                params[key].copy_(value)
        if saved.optimizer is not None:
            optimizer.load_state_dict(saved.optimizer)
        start = resumed = min(int(saved.state["step"]), train.steps)
        snapshots = [Snapshot.from_dict(s) for s in saved.state["snapshots"] if s["step"] <= start]
        elapsed = float(saved.state.get("seconds", 0.0))
        log(f"prevention {name}: resuming from step {start}")
    if not snapshots:
        snapshots.append(_snapshot(model, tok, 0, None, eval_windows))
    losses: list[float] = []
    for step in track(range(start, train.steps), f"training ({name})", total=train.steps - start):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, settings)
        batch = batch_at(train_ids, step, train.batch_size, train.seed)
        losses.append(train_step(model, optimizer, batch, train, extra))
        done = step + 1
        if done % train.eval_every == 0 or done == train.steps:
            snapshots.append(_snapshot(model, tok, done, sum(losses) / len(losses), eval_windows))
            losses = []
            if folder is not None:
                seconds = elapsed + time.perf_counter() - start_time
                state = {"fingerprint": fingerprint, "snapshots": [s.to_dict() for s in snapshots],
                         "seconds": seconds}  # fmt: skip
                save_checkpoint(folder, done, state, params, optimizer)
                if on_checkpoint is not None:
                    on_checkpoint(name, done)
    seconds = elapsed + time.perf_counter() - start_time
    return VariantResult(name, VARIANTS[name], sum(p.numel() for p in params.values()), snapshots, seconds, resumed)


def run_prevention(
    settings: PreventionSettings | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    on_checkpoint: Callable[[str, int], None] | None = None,
) -> PreventionResult:
    """Train each variant from scratch, scanning every ``eval_every`` steps (see the module docstring)."""
    import torch

    from superweight.measure.corpus import load_text, tokenize_corpus
    from superweight.study.tinylm import byte_tokenizer
    from superweight.study.training import tensor_digest, training_windows

    settings = settings or PreventionSettings()
    start = time.perf_counter()
    tok = byte_tokenizer()
    threads = torch.get_num_threads()
    train_windows = training_windows(tok, settings.train, settings.data_dir)
    eval_corpus = load_text("wikitext2", settings.data_dir, "test")
    eval_windows = tokenize_corpus(tok, eval_corpus, seq_len=settings.train.seq_len, max_tokens=settings.eval_tokens)
    variants = []
    for name in settings.variants:
        folder = None if checkpoint_dir is None else Path(checkpoint_dir) / name
        variants.append(_train_variant(name, settings, tok, train_windows.ids, eval_windows, folder, on_checkpoint))
    return PreventionResult(
        settings=settings,
        variants=variants,
        data={
            "train": {
                "source": train_windows.source,
                "split": train_windows.split,
                "sha256": train_windows.sha256,
                "windows": train_windows.windows,
                "tokens_sha256": tensor_digest(train_windows.ids),
            },
            "eval": {**eval_windows.describe(), "tokens_sha256": tensor_digest(eval_windows.ids)},
            "seed": settings.train.seed,
            "torch_threads": threads,
        },
        seconds=time.perf_counter() - start,
    )
