"""What a model being trained is compared with: its super weights and canary site, read from a scan or
a manifest, and located in a live model (a plain ``transformers`` model or a PEFT/LoRA one).

A LoRA adapter never touches the base weight, yet it moves the super weight the model computes with:
the merged value ``W[row, col] + scaling * B[row, :] @ A[:, col]`` (summed over the active adapters)
is what counts. It is computed from the live tensors without merging anything in place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.errors import SuperweightError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from superweight.coordinates import Findings
    from superweight.model.architectures import DownProj


MANIFEST_SCHEMA = "superweight.guard.manifest"  # the "schema" value of a manifest file (guard.manifest.SCHEMA)


class ReferenceMismatchError(SuperweightError):
    """The model being guarded is not the model the reference (scan or manifest) describes."""


@dataclass(frozen=True)
class GuardedWeight:
    """One super weight to watch: where it is, and (from a manifest) the value it must have."""

    layer: int
    module: str
    row: int
    col: int
    value: float | None = None  # None: read from the model when the guard is attached


@dataclass(frozen=True)
class Reference:
    """The reference a training guard compares with, whatever it was read from."""

    architecture: str
    weights: tuple[GuardedWeight, ...]
    canary_layer: int | None  # the super activation: down_proj output of this layer ...
    canary_channel: int | None  # ... at this hidden channel
    source: str = "scan"  # "scan" or the manifest's path


def manifest_fields(manifest: Any) -> dict[str, Any]:
    """The one adapter to the manifest's type: a plain dict today, maybe a dataclass with ``to_dict``."""
    if isinstance(manifest, dict):
        return manifest
    if hasattr(manifest, "to_dict"):
        return manifest.to_dict()
    if dataclasses.is_dataclass(manifest) and not isinstance(manifest, type):
        return dataclasses.asdict(manifest)
    raise ReferenceMismatchError(f"not a manifest: {type(manifest).__name__}", option="reference")


def _is_manifest(obj: Any) -> bool:
    """A manifest in memory (a dict, or a typed manifest whose ``to_dict`` has the manifest schema)?"""
    if isinstance(obj, dict):
        return True
    if not hasattr(obj, "to_dict") or hasattr(obj, "prompts"):  # a ScanResult has prompts
        return False
    data = obj.to_dict()
    return isinstance(data, dict) and data.get("schema") == MANIFEST_SCHEMA


def _canary_site(
    weights: list[GuardedWeight], activations: list[tuple[int, int, float]]
) -> tuple[int | None, int | None]:
    """The largest super activation written by a guarded super weight (same layer, channel = row)."""
    rows = {(w.layer, w.row) for w in weights}
    matching = [a for a in activations if (a[0], a[1]) in rows] or activations
    if matching:
        layer, channel, _ = max(matching, key=lambda a: abs(a[2]))
        return layer, channel
    if weights:
        return weights[0].layer, weights[0].row
    return None, None


def reference_from_findings(findings: Findings, architecture: str) -> Reference:
    """A scan (or any ``Findings``): coordinates only; the values are read at attach time."""
    weights = [GuardedWeight(w.layer, w.module, w.row, w.col) for w in findings.super_weights]
    acts = [(a.layer, a.channel, a.value) for a in findings.super_activations]
    return Reference(architecture, tuple(weights), *_canary_site(weights, acts), source="scan")


def reference_from_manifest(manifest: Any, source: str = "manifest") -> Reference:
    """A manifest: coordinates and the exact in-memory values it recorded."""
    data = manifest_fields(manifest)
    try:
        model = data.get("model", {})
        architecture = (
            model.get("memory", {}).get("architecture") or (model.get("identity", {}).get("classes") or [""])[0]
        )
        weights = [
            GuardedWeight(int(e["layer"]), str(e["module"]), int(e["row"]), int(e["col"]), float(e["value"]))
            for e in data["super_weights"]
        ]
        acts = [(int(a["layer"]), int(a["channel"]), float(a["value"])) for a in data.get("super_activations", [])]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ReferenceMismatchError(
            f"{source}: malformed super-weight entries ({type(exc).__name__}: {exc})", option="reference"
        ) from None
    return Reference(str(architecture), tuple(weights), *_canary_site(weights, acts), source=source)


def as_reference(reference: Any, model: nn.Module) -> Reference:
    """A Reference from a ScanResult / Findings, a manifest (dict or typed), or the path of either."""
    if isinstance(reference, Reference):
        return reference
    if isinstance(reference, (str, Path)):  # a manifest, or a saved scan (scan --json, a run's results.json)
        from superweight.detect.result import read_scan
        from superweight.guard.manifest import load_manifest

        try:
            return reference_from_manifest(load_manifest(reference), source=str(reference))
        except SuperweightError as not_manifest:
            try:
                scan = read_scan(reference, option="reference")
            except SuperweightError:
                raise not_manifest from None
            return reference_from_findings(scan, scan.architecture)
    if _is_manifest(reference) or not hasattr(reference, "super_weights"):
        return reference_from_manifest(reference)
    architecture = getattr(reference, "architecture", None) or type(base_model(model)).__name__
    return reference_from_findings(reference, architecture)


# ------------------------------------------------------------------------------------- live model


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (``get_base_model``), or the model itself."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


@dataclass
class LiveWeight:
    """A guarded super weight located in the live model: its base element and any LoRA factors on it."""

    spec: GuardedWeight
    site: DownProj  # module = the base layer (never the LoRA wrapper)
    lora: list[tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=list)  # (B, A, scaling)
    lora_params: list[tuple[torch.nn.Parameter, tuple[Any, ...]]] = field(default_factory=list)

    @property
    def index(self) -> tuple[int, ...]:
        return tuple(self.site.raw_index(self.spec.row, self.spec.col))

    @property
    def parameter(self) -> torch.nn.Parameter:
        return self.site.parameter

    def value(self) -> torch.Tensor:
        """The merged value the model computes with (a 0-d tensor in the weight's dtype)."""
        import torch

        with torch.no_grad():
            value = self.parameter.data[self.index].clone()
            for b, a, scaling in self.lora:
                value = value + (b.data[self.spec.row, :] @ a.data[:, self.spec.col]) * scaling
        return value

    def protected(self) -> list[tuple[torch.nn.Parameter, tuple[Any, ...]]]:
        """Every (parameter, index) the merged value depends on: what ``protect`` freezes."""
        return [(self.parameter, self.index), *self.lora_params]


def _lora_factors(module: nn.Module, row: int, col: int, label: str) -> tuple[list, list]:
    """The active LoRA factors of a PEFT layer that move ``weight[row, col]`` (none when merged)."""
    if not hasattr(module, "lora_A") or getattr(module, "merged", False):
        return [], []
    if getattr(module, "fan_in_fan_out", False):
        raise ReferenceMismatchError(f"{label}: LoRA with fan_in_fan_out (Conv1D layers) is not supported")
    factors, params = [], []
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        if module.use_dora.get(name, False):
            raise ReferenceMismatchError(f"{label}: DoRA adapters rescale whole columns; guard a plain LoRA")
        b, a = module.lora_B[name].weight, module.lora_A[name].weight
        factors.append((b, a, float(module.scaling[name])))
        params += [(b, (row, slice(None))), (a, (slice(None), col))]
    return factors, params


def locate(model: nn.Module, reference: Reference) -> list[LiveWeight]:
    """Find every guarded super weight in ``model``; one ReferenceMismatchError if it is another model."""
    from superweight.model.architectures import down_projections, find_down_proj

    base = base_model(model)
    arch = type(base).__name__
    if reference.architecture and reference.architecture != arch:
        raise ReferenceMismatchError(
            f"the model is a {arch}, but the reference ({reference.source}) is for a {reference.architecture}",
            option="reference",
        )
    try:
        sites = down_projections(base)
    except SuperweightError as exc:
        raise ReferenceMismatchError(f"cannot guard a {arch}: {exc.message}", option="reference") from None
    live = []
    for w in reference.weights:
        try:
            site = find_down_proj(sites, w.module)
        except SuperweightError:
            raise ReferenceMismatchError(
                f"the model has no {w.module}, where the reference ({reference.source}) has a super weight",
                option="reference",
            ) from None
        wrapper = site.module
        inner = wrapper.get_base_layer() if hasattr(wrapper, "get_base_layer") else wrapper
        site = dataclasses.replace(site, module=inner)
        rows, cols = site.shape
        if not (0 <= w.row < rows and 0 <= w.col < cols):
            raise ReferenceMismatchError(
                f"{w.module} is {rows}x{cols} here, too small for the reference's super weight [{w.row}, {w.col}]",
                option="reference",
            )
        factors, params = _lora_factors(wrapper, w.row, w.col, w.module)
        live.append(LiveWeight(w, site, factors, params))
    return live


def canary_site(model: nn.Module, reference: Reference) -> DownProj | None:
    """The down-projection whose output carries the super activation (the canary reads it)."""
    from superweight.model.architectures import down_projections

    if reference.canary_layer is None:
        return None
    sites = [s for s in down_projections(base_model(model)) if s.layer == reference.canary_layer and s.expert is None]
    return sites[0] if sites else None
