"""Model conditions (original, super weights zeroed, restored, controls, scaled), measured on shared windows.

Evaluation is the cost, so nothing an intervention cannot change is recomputed: the loop is
window-major, and for each window the hidden states entering every layer where some condition starts
are computed once (from the original weights) and each condition runs only the decoder layers from
there on. The model's own forward does the rest (embedding, rotary tables, masks, final norm, logit
soft-capping): layers before the start are swapped for a pass-through and a pre-hook on the start
layer puts the saved hidden states back. That is safe for the families whose decoder loop is plain
``hidden = layer(hidden, ...)`` (adapters marked ``layerwise`` in the registry: Llama, Mistral,
Qwen2/3, Phi-3, OLMo/OLMo-2, Gemma 1/2/3 text); every other family (GPT-2, GPT-NeoX, OPT, Falcon,
GPT-J, MoE, multimodal Gemma 3) gets full passes. Saved hidden states are bounded by
``budget_bytes`` per window; layers that do not fit fall back to full passes. Results equal full
passes to float tolerance (tests check it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from superweight.model.capture import hooks
from superweight.model.interventions import WeightRef, edited, first_layer, restored_activation

if TYPE_CHECKING:
    import torch
    from torch import nn

    from superweight.measure.corpus import TokenWindows
    from superweight.model.architectures import DownProj

DEFAULT_BUDGET = 1 << 30  # bytes of saved hidden states per window


@dataclass
class Condition:
    """A model state: weights multiplied by ``alpha`` (0 = zeroed), maybe an activation put back."""

    name: str
    refs: list[WeightRef] = field(default_factory=list)
    alpha: float = 0.0
    restores: list[tuple[DownProj, int, list[int] | None]] = field(default_factory=list)  # site, channel, tokens
    # whole down-projection matrices zeroed (a pruned expert: its output is 0 wherever it is routed)
    pruned: list[DownProj] = field(default_factory=list)

    @property
    def is_original(self) -> bool:
        return not self.restores and not self.pruned and (not self.refs or self.alpha == 1.0)

    def start_layer(self) -> int | None:
        """First decoder layer whose computation this condition can change (None: none)."""
        if self.is_original:
            return None
        layers = [site.layer for site, _, _ in self.restores]
        if self.refs and self.alpha != 1.0:
            layers.append(first_layer(self.refs))
        layers.extend(site.layer for site in self.pruned)
        return min(layers) if layers else None

    @contextmanager
    def apply(self) -> Iterator[None]:
        """The condition in force inside the block; undone bit-exactly on exit, also on error."""
        with ExitStack() as stack:
            for (
                site,
                channel,
                tokens,
            ) in self.restores:  # entered first: they copy the weights before the edit
                stack.enter_context(restored_activation(site, channel, tokens))
            if self.refs and self.alpha != 1.0:
                alpha = self.alpha
                stack.enter_context(edited(self.refs, lambda w: w * alpha))
            if self.pruned:
                stack.enter_context(pruned_matrices(self.pruned))
            yield


@contextmanager
def pruned_matrices(sites: Sequence[DownProj]) -> Iterator[None]:
    """Every weight of each site's matrix is 0 inside the block (an expert pruned); restored bit-exactly.

    An expert of a fused MoE tensor has no module of its own to hook, and its down-projection has no
    bias, so zeroing its matrix makes its output exactly 0 while routing is left as it was (Su et al.'s
    pruning). Originals are cloned before the first write and copied back in ``finally``.
    """
    import torch

    saved = [site.weight.detach().clone() for site in sites]
    try:
        with torch.no_grad():
            for site in sites:
                site.weight.zero_()
        yield
    finally:
        with torch.no_grad():
            for site, original in reversed(list(zip(sites, saved, strict=True))):
                site.weight.copy_(original)


@dataclass
class Probe:
    """Where to read the super activation: ``site``'s output at ``channel`` (largest |value| per window)."""

    site: DownProj
    channel: int


@dataclass
class ConditionStats:
    """What one condition accumulated over the windows."""

    name: str
    loss_sum: float = 0.0
    count: int = 0
    activation: list[float] = field(default_factory=list)  # the probe's value per window
    prob_sum: torch.Tensor | None = None  # sum over positions of next-token probabilities
    full_passes: int = 0
    reused_passes: int = 0
    seconds: float = 0.0

    @property
    def nll(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    @property
    def super_activation(self) -> float | None:
        return sum(self.activation) / len(self.activation) if self.activation else None


def supports_reuse(model: nn.Module) -> bool:
    """Whether the architecture registry marks this family ``layerwise``."""
    from superweight.model.architectures import layerwise_classes

    return type(model).__name__ in layerwise_classes()


def _passthrough() -> nn.Module:
    from torch import nn

    class Passthrough(nn.Module):
        """Stands in for a decoder layer whose output is already known."""

        def forward(self, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
            return hidden_states

    return Passthrough()


class _Stop(Exception):
    """Raised by a capture hook to end a pass once every needed hidden state is saved."""


def _capture_hooks(layers: nn.ModuleList, wanted: Sequence[int], saved: dict[int, Any], stop: bool) -> list[Any]:
    last = max(wanted)

    def make(index: int) -> Any:
        def hook(_module: Any, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            saved[index] = hidden.detach().clone()
            if stop and index == last:
                raise _Stop

        return hook

    return [layers[i].register_forward_pre_hook(make(i), with_kwargs=True) for i in wanted]


def capture_hidden(model: nn.Module, window: torch.Tensor, wanted: Sequence[int]) -> dict[int, torch.Tensor]:
    """Hidden states entering each layer in ``wanted`` (runs the model only up to the deepest one)."""
    from superweight.measure.perplexity import logits_of
    from superweight.model.architectures import decoder_layers

    saved: dict[int, Any] = {}
    with hooks(_capture_hooks(decoder_layers(model), wanted, saved, stop=True)), suppress(_Stop):
        logits_of(model, window)
    return saved


def logits_from(model: nn.Module, window: torch.Tensor, layer: int, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of ``window`` computed from ``hidden`` (the hidden states entering ``layer``) onwards."""
    from superweight.measure.perplexity import logits_of
    from superweight.model.architectures import decoder_layers

    layers = decoder_layers(model)
    originals = [layers[i] for i in range(layer)]

    def inject(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (hidden.clone(), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden.clone()}

    handle = layers[layer].register_forward_pre_hook(inject, with_kwargs=True)
    try:
        for i in range(layer):
            layers[i] = _passthrough()
        return logits_of(model, window)
    finally:
        for i, module in enumerate(originals):
            layers[i] = module
        handle.remove()


def _probe_hook(probe: Probe, values: list[float]) -> Any:
    def hook(_module: Any, _inputs: tuple, output: Any) -> None:
        column = output[0, :, probe.channel] if output.dim() == 3 else output[:, probe.channel]
        values.append(float(column[column.abs().argmax()]))

    return probe.site.module.register_forward_hook(hook)


def _plan(starts: dict[str, int | None], bytes_per_layer: int, budget_bytes: int) -> list[int]:
    """Which layers to save per window: the most layer-passes saved per byte first, within the budget."""
    counts: dict[int, int] = {}
    for start in starts.values():
        if start:
            counts[start] = counts.get(start, 0) + 1
    ranked = sorted(counts, key=lambda layer: -layer * counts[layer])
    keep = ranked[: max(0, budget_bytes // max(bytes_per_layer, 1))]
    return sorted(keep)


def measure_conditions(
    model: nn.Module,
    windows: TokenWindows | torch.Tensor,
    conditions: Sequence[Condition],
    *,
    probe: Probe | None = None,
    reuse: bool = True,
    budget_bytes: int = DEFAULT_BUDGET,
    token_stats: Sequence[str] = (),
    desc: str = "conditions",
) -> dict[str, ConditionStats]:
    """Token loss (and the probe's super activation) of every condition on every window."""
    import time

    import torch

    from superweight.measure.perplexity import as_windows, logits_of, token_losses
    from superweight.model.architectures import decoder_layers
    from superweight.progress import track

    ids = as_windows(windows)
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        from superweight.errors import SuperweightError

        raise SuperweightError(f"condition names must be unique: {names}")
    stats = {c.name: ConditionStats(c.name) for c in conditions}
    starts = {}
    for c in conditions:
        start = c.start_layer()
        starts[c.name] = start if start is None or probe is None else min(start, probe.site.layer)
    layers = decoder_layers(model) if reuse and supports_reuse(model) else None
    keep: list[int] = []
    if layers is not None:
        config = model.config
        hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
        element = next(model.parameters()).element_size()
        keep = _plan(starts, ids.shape[1] * hidden * element, budget_bytes)
    ordered = sorted(conditions, key=lambda c: starts[c.name] is not None)  # the original first
    with torch.no_grad():
        for window in track(ids, desc, total=ids.shape[0]):
            saved: dict[int, torch.Tensor] = {}
            if keep and all(starts[c.name] is not None for c in conditions):
                saved = capture_hidden(model, window, keep)
            for c in ordered:
                st = stats[c.name]
                t0 = time.perf_counter()
                start = starts[c.name]
                base = max((p for p in saved if start is not None and p <= start), default=None)
                with c.apply(), hooks([_probe_hook(probe, st.activation)] if probe is not None else []):
                    if base is not None:
                        logits = logits_from(model, window, base, saved[base])
                        st.reused_passes += 1
                    elif start is None and keep and not saved:
                        with hooks(_capture_hooks(layers, keep, saved, stop=False)):
                            logits = logits_of(model, window)
                        st.full_passes += 1
                    else:
                        logits = logits_of(model, window)
                        st.full_passes += 1
                losses = token_losses(logits, window)
                st.loss_sum += float(losses.double().sum())
                st.count += losses.numel()
                if c.name in token_stats:
                    probs = torch.softmax(logits[:-1].float(), dim=-1).sum(0).double().cpu()
                    st.prob_sum = probs if st.prob_sum is None else st.prob_sum + probs
                st.seconds += time.perf_counter() - t0
    return stats
