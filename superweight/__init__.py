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
    "load_model": "superweight.loading",
    "LoadedModel": "superweight.loading",
    "down_projections": "superweight.architectures",
    "register_adapter": "superweight.architectures",
    "Adapter": "superweight.architectures",
    "DownProj": "superweight.architectures",
    "find_super_weights": "superweight.detection",
    "DetectionConfig": "superweight.detection",
    "ScanResult": "superweight.detection",
    "SuperWeight": "superweight.detection",
    "SuperActivation": "superweight.detection",
    "quantize": "superweight.quantization",
    "dequantize": "superweight.quantization",
    "QuantConfig": "superweight.quantization",
    "apply_quantization": "superweight.quant_methods",
    "WeightSnapshot": "superweight.quant_methods",
    "w8a8": "superweight.activation_quant",
    "load_quantized_model": "superweight.quant_checkpoint",
    "perplexity": "superweight.evaluation",
    "PerplexityResult": "superweight.evaluation",
    "perplexity_on_ids": "superweight.evaluation",
    "load_text": "superweight.evaluation",
    "tokenize_corpus": "superweight.evaluation",
    "TokenWindows": "superweight.evaluation",
    "next_token_logprobs": "superweight.evaluation",
    "kl_divergence": "superweight.evaluation",
    "WeightRef": "superweight.interventions",
    "zeroed": "superweight.interventions",
    "scaled": "superweight.interventions",
    "restored_activation": "superweight.interventions",
    "top_k_refs": "superweight.interventions",
    "random_k_refs": "superweight.interventions",
    "Condition": "superweight.conditions",
    "Settings": "superweight.experiments",
    "measure_conditions": "superweight.conditions",
    "run_ablation": "superweight.experiments",
    "run_scaling": "superweight.experiments",
    "evaluate_tasks": "superweight.zeroshot",
    "TaskSuite": "superweight.zeroshot",
    "fingerprint": "superweight.manifest",
    "fingerprint_memory": "superweight.manifest",
    "load_manifest": "superweight.manifest",
    "save_manifest": "superweight.manifest",
    "verify_model": "superweight.verification",
    "verify_memory": "superweight.verification",
    "run_canary": "superweight.canary",
    "compare_canary": "superweight.canary",
    "diff_checkpoints": "superweight.checkpoint_diff",
    "simulate_attacks": "superweight.attacks",
    "write_run": "superweight.runs",
    "build_report": "superweight.reporting",
    "read_run": "superweight.reporting",
    "draw_all": "superweight.figures",
    "super_weight_rows": "superweight.figures",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'superweight' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
