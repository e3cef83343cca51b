"""Record what goes into and comes out of each down-projection, with hooks that always come off.

Fused mixture-of-experts modules have no per-expert hook point, so for them the hook recomputes each
routed expert's down-projection input from the expert's own weights (``act(gate) * up``): this only
observes, the model's forward pass is untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

    from superweight.model.architectures import DownProj


@dataclass
class SiteActivations:
    """One prompt's activations at one down-projection (batch of one)."""

    x: torch.Tensor  # (tokens, intermediate): the down-projection's input
    y: (
        torch.Tensor
    )  # (tokens, hidden): its output (expert: before the router weight; post-norm families: after the norm)


@contextmanager
def hooks(handles: list) -> Iterator[None]:
    """Remove exactly these hook handles on exit, so captures and interventions nest safely."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1, t.shape[-1]).float()


def _dense_hook(records: dict[int, SiteActivations], index: int):
    def hook(module, inputs, output):
        y = output[0] if isinstance(output, tuple) else output
        # with a separate output module, y is provisional until that module's hook overwrites it
        records[index] = SiteActivations(_flat(inputs[0]), _flat(y))

    return hook


def _output_hook(records: dict[int, SiteActivations], index: int):
    def hook(module, inputs, output):
        records[index].y = _flat(output[0] if isinstance(output, tuple) else output)

    return hook


def _experts_hook(records: dict[int, SiteActivations], sites: dict[int, int]):
    """``sites`` maps expert index -> record index, for one fused experts module."""
    import torch
    from torch.nn import functional as F

    def hook(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        top_k_index = args[1] if len(args) > 1 else kwargs["top_k_index"]
        hidden = hidden.detach().reshape(-1, hidden.shape[-1])
        with torch.no_grad():
            for expert, index in sites.items():
                tokens = (top_k_index.reshape(hidden.shape[0], -1) == expert).any(-1).nonzero().squeeze(-1)
                x = hidden.new_zeros(hidden.shape[0], module.down_proj.shape[-1], dtype=torch.float32)
                y = hidden.new_zeros(hidden.shape[0], module.down_proj.shape[-2], dtype=torch.float32)
                if tokens.numel():
                    gate, up = F.linear(hidden[tokens], module.gate_up_proj[expert]).chunk(2, dim=-1)
                    inner = module.act_fn(gate) * up
                    x[tokens] = inner.float()
                    y[tokens] = F.linear(inner, module.down_proj[expert]).float()
                records[index] = SiteActivations(x, y)

    return hook


@contextmanager
def capture_layer_outputs(layers: Iterable[nn.Module]) -> Iterator[dict[int, torch.Tensor]]:
    """``outs[i]``: the residual stream after decoder layer i, (tokens, hidden), batch of one.

    Read by hooks rather than ``output_hidden_states``, whose last entry has the final norm applied.
    """
    outs: dict[int, torch.Tensor] = {}

    def make(i: int):
        def hook(module, inputs, output):
            outs[i] = _flat(output[0] if isinstance(output, tuple) else output)

        return hook

    with hooks([layer.register_forward_hook(make(i)) for i, layer in enumerate(layers)]):
        yield outs


@contextmanager
def capture_down_proj(sites: list[DownProj]) -> Iterator[dict[int, SiteActivations]]:
    """``with capture_down_proj(sites) as acts:`` after a forward pass, ``acts[i]`` holds site i's activations."""
    records: dict[int, SiteActivations] = {}
    handles = []
    experts: dict[int, tuple[object, dict[int, int]]] = {}
    for i, site in enumerate(sites):
        if site.expert is None:
            handles.append(site.module.register_forward_hook(_dense_hook(records, i)))
            if site.output_module is not None:
                handles.append(site.output_module.register_forward_hook(_output_hook(records, i)))
        else:
            experts.setdefault(id(site.module), (site.module, {}))[1][site.expert] = i
    for module, expert_sites in experts.values():
        handles.append(module.register_forward_hook(_experts_hook(records, expert_sites), with_kwargs=True))
    with hooks(handles):
        yield records
