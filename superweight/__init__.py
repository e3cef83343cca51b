"""superweight: find, measure, quantize around and guard the super weights of large language models.

The public verbs are imported lazily, so ``import superweight`` (and ``superweight --help``) stays
fast and torch is loaded only when a verb is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load_model": "superweight.model.loading",
    "LoadedModel": "superweight.model.loading",
    "down_projections": "superweight.model.architectures",
    "register_adapter": "superweight.model.architectures",
    "Adapter": "superweight.model.architectures",
    "DownProj": "superweight.model.architectures",
    "find_super_weights": "superweight.detect.detection",
    "scan_model": "superweight.detect.detection",
    "read_scan": "superweight.detect.result",
    "DetectionConfig": "superweight.detect.result",
    "ScanResult": "superweight.detect.result",
    "SuperWeight": "superweight.coordinates",
    "SuperActivation": "superweight.coordinates",
    "find_super_experts": "superweight.detect.experts",
    "load_atlas": "superweight.detect.atlas",
    "check_shapes": "superweight.detect.atlas_check",
    "quantize": "superweight.quant.rtn",
    "dequantize": "superweight.quant.rtn",
    "QuantConfig": "superweight.quant.rtn",
    "apply_quantization": "superweight.quant.methods",
    "WeightSnapshot": "superweight.quant.methods",
    "w8a8": "superweight.quant.w8a8",
    "load_quantized_model": "superweight.quant.checkpoint",
    "run_quantization": "superweight.quant.sweep",
    "evaluate_checkpoint": "superweight.quant.sweep",
    "QuantPlan": "superweight.quant.result",
    "QuantizationResult": "superweight.quant.result",
    "perplexity": "superweight.measure.perplexity",
    "PerplexityResult": "superweight.measure.perplexity",
    "perplexity_on_ids": "superweight.measure.perplexity",
    "load_text": "superweight.measure.corpus",
    "tokenize_corpus": "superweight.measure.corpus",
    "TokenWindows": "superweight.measure.corpus",
    "next_token_logprobs": "superweight.measure.perplexity",
    "kl_divergence": "superweight.measure.perplexity",
    "WeightRef": "superweight.model.interventions",
    "refs_for": "superweight.model.interventions",
    "zeroed": "superweight.model.interventions",
    "scaled": "superweight.model.interventions",
    "restored_activation": "superweight.model.interventions",
    "top_k_refs": "superweight.model.interventions",
    "random_k_refs": "superweight.model.interventions",
    "Condition": "superweight.measure.conditions",
    "EvalSettings": "superweight.measure.settings",
    "measure_conditions": "superweight.measure.conditions",
    "run_ablation": "superweight.measure.ablation",
    "run_scaling": "superweight.measure.ablation",
    "AblationResult": "superweight.measure.ablation",
    "ScalingResult": "superweight.measure.ablation",
    "score_windows": "superweight.measure.perplexity",
    "evaluate_tasks": "superweight.measure.zeroshot",
    "TaskSuite": "superweight.measure.zeroshot",
    "fingerprint": "superweight.guard.fingerprint",
    "fingerprint_memory": "superweight.guard.fingerprint",
    "load_manifest": "superweight.guard.manifest",
    "save_manifest": "superweight.guard.manifest",
    "verify_model": "superweight.guard.verify",
    "verify_memory": "superweight.guard.verify",
    "run_canary": "superweight.guard.canary",
    "compare_canary": "superweight.guard.canary",
    "diff_checkpoints": "superweight.guard.diff",
    "simulate_attacks": "superweight.guard.attacks",
    "SuperWeightCallback": "superweight.guard.callback",
    "attach": "superweight.guard.callback",
    "watch": "superweight.guard.watch",
    "attack_quantized": "superweight.guard.quantized_attacks",
    "repair_model": "superweight.guard.repair",
    "sign_model": "superweight.guard.signing",
    "verify_signed_model": "superweight.guard.signing",
    "write_run": "superweight.report.runs",
    "build_report": "superweight.report.html",
    "read_document": "superweight.results",
    "draw_all": "superweight.report.figures",
    "page_for": "superweight.report.pages",
    "run_recovery": "superweight.study.recovery",
    "RecoverySettings": "superweight.study.recovery",
    "run_prevention": "superweight.study.prevention",
    "PreventionSettings": "superweight.study.prevention",
    "TrainSettings": "superweight.study.training",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'superweight' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
