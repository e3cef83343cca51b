"""What the recovery study measures at each evaluation: perplexity, zero-shot accuracy, the super
activation, and the current values of the super-weight coordinates (through a LoRA adapter too)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from superweight.measure.conditions import Probe
    from superweight.measure.corpus import TokenWindows
    from superweight.measure.zeroshot import TaskSuite
    from superweight.model.interventions import WeightRef

SA_PROMPT = "Summer is hot. Winter is"  # detection's first default prompt: the super activation fires on it


@dataclass
class Point:
    """One evaluation of a model state (a reference, or a step of fine-tuning)."""

    step: int
    nll: float  # mean token loss on the evaluation text (nats)
    perplexity: float
    accuracy: dict[str, float] = field(default_factory=dict)  # task -> lm-eval acc
    super_activation: float | None = None  # max |down_proj output| at the super activation's channel
    weights: list[float] = field(default_factory=list)  # current value of each super-weight coordinate
    train_loss: float | None = None  # mean training loss over the steps since the last point

    @property
    def mean_accuracy(self) -> float | None:
        values = [v for v in self.accuracy.values() if v is not None and math.isfinite(v)]
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Point:
        from superweight.results import build

        return build(cls, data)


def effective_value(model: nn.Module, ref: WeightRef) -> float:
    """``W[row, col]`` as the model computes with it: the weight, plus a LoRA adapter's delta if wrapped."""
    import torch

    value = float(ref.get())
    wrapper = model.get_submodule(ref.site.name)
    if wrapper is not ref.site.module and hasattr(wrapper, "get_delta_weight"):
        with torch.no_grad():
            for adapter in getattr(wrapper, "active_adapters", []):
                value += float(wrapper.get_delta_weight(adapter)[ref.row, ref.col])
    return value


class Bench:
    """The evaluation set up once: token windows, the task suite, where the super activation is read."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        windows: TokenWindows,
        refs: list[WeightRef],
        probe: Probe | None,
        suite: TaskSuite | None = None,
        limit: int | None = None,
        prompt: str = SA_PROMPT,
    ) -> None:
        self.model, self.windows, self.refs, self.probe = model, windows, refs, probe
        self.suite, self.limit = suite, limit
        self.prompt = tokenizer(prompt, return_tensors="pt").input_ids

    def super_activation(self) -> float | None:
        import torch

        if self.probe is None:
            return None
        seen: list[float] = []
        channel = self.probe.channel

        def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
            seen.append(float(output[..., channel].detach().abs().max()))

        handle = self.model.get_submodule(self.probe.site.name).register_forward_hook(hook)
        try:
            with torch.no_grad():
                self.model(input_ids=self.prompt.to(next(self.model.parameters()).device), use_cache=False)
        finally:
            handle.remove()
        return seen[0] if seen else None

    def evaluate(self, step: int, train_loss: float | None = None, desc: str = "") -> Point:
        from superweight.measure.perplexity import score_windows

        self.model.eval()
        ppl = score_windows(self.model, self.windows, desc=f"perplexity {desc}".strip()).perplexity
        accuracy: dict[str, float] = {}
        if self.suite is not None:
            for task, result in self.suite.evaluate(self.limit, desc=desc).items():
                if result.accuracy is not None:
                    accuracy[task] = float(result.accuracy)
        return Point(
            step=step,
            nll=ppl.nll,
            perplexity=ppl.perplexity,
            accuracy=accuracy,
            super_activation=self.super_activation(),
            weights=[effective_value(self.model, ref) for ref in self.refs],
            train_loss=train_loss,
        )
