"""The nouns every wing speaks of: a super weight and a super activation, where they are and how large.

Detection finds them; measurement, quantization, the guard, the studies and the reports take them as
input. They live in the base so that no wing has to import detection to name what it works on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class SuperWeight:
    layer: int
    module: str  # down-projection label; "name[e]" for expert e of a fused MoE tensor
    row: int  # output (hidden) channel
    col: int  # input (intermediate) channel
    value: float
    input_activation: float
    output_activation: float
    tokens: list[int]
    loss_increase: float = float("nan")
    confirmed: bool = False
    expert: int | None = None
    agreement: float = 1.0  # share of prompts whose own spike at this layer is at (row, col)
    spike_drop: float = 0.0  # how much zeroing it lowered its layer's output spike

    @property
    def coordinate(self) -> tuple[str, int, int]:
        return (self.module, self.row, self.col)


@dataclass
class SuperActivation:
    layer: int
    channel: int
    value: float
    tokens: list[int]
    residual: list[float] = field(default_factory=list)  # max |hidden[:, channel]| after each layer (fired tokens)
    persists_until: int = -1  # last layer whose residual stays >= half the value right after `layer`


class Findings(Protocol):
    """What a scan (or a manifest, or an atlas entry) tells the other wings: where the super weights are."""

    super_weights: list[SuperWeight]
    super_activations: list[SuperActivation]
