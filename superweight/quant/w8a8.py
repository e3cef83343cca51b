"""Simulated W8A8 (the SmoothQuant setting): per-tensor INT8 weights, per-token INT8 linear inputs.

Three variants, applied in memory and undone bit-exactly on exit:

* ``naive``: symmetric absmax INT8 on both sides.
* ``sa``: Yu et al.'s super-activation handling: the super activation's channel is replaced by the token's
  median before the token's range is computed, quantized with the rest, then restored in full precision.
  The channels held out are the super activation's hidden channel in every input of hidden width, and the
  super weight's column in its down-projection's input (the intermediate spike that makes it).
* ``smoothquant``: per input channel ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` from calibration text
  (WikiText-2 validation), shared by the linears that read the same tensor (as when folded into a norm);
  ``X/s`` and ``W*s`` are quantized.

Simulation means fake quantization (quantize then dequantize in float32), which measures accuracy, not speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from superweight.errors import QuantizationError
from superweight.quant.methods import WeightSnapshot, linear_weight

if TYPE_CHECKING:
    import torch
    from torch import nn

ACT_METHODS = ("naive", "sa", "smoothquant")


def quantize_int8_per_tensor(w: torch.Tensor) -> torch.Tensor:
    """Symmetric absmax INT8 over the whole tensor (fake-quantized, float result)."""
    scale = w.abs().amax().clamp_min(1e-12) / 127
    return (w / scale).round().clamp(-127, 127) * scale


def quantize_int8_per_token(x: torch.Tensor, held: list[int] | None = None) -> torch.Tensor:
    """Symmetric absmax INT8 per token (last dim = channels); ``held`` channels are kept exactly.

    The held channels are replaced by the token's median before the range is taken, so they neither
    set the scale nor get clipped, and are put back afterwards.
    """
    import torch

    xf = x.float()
    if held:
        idx = torch.tensor(held, device=x.device)
        median = xf.median(dim=-1, keepdim=True).values
        work = xf.index_copy(-1, idx, median.expand(*xf.shape[:-1], len(held)).contiguous())
    else:
        work = xf
    scale = work.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127
    out = (work / scale).round().clamp(-127, 127) * scale
    if held:
        out = out.index_copy(-1, idx, xf.index_select(-1, idx))
    return out.to(x.dtype)


@dataclass
class ActReport:
    method: str
    alpha: float | None = None
    held_channels: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        held = sorted({c for v in self.held_channels.values() for c in v})
        return {
            "method": self.method,
            "alpha": self.alpha,
            "held_channels": held,
            "held_inputs": len(self.held_channels),
        }


def held_channels(linears: list[tuple[str, nn.Module]], scan: Any, hidden_size: int) -> dict[str, list[int]]:
    """Which input channels ``sa`` keeps in full precision, per linear (see the module docstring)."""
    channels = sorted({a.channel for a in scan.super_activations})
    by_module: dict[str, list[int]] = {}
    for sw in scan.super_weights:
        by_module.setdefault(sw.module, []).append(sw.col)
    out: dict[str, list[int]] = {}
    for name, module in linears:
        width = linear_weight(module).shape[1]
        chosen = list(by_module.get(name, []))
        if width == hidden_size:
            chosen += channels
        if chosen:
            out[name] = sorted(set(chosen))
    return out


def smoothing_factors(
    model: nn.Module, linears: list[tuple[str, nn.Module]], windows: torch.Tensor, alpha: float
) -> dict[str, torch.Tensor]:
    """SmoothQuant's per-channel factors, one set per group of linears that read the same input."""
    import torch

    from superweight.model.capture import hooks

    if not 0 <= alpha <= 1:
        raise QuantizationError(f"must be in [0, 1] (got {alpha})", option="smoothquant_alpha")
    act_max: dict[str, torch.Tensor] = {}
    shared: dict[str, tuple[int, tuple[int, ...]]] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            m = x.reshape(-1, x.shape[-1]).abs().amax(0).float()
            act_max[name] = m if name not in act_max else torch.maximum(act_max[name], m)
            shared[name] = (x.data_ptr(), tuple(x.shape))

        return hook

    with torch.no_grad(), hooks([m.register_forward_pre_hook(hook_for(n)) for n, m in linears]):
        for window in windows:
            model(input_ids=window.view(1, -1).to(next(model.parameters()).device), use_cache=False)
    groups: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for name, _ in linears:
        groups.setdefault(shared[name], []).append(name)
    modules = dict(linears)
    factors: dict[str, torch.Tensor] = {}
    for names in groups.values():
        w_max = torch.stack([linear_weight(modules[n]).abs().amax(0).float() for n in names]).amax(0)
        s = (act_max[names[0]].clamp_min(1e-5).pow(alpha) / w_max.clamp_min(1e-5).pow(1 - alpha)).clamp_min(1e-5)
        for n in names:
            factors[n] = s
    return factors


@contextmanager
def w8a8(
    linears: list[tuple[str, nn.Module]],
    method: str = "naive",
    *,
    held: dict[str, list[int]] | None = None,
    smoothing: dict[str, torch.Tensor] | None = None,
) -> Iterator[ActReport]:
    """``with w8a8(linears, "sa", held=...):`` the model computes in simulated W8A8; restored on exit."""
    import torch

    from superweight.model.capture import hooks

    if method not in ACT_METHODS:
        raise QuantizationError(f"unknown activation method {method!r}; choose one of {', '.join(ACT_METHODS)}")
    if method == "smoothquant" and smoothing is None:
        raise QuantizationError("smoothquant needs smoothing factors: call smoothing_factors() on calibration text")
    held = held or {}
    report = ActReport(method, held_channels=dict(held) if method == "sa" else {})

    def hook_for(name: str):
        channels = held.get(name) if method == "sa" else None
        s = smoothing.get(name) if method == "smoothquant" else None

        def hook(module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            if s is not None:
                x = x / s.to(x.dtype)
            return (quantize_int8_per_token(x, channels), *args[1:])

        return hook

    with ExitStack() as stack:
        snapshot = stack.enter_context(WeightSnapshot(linears))
        with torch.no_grad():
            for name, module in linears:
                w = snapshot.saved[name].float()
                if method == "smoothquant":
                    w = w * smoothing[name].to(w.device)
                linear_weight(module).copy_(quantize_int8_per_tensor(w).to(snapshot.saved[name].dtype))
        stack.enter_context(hooks([m.register_forward_pre_hook(hook_for(n)) for n, m in linears]))
        yield report
