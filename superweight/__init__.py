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
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'superweight' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
