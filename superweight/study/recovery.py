"""Can fine-tuning bring back what a lost super weight took? (The seed's open question; Yu et al. 2024.)

Zero every confirmed super weight, fine-tune the damaged model on local text (full or LoRA), and
evaluate every ``eval_every`` steps on *other* text. Three references are measured in the same run:
restoring the super activation, restoring the super weight exactly (at step 0, and in the fine-tuned
model at the end), and the undamaged model fine-tuned the same way (the ``control``), so that what
fine-tuning does to any model is not counted as recovery:

    recovered(t) = 1 - (nll_damaged(t) - nll_control(t)) / (nll_damaged(0) - nll_original)

Each phase (damaged, control) checkpoints into its own folder and resumes from its last step; a
longer ``steps`` continues a finished run. The user's model is restored bit-exactly at the end.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.coordinates import SuperWeight
from superweight.errors import SuperweightError
from superweight.io import from_json, write_json
from superweight.progress import log, track
from superweight.study.bench import SA_PROMPT, Bench, Point
from superweight.study.lora import lora_adapters
from superweight.study.training import TrainSettings

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn

    from superweight.coordinates import Findings
    from superweight.model.loading import LoadedModel

METHODS = ("full", "lora")
PHASES = ("damaged", "control")
REFERENCES = "references.json"
SEED_RECOVERY = 0.40  # the seed article: restoring or retraining recovers about 40% of the loss


@dataclass
class RecoverySettings:
    """The fine-tuning (``train``), the method, and how each evaluation is made."""

    train: TrainSettings = field(default_factory=TrainSettings)
    method: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    eval_source: str = "wikitext2"  # evaluated on its test split
    eval_tokens: int = 2048
    eval_seq_len: int = 512
    tasks: tuple[str, ...] = ("lambada_openai", "piqa")
    limit: int = 20
    batch_size: int = 8  # zero-shot batch size
    data_dir: str | None = None
    control: bool = True  # also fine-tune the undamaged model (the reference that makes the share honest)

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainSettings.from_dict(self.train)
        self.tasks = tuple(self.tasks)
        if self.method not in METHODS:
            raise SuperweightError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}", "method")
        for name in ("lora_rank", "eval_tokens", "eval_seq_len", "limit", "batch_size"):
            if getattr(self, name) < (2 if name in ("eval_tokens", "eval_seq_len") else 1):
                raise SuperweightError(f"must be a positive number (got {getattr(self, name)})", option=name)
        same_file = self.train.source == self.eval_source and self.train.source not in ("wikitext2", "c4")
        if same_file or (self.train.source == self.eval_source and self.train.split == "test"):
            raise SuperweightError(
                f"training on the {self.eval_source} test split would train on the evaluation text; "
                "train on the validation split or another file",
                option="train_split",
            )

    def check_data(self) -> None:
        """Missing data fails now, before a model is loaded."""
        from superweight.measure.corpus import load_text
        from superweight.measure.settings import EvalSettings

        load_text(self.train.source, self.data_dir, self.train.split)
        EvalSettings(sources=(self.eval_source,), tasks=self.tasks, data_dir=self.data_dir).check_data()

    def fingerprint(self) -> str:
        """What a checkpoint must agree on to be resumed (everything but the number of steps)."""
        data = self.to_dict()
        data["train"] = {k: v for k, v in data["train"].items() if k != "steps"}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "train": self.train.to_dict(), "tasks": list(self.tasks)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecoverySettings:
        from superweight.results import build

        return build(cls, data)


@dataclass
class RecoveryResult:
    model: str
    architecture: str
    settings: RecoverySettings
    super_weights: list[SuperWeight]
    original_values: list[float]
    references: dict[str, Point]  # original, damaged, restored-activation, restored-weight (step 0)
    damaged: list[Point]  # fine-tuning the damaged model, step 0 first
    control: list[Point] = field(default_factory=list)  # fine-tuning the undamaged model the same way
    final_restored_weight: Point | None = None  # the fine-tuned damaged model with the super weights put back
    data: dict[str, Any] = field(default_factory=dict)  # sources, splits, sha256 of files and of token windows
    resumed_from: dict[str, int] = field(default_factory=dict)  # phase -> step a checkpoint resumed at
    seconds: float = 0.0
    seed_recovery: float = SEED_RECOVERY

    def share(self, point: Point, control: Point | None, metric: str = "nll") -> float | None:
        """The share of the damage taken back at ``point`` (against ``control``, else the original)."""
        orig, dmg0 = self.references["original"], self.references["damaged"]
        get = (lambda p: p.nll) if metric == "nll" else (lambda p: -(p.mean_accuracy or 0.0))
        if metric != "nll" and (point.mean_accuracy is None or orig.mean_accuracy is None):
            return None
        damage = get(dmg0) - get(orig)
        if not damage > 0:
            return None
        target = get(control) if control is not None else get(orig)
        return 1.0 - (get(point) - target) / damage

    def curve(self, metric: str = "nll") -> list[tuple[int, float | None, float | None]]:
        """(step, share against the fine-tuned control, share against the untouched original) per point."""
        control = {p.step: p for p in self.control}
        return [(p.step, self.share(p, control.get(p.step), metric), self.share(p, None, metric)) for p in self.damaged]

    def reference_share(self, name: str, metric: str = "nll") -> float | None:
        point = self.final_restored_weight if name == "final-restored-weight" else self.references.get(name)
        if point is None:
            return None
        control = {p.step: p for p in self.control}.get(point.step) if name == "final-restored-weight" else None
        return self.share(point, control, metric)

    def to_dict(self) -> dict[str, Any]:
        curve = self.curve("nll")
        return {
            "model": self.model,
            "architecture": self.architecture,
            "settings": self.settings.to_dict(),
            "super_weights": [asdict(w) for w in self.super_weights],
            "original_values": list(self.original_values),
            "references": {k: v.to_dict() for k, v in self.references.items()},
            "damaged": [p.to_dict() for p in self.damaged],
            "control": [p.to_dict() for p in self.control],
            "final_restored_weight": None if (f := self.final_restored_weight) is None else f.to_dict(),
            "data": dict(self.data),
            "resumed_from": dict(self.resumed_from),
            "seconds": self.seconds,
            "seed_recovery": self.seed_recovery,
            "recovered": {"steps": [c[0] for c in curve], "vs_control": [c[1] for c in curve],
                          "vs_original": [c[2] for c in curve]},
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecoveryResult:
        from superweight.results import build

        final = data.get("final_restored_weight")
        return cls(
            model=data["model"],
            architecture=data["architecture"],
            settings=RecoverySettings.from_dict(data["settings"]),
            super_weights=[build(SuperWeight, w) for w in data["super_weights"]],
            original_values=[float(v) for v in data["original_values"]],
            references={k: Point.from_dict(v) for k, v in data["references"].items()},
            damaged=[Point.from_dict(p) for p in data["damaged"]],
            control=[Point.from_dict(p) for p in data.get("control", [])],
            final_restored_weight=None if final is None else Point.from_dict(final),
            data=dict(data.get("data", {})),
            resumed_from=dict(data.get("resumed_from", {})),
            seconds=float(data.get("seconds", 0.0)),
            seed_recovery=float(data.get("seed_recovery", SEED_RECOVERY)),
        )


# ------------------------------------------------------------------------------------------- running


def _trainable(model: nn.Module) -> dict[str, Any]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _phase(
    lm: LoadedModel,
    bench: Bench,
    settings: RecoverySettings,
    name: str,
    train_ids: Any,
    folder: Path | None,
    fingerprint: str,
    on_checkpoint: Callable[[str, int], None] | None,
) -> tuple[list[Point], int | None]:
    """Fine-tune the model as it is now (damaged or not, LoRA-wrapped or not) from its last checkpoint."""
    import torch

    from superweight.study.checkpoint import load_checkpoint, save_checkpoint
    from superweight.study.training import batch_at, make_optimizer, train_step

    train = settings.train
    model = lm.model
    if settings.method == "full":
        model.requires_grad_(True)
    params = _trainable(model)
    optimizer = make_optimizer(list(params.values()), train)
    points: list[Point] = []
    start, resumed = 0, None
    saved = load_checkpoint(folder) if folder is not None else None
    if saved is not None:
        if saved.state.get("fingerprint") != fingerprint:
            raise SuperweightError(
                f"{folder} holds a checkpoint of other settings; give a new output folder or restart", option="out"
            )
        with torch.no_grad():
            for key, value in saved.model.items():
                params[key].copy_(value)
        if saved.optimizer is not None:
            optimizer.load_state_dict(saved.optimizer)
        points = [Point.from_dict(p) for p in saved.state["points"]]
        start = resumed = min(int(saved.state["step"]), train.steps)
        points = [p for p in points if p.step <= start]
        log(f"recovery {name}: resuming from step {start}")
    if not points:
        points.append(bench.evaluate(0, desc=f"{name} step 0"))
    losses: list[float] = []
    for step in track(range(start, train.steps), f"fine-tuning ({name})", total=train.steps - start):
        losses.append(train_step(model, optimizer, batch_at(train_ids, step, train.batch_size, train.seed), train))
        done = step + 1
        if done % train.eval_every == 0 or done == train.steps:
            points.append(bench.evaluate(done, sum(losses) / len(losses), desc=f"{name} step {done}"))
            losses = []
            if folder is not None:
                state = {"fingerprint": fingerprint, "points": [p.to_dict() for p in points]}
                save_checkpoint(folder, done, state, params, optimizer)
                if on_checkpoint is not None:
                    on_checkpoint(name, done)
    return points, resumed


def run_recovery(
    lm: LoadedModel,
    findings: Findings,
    settings: RecoverySettings | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    on_checkpoint: Callable[[str, int], None] | None = None,
) -> RecoveryResult:
    """Zero the confirmed super weights, fine-tune, and measure what comes back (see the module docstring).

    ``checkpoint_dir`` makes the run resumable; ``on_checkpoint(phase, step)`` is called after each save.
    """
    import torch

    from superweight.measure.ablation import activation_probe
    from superweight.measure.conditions import Condition
    from superweight.measure.corpus import load_text, tokenize_corpus
    from superweight.measure.zeroshot import TaskSuite
    from superweight.model.interventions import edited, refs_for, zeroed
    from superweight.study.training import tensor_digest, training_windows

    settings = settings or RecoverySettings()
    weights = [w for w in findings.super_weights if w.confirmed]
    if not weights:
        raise SuperweightError("the scan confirmed no super weight, so there is nothing to zero and recover")
    start = time.perf_counter()
    model, tok = lm.model, lm.tokenizer
    torch.manual_seed(settings.train.seed)
    train_windows = training_windows(tok, settings.train, settings.data_dir, model)
    eval_corpus = load_text(settings.eval_source, settings.data_dir, "test")
    eval_windows = tokenize_corpus(tok, eval_corpus, seq_len=settings.eval_seq_len, max_tokens=settings.eval_tokens,
                                   model=model)  # fmt: skip
    refs = refs_for(model, weights)
    originals = [ref.get().clone() for ref in refs]
    probe = activation_probe(model, findings)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    fingerprint = settings.fingerprint() + ":" + ",".join(f"{w.module}[{w.row},{w.col}]" for w in weights)
    pristine = {k: v.detach().clone() for k, v in model.state_dict().items()} if settings.method == "full" else None
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    suite = TaskSuite(model, tok, settings.tasks, data_dir=settings.data_dir, batch_size=settings.batch_size) \
        if settings.tasks else None  # fmt: skip
    prompts = getattr(findings, "prompts", None) or [SA_PROMPT]  # the super activation's tokens index prompts[0]
    bench = Bench(model, tok, eval_windows, refs, probe, suite, settings.limit, prompts[0])
    zero = [torch.zeros_like(o) for o in originals]
    try:
        refs_state = {"original": None, "damaged": Condition("damaged", refs)}
        if probe is not None:
            tokens = findings.super_activations[0].tokens or None
            refs_state["restored-activation"] = Condition("sa", refs, restores=[(probe.site, probe.channel, tokens)])
        references = _saved_references(folder, fingerprint)
        if references is None:
            references = {}
            for name, condition in refs_state.items():
                if condition is None:
                    references[name] = bench.evaluate(0, desc=name)
                else:
                    with condition.apply():
                        references[name] = bench.evaluate(0, desc=name)
            with zeroed(refs):  # zeroed, then each value written back exactly: the pipeline must give 100%
                _set(refs, originals)
                references["restored-weight"] = bench.evaluate(0, desc="restored-weight")
            if folder is not None:
                payload = {"fingerprint": fingerprint, "references": {k: v.to_dict() for k, v in references.items()}}
                write_json(folder / REFERENCES, payload)
        phases: dict[str, list[Point]] = {}
        resumed: dict[str, int] = {}
        final = None
        for phase in PHASES if settings.control else PHASES[:1]:
            if pristine is not None:
                with torch.no_grad():
                    model.load_state_dict(pristine)
            _set(refs, zero if phase == "damaged" else originals)
            sub = None if folder is None else folder / phase
            with ExitStack() as stack:
                if settings.method == "lora":
                    rank, alpha = settings.lora_rank, settings.lora_alpha
                    stack.enter_context(lora_adapters(model, rank, alpha, settings.train.seed))
                points, at = _phase(lm, bench, settings, phase, train_windows.ids, sub, fingerprint, on_checkpoint)
                if phase == "damaged":
                    with edited(refs, lambda w: w):  # restored on exit: the fine-tuned model stays as trained
                        _set(refs, originals)
                        final = bench.evaluate(points[-1].step, desc="fine-tuned + super weights restored")
            phases[phase] = points
            if at is not None:
                resumed[phase] = at
    finally:
        if pristine is not None:
            with torch.no_grad():
                model.load_state_dict(pristine)
        _set(refs, originals)
        for name, p in model.named_parameters():
            p.requires_grad_(grads.get(name, False))
        model.eval()
        if suite is not None:
            suite.close()
    return RecoveryResult(
        model=lm.spec,
        architecture=lm.architecture,
        settings=settings,
        super_weights=weights,
        original_values=[float(o) for o in originals],
        references=references,
        damaged=phases["damaged"],
        control=phases.get("control", []),
        final_restored_weight=final,
        data={
            "train": {
                "source": train_windows.source,
                "split": train_windows.split,
                "sha256": train_windows.sha256,
                "windows": train_windows.windows,
                "seq_len": train_windows.seq_len,
                "tokens_sha256": tensor_digest(train_windows.ids),
            },
            "eval": {**eval_windows.describe(), "tokens_sha256": tensor_digest(eval_windows.ids)},
            "seed": settings.train.seed,
        },
        resumed_from=resumed,
        seconds=time.perf_counter() - start,
    )


def _saved_references(folder: Path | None, fingerprint: str) -> dict[str, Point] | None:
    """The step-0 references of an earlier run of the same settings, so a resumed run does not redo them."""
    if folder is None or not (folder / REFERENCES).is_file():
        return None
    data = from_json((folder / REFERENCES).read_text(encoding="utf-8"))
    if data.get("fingerprint") != fingerprint:
        raise SuperweightError(f"{folder} holds a run of other settings; give a new output folder or restart", "out")
    log(f"recovery: step-0 references from {folder / REFERENCES}")
    return {k: Point.from_dict(v) for k, v in data["references"].items()}


def _set(refs: list[Any], values: list[Any]) -> None:
    import torch

    with torch.no_grad():
        for ref, value in zip(refs, values, strict=True):
            ref.site.weight[ref.row, ref.col] = value
