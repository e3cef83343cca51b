"""Where each model family keeps its decoder layers and MLP down-projections.

Adapters are declarative and looked up by the exact Hugging Face class name (never by substring), so
a ``-Instruct`` variant or a new family can never silently match the wrong entry. Coordinates are
always reported as ``weight[row, col]`` of a ``torch.nn.Linear``: ``row`` = output (hidden) channel,
``col`` = input (intermediate) channel. :class:`DownProj` hides the two layouts that differ from that:
GPT-2's ``Conv1D`` (stores the transpose) and fused mixture-of-experts tensors ``(expert, out, in)``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from superweight.errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Adapter:
    family: str
    classes: tuple[str, ...]  # exact Hugging Face model class names
    layers: str | None  # dotted path from the model to the ModuleList of decoder layers (None: unknown)
    down_proj: str | None  # dotted path from a layer to its dense down-projection (None: MoE only)
    experts: str | None = None  # dotted path from a layer to a fused experts module (param `down_proj`)
    # Post-norm families (Gemma 2/3, OLMo 2) normalise the MLP output before adding it to the residual
    # stream, with a learned gain: the massive activation appears only after that norm, so spikes are
    # read there (the super weight is still the down-projection entry).
    mlp_output: str | None = None
    # The model's decoder loop is a plain `hidden = layer(hidden, ...)`, so evaluation may start at any
    # layer from saved hidden states (superweight.measure.conditions reuses them across conditions).
    layerwise: bool = False
    # An ad-hoc adapter (``--down-proj``): a glob over module names instead of the paths above.
    pattern: str | None = None


_REGISTRY: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter) -> None:
    """Add (or replace) an adapter; later work and users extend the registry this way."""
    for cls in adapter.classes:
        _REGISTRY[cls] = adapter


@contextmanager
def registry_restored() -> Iterator[None]:
    """Undo every registration made inside the block (tests, and callers that try a pattern)."""
    saved = dict(_REGISTRY)
    try:
        yield
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(saved)


for _adapter in (
    Adapter(
        "llama",
        (
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
            "Qwen3ForCausalLM",
            "Phi3ForCausalLM",
            "OlmoForCausalLM",
            "GemmaForCausalLM",
        ),
        "model.layers",
        "mlp.down_proj",
        layerwise=True,
    ),
    Adapter(
        "post-norm",
        ("Gemma2ForCausalLM", "Gemma3ForCausalLM", "Olmo2ForCausalLM"),
        "model.layers",
        "mlp.down_proj",
        mlp_output="post_feedforward_layernorm",
        layerwise=True,
    ),
    Adapter(
        "gemma3-multimodal",
        ("Gemma3ForConditionalGeneration",),
        "model.language_model.layers",
        "mlp.down_proj",
        mlp_output="post_feedforward_layernorm",
    ),
    Adapter("gpt2", ("GPT2LMHeadModel",), "transformer.h", "mlp.c_proj"),
    Adapter("gpt-neox", ("GPTNeoXForCausalLM",), "gpt_neox.layers", "mlp.dense_4h_to_h"),
    Adapter("opt", ("OPTForCausalLM",), "model.decoder.layers", "fc2"),
    Adapter("falcon", ("FalconForCausalLM",), "transformer.h", "mlp.dense_4h_to_h"),
    Adapter("gpt-j", ("GPTJForCausalLM",), "transformer.h", "mlp.fc_out"),
    Adapter("mixtral", ("MixtralForCausalLM",), "model.layers", None, experts="mlp.experts"),
    Adapter(
        "qwen2-moe",  # routed experts plus one shared expert
        ("Qwen2MoeForCausalLM",),
        "model.layers",
        "mlp.shared_expert.down_proj",
        experts="mlp.experts",
    ),
    Adapter("qwen3-moe", ("Qwen3MoeForCausalLM",), "model.layers", None, experts="mlp.experts"),
):
    register_adapter(_adapter)


def supported_classes() -> list[str]:
    return sorted(_REGISTRY)


def layerwise_classes() -> list[str]:
    """Classes whose evaluation can start at any decoder layer (see ``Adapter.layerwise``)."""
    return sorted(cls for cls, adapter in _REGISTRY.items() if adapter.layerwise)


@dataclass(frozen=True, eq=False)
class DownProj:
    """One down-projection matrix: a Linear, a Conv1D, or one expert of a fused MoE tensor."""

    layer: int
    name: str  # module path as in model.named_modules()
    module: nn.Module
    expert: int | None = None
    output_module: nn.Module | None = None  # where the MLP's write to the residual is read (post-norm families)

    @property
    def param_name(self) -> str:
        """Name of the raw parameter in the model's state dict (and in its checkpoint files)."""
        return f"{self.name}.{'down_proj' if self.expert is not None else 'weight'}"

    @property
    def label(self) -> str:
        """The name shown to people and written in JSON (`module`)."""
        return self.name if self.expert is None else f"{self.name}[{self.expert}]"

    @property
    def transposed(self) -> bool:
        return type(self.module).__name__ == "Conv1D"

    @property
    def parameter(self) -> torch.nn.Parameter:
        return self.module.down_proj if self.expert is not None else self.module.weight

    @property
    def weight(self) -> torch.Tensor:
        """A (hidden, intermediate) view that shares storage with the parameter: writes go through."""
        data = self.parameter.data
        if self.expert is not None:
            return data[self.expert]
        return data.T if self.transposed else data

    def raw_index(self, row: int, col: int) -> tuple[int, ...]:
        """Index of weight[row, col] in the raw parameter tensor."""
        if self.expert is not None:
            return (self.expert, row, col)
        return (col, row) if self.transposed else (row, col)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)  # type: ignore[return-value]


def _get(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def adapter_for(model: nn.Module) -> Adapter:
    name = type(model).__name__
    adapter = _REGISTRY.get(name)
    if adapter is None:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {name}; supported: {', '.join(supported_classes())}. Name its "
            "down-projections with {option} PATTERN, a glob over module names (e.g. 'model.layers.*.mlp.down_proj')",
            option="down_proj",
        )
    return adapter


def architecture_name(model: nn.Module) -> str:
    return type(model).__name__


_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def layer_index(name: str) -> int | None:
    """The decoder-layer index in a module path (``model.layers.11.mlp.down_proj`` -> 11), or None."""
    match = _LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None


def _match_pattern(model: nn.Module, pattern: str) -> list[DownProj]:
    sites = []
    for name, module in model.named_modules():
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        if type(module).__name__ not in ("Linear", "Conv1D") or module.weight.dim() != 2:
            raise UnsupportedArchitectureError(
                f"{pattern!r} matched {name}, a {type(module).__name__}, not a Linear layer",
                option="down_proj",
            )
        index = layer_index(name)
        if index is None:
            raise UnsupportedArchitectureError(
                f"{pattern!r} matched {name}, which has no layer index", option="down_proj"
            )
        sites.append(DownProj(index, name, module))
    if not sites:
        example = next((n for n, m in model.named_modules() if type(m).__name__ == "Linear"), "")
        raise UnsupportedArchitectureError(
            f"{pattern!r} matched no module; module names look like {example!r}", option="down_proj"
        )
    return sorted(sites, key=lambda s: (s.layer, s.name))


def register_pattern(model: nn.Module, pattern: str) -> Adapter:
    """Register an adapter for ``model``'s class from a glob over its module names (``--down-proj``).

    The decoder layers are the ModuleList the matches are numbered in, when there is one, so that the
    residual stream can be read too. Replaces a built-in adapter for that class: the user asked.
    """
    from torch import nn as torch_nn

    sites = _match_pattern(model, pattern)
    first = sites[0].name
    container = first[: first.index(f".{sites[0].layer}.")] if f".{sites[0].layer}." in first else None
    if container is not None:
        try:
            found = _get(model, container)
        except AttributeError:
            found = None
        container = container if isinstance(found, torch_nn.ModuleList) else None
    adapter = Adapter("pattern", (type(model).__name__,), container, None, pattern=pattern)
    register_adapter(adapter)
    return adapter


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    adapter = adapter_for(model)
    if adapter.layers is None:
        raise UnsupportedArchitectureError(
            f"the down-projection pattern {adapter.pattern!r} does not say where {type(model).__name__}'s "
            "decoder layers are"
        )
    return _get(model, adapter.layers)


def down_projections(model: nn.Module) -> list[DownProj]:
    """Every down-projection of the model, in layer order (MoE: every expert, then the shared one)."""
    adapter = adapter_for(model)
    if adapter.pattern is not None:
        return _match_pattern(model, adapter.pattern)
    prefix = adapter.layers
    sites: list[DownProj] = []
    for i, layer in enumerate(_get(model, prefix)):
        if adapter.experts is not None:
            experts = _get(layer, adapter.experts)
            name = f"{prefix}.{i}.{adapter.experts}"
            for e in range(experts.down_proj.shape[0]):
                sites.append(DownProj(i, name, experts, expert=e))
        if adapter.down_proj is not None:
            output = _get(layer, adapter.mlp_output) if adapter.mlp_output else None
            sites.append(DownProj(i, f"{prefix}.{i}.{adapter.down_proj}", _get(layer, adapter.down_proj), None, output))
    return sites


def find_down_proj(sites: list[DownProj], module: str, expert: int | None = None) -> DownProj:
    """The site with this module name (as written in JSON; `name[e]` selects an expert)."""
    match = re.fullmatch(r"(.*)\[(\d+)\]", module)
    if match:
        module, expert = match.group(1), int(match.group(2))
    for site in sites:
        if site.name == module and site.expert == expert:
            return site
    raise UnsupportedArchitectureError(f"this model has no down-projection named {module!r}")


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every 2-D Linear / Conv1D inside the decoder layers (embeddings and lm_head excluded)."""
    layers = adapter_for(model).layers
    if layers is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}'s decoder layers are unknown: register an adapter with its layers path"
        )
    prefix = layers + "."
    return [
        (name, module)
        for name, module in model.named_modules()
        if name.startswith(prefix) and type(module).__name__ in ("Linear", "Conv1D")
    ]
