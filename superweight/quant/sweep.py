"""The quantization sweep as a library verb: every method x bits x block, judged at equal bits.

``run_quantization`` measures the unquantized model, then quantizes the selected linears in memory by
each variant of a :class:`~superweight.quant.result.QuantPlan` (restoring the weights bit-exactly after
each), and scores it with the same :class:`~superweight.measure.settings.EvalSettings` that ablate and
scale take: perplexity on every source and, from the same forward pass, KL from the unquantized model on
the first (:func:`~superweight.measure.perplexity.score_windows`), plus zero-shot accuracy per task.
``evaluate_checkpoint`` scores a checkpoint written with ``QuantPlan(save=...)`` against its base model.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.coordinates import Findings
from superweight.measure.runner import Measured, provenance
from superweight.measure.settings import EvalSettings
from superweight.quant.result import Baseline, QuantizationResult, QuantPlan, Variant

if TYPE_CHECKING:
    import torch
    from torch import nn

    from superweight.measure.corpus import TokenWindows
    from superweight.measure.zeroshot import TaskSuite
    from superweight.model.loading import LoadedModel

CALIBRATION_SOURCE = "wikitext2"  # calibration reads its validation split, never the test text
W8A8_METHODS = ("naive", "sa", "smoothquant")


@dataclass
class Scorer:
    """The evaluation data, loaded once: token windows per source, the KL reference, the task suite."""

    settings: EvalSettings
    windows: dict[str, TokenWindows]
    reference: list[torch.Tensor] | None  # the unquantized model's log-probs on the first source
    suite: TaskSuite | None

    def score(self, model: nn.Module, desc: str) -> dict[str, Any]:
        """Perplexity per source (KL on the first), accuracy per task: one pass per source."""
        from superweight.measure.perplexity import score_windows

        out: dict[str, Any] = {"perplexity": {}, "accuracy": {}, "details": {}, "kl": None}
        for n, (source, windows) in enumerate(self.windows.items()):
            scored = score_windows(model, windows, self.reference if n == 0 else None, desc=f"{desc} {source}")
            out["perplexity"][source] = scored.perplexity.perplexity
            out["details"][source] = scored.perplexity.to_dict()
            if scored.kl is not None:
                out["kl"] = scored.kl
        if self.suite is not None:
            for task, r in self.suite.evaluate(self.settings.limit, desc).items():
                if r.skipped is None:
                    out["accuracy"][task] = r.accuracy
                    out["details"][task] = r.to_dict()
        return out

    def data(self) -> dict[str, Any]:
        return {source: w.describe() for source, w in self.windows.items()}


def _scorer(lm: LoadedModel, settings: EvalSettings, kl: bool, stack: ExitStack) -> Scorer:
    import torch

    from superweight.measure.corpus import load_text, tokenize_corpus
    from superweight.measure.perplexity import next_token_logprobs
    from superweight.progress import step

    windows = {
        source: tokenize_corpus(lm.tokenizer, load_text(source, settings.data_dir, settings.split),
                                seq_len=settings.seq_len, max_tokens=settings.max_tokens, model=lm.model)
        for source in settings.sources
    }  # fmt: skip
    reference = None
    if kl:
        with step("reference log-probabilities for KL"):
            reference = next_token_logprobs(lm.model, windows[settings.sources[0]], dtype=torch.float16)
    suite = None
    if settings.tasks:
        suite = stack.enter_context(_suite(lm, settings))
    return Scorer(settings, windows, reference, suite)


def _calibration_windows(lm: LoadedModel, settings: EvalSettings, tokens: int) -> torch.Tensor:
    from superweight.measure.corpus import load_text, tokenize_corpus

    text = load_text(CALIBRATION_SOURCE, settings.data_dir, "validation")
    return tokenize_corpus(lm.tokenizer, text, seq_len=settings.seq_len, max_tokens=tokens, model=lm.model).ids


def _variant(method: str, bits: int, block: str, bits_per_weight: float, scores: dict[str, Any], **extra) -> Variant:
    return Variant(method=method, bits=bits, block=block, bits_per_weight=bits_per_weight, **scores, **extra)


def _finish(lm: LoadedModel, settings: EvalSettings, scorer: Scorer, start: float, **fields) -> QuantizationResult:
    measured = Measured(rows={}, data=scorer.data(), token_probs={}, cache_hits=[], passes={})
    return QuantizationResult(
        model=lm.spec,
        architecture=lm.architecture,
        source=settings.sources[0],
        provenance=provenance(lm, settings, measured, time.perf_counter() - start),
        **fields,
    )


def run_quantization(
    lm: LoadedModel, scan: Findings, settings: EvalSettings | None = None, plan: QuantPlan | None = None
) -> QuantizationResult:
    """Every variant of ``plan`` against the unquantized model; the weights are restored after each."""
    from superweight.progress import log
    from superweight.quant.checkpoint import save_checkpoint
    from superweight.quant.methods import (
        Protection,
        WeightSnapshot,
        apply_quantization,
        collect_inputs,
        linear_weight,
        select_linears,
    )
    from superweight.quant.rtn import group_size

    settings = settings or EvalSettings()
    plan = plan or QuantPlan()
    runs = plan.variants()
    start = time.perf_counter()
    linears = select_linears(lm.model, plan.modules)
    for _, config in runs:  # a block longer than a row fails now, before minutes of work
        for _, module in linears:
            group_size(tuple(linear_weight(module).shape), config.block)
    protection = Protection.from_scan(lm.model, scan)
    variants: list[Variant] = []
    with ExitStack() as stack:
        scorer = _scorer(lm, settings, plan.kl, stack)
        base = scorer.score(lm.model, "unquantized")
        baseline = Baseline(base["perplexity"], base["accuracy"], base["details"])
        log(f"unquantized perplexity {baseline.perplexity[settings.sources[0]]:.3f}")
        calib = _calibration_windows(lm, settings, plan.calib_tokens) if plan.needs_calibration else None
        calibration = collect_inputs(lm.model, linears, calib) if "sw+clip" in plan.methods else None
        with WeightSnapshot(linears) as snapshot:
            for method, config in runs:
                report = apply_quantization(snapshot, method, config, protection, calibration, keep=bool(plan.save))
                name = f"{method.label} {config.bits}-bit {config.label}"
                variant = _variant(method.label, config.bits, config.label, report.bits_per_weight,
                                   scorer.score(lm.model, name), quantization=report.to_dict())  # fmt: skip
                log(f"{name}: ppl {variant.perplexity[settings.sources[0]]:.3f}")
                if plan.save:
                    manifest = save_checkpoint(plan.save, lm, report)
                    variant.checkpoint = {"path": str(plan.save), "bytes": manifest.bytes}
                variants.append(variant)
                snapshot.restore()
        if plan.activation:
            variants += _w8a8(lm, linears, scan, scorer, calib, plan.smoothquant_alpha)
    return _finish(lm, settings, scorer, start, plan=plan, baseline=baseline, variants=variants,
                   modules=len(linears), super_weights=list(scan.super_weights),
                   super_activations=list(scan.super_activations), protection=protection.to_dict())  # fmt: skip


def _w8a8(
    lm: LoadedModel,
    linears: list[tuple[str, nn.Module]],
    scan: Findings,
    scorer: Scorer,
    calib: torch.Tensor,
    alpha: float,
) -> list[Variant]:
    """Simulated W8A8 (per-tensor INT8 weights, per-token INT8 inputs) by each activation method."""
    from superweight.quant.w8a8 import held_channels, smoothing_factors, w8a8

    held = held_channels(linears, scan, int(lm.model.config.hidden_size))
    smoothing = smoothing_factors(lm.model, linears, calib, alpha)
    weights = sum(m.weight.numel() for _, m in linears)
    bpw = 8 + 16 * len(linears) / weights  # one fp16 scale per tensor
    rows = []
    for method in W8A8_METHODS:
        with w8a8(linears, method, held=held, smoothing=smoothing) as report:
            scores = scorer.score(lm.model, f"w8a8:{method}")
        activation = report.to_dict() | {"alpha": alpha if method == "smoothquant" else None}
        rows.append(_variant(f"w8a8:{method}", 8, "tensor", bpw, scores, activation=activation))
    return rows


def evaluate_checkpoint(
    base: LoadedModel, checkpoint: str | Path, settings: EvalSettings | None = None, *, kl: bool = True
) -> QuantizationResult:
    """A checkpoint written by a sweep (``QuantPlan(save=...)``), scored against the model it quantized."""
    from superweight.quant.checkpoint import check_same_model, load_quantized_model, read_manifest

    settings = settings or EvalSettings()
    start = time.perf_counter()
    manifest = read_manifest(checkpoint)
    quantized = load_quantized_model(checkpoint)
    check_same_model(quantized, base, manifest)
    plan = QuantPlan(bits=(manifest.bits,), blocks=(manifest.block,), methods=(manifest.method,), kl=kl)
    with ExitStack() as stack:
        scorer = _scorer(base, settings, kl, stack)
        base_scores = scorer.score(base.model, "unquantized")
    with ExitStack() as stack:  # a task suite wraps one model: the checkpoint gets its own
        scorer.suite = stack.enter_context(_suite(quantized, settings)) if settings.tasks else None
        scores = scorer.score(quantized.model, f"checkpoint {manifest.method}")
    variant = _variant(manifest.method, manifest.bits, manifest.block, manifest.bits_per_weight, scores,
                       checkpoint={"path": str(checkpoint), "bytes": manifest.bytes})  # fmt: skip
    return _finish(base, settings, scorer, start, plan=plan,
                   baseline=Baseline(base_scores["perplexity"], base_scores["accuracy"], base_scores["details"]),
                   variants=[variant], modules=manifest.modules, super_weights=[], super_activations=[],
                   protection={})  # fmt: skip


def _suite(lm: LoadedModel, settings: EvalSettings) -> TaskSuite:
    from superweight.measure.zeroshot import TaskSuite

    return TaskSuite(lm.model, lm.tokenizer, settings.tasks, data_dir=settings.data_dir, batch_size=settings.batch_size)
