"""Say what the evidence means: opposite-sign pairs, float16 safety, and massive activations without a weight.

* **Pairs.** A late-layer candidate whose down-projection writes the *opposite* sign into the hidden
  channel of an earlier super activation is cancelling it (users of the paper's code asked about
  these); it is labelled, not counted as a second super weight.
* **float16.** The largest value the residual stream or a down-projection reaches, against float16's
  largest finite value (65,504): above it, a float16 copy of the model overflows to inf.
* **No causal weight.** When nothing is confirmed but the residual stream holds a massive activation,
  the layers that build it are listed with what they add, split into the MLP's write and the rest
  (attention, embedding); for post-norm families (Gemma 2/3, OLMo-2) the MLP write is a small
  down-projection output multiplied by the post-feed-forward norm's gain, so the largest such gain
  is set to the norm's median gain and the activation and probe loss are measured again (restored after).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from superweight.coordinates import SuperActivation, SuperWeight
    from superweight.model.architectures import DownProj
    from superweight.model.capture import SiteActivations

FP16_MAX = 65504.0
MASSIVE_RATIO = 100.0  # a residual value this many times its token's median |value| is "massive" (Sun et al.)


def pair_label(weight: SuperWeight, activations: list[SuperActivation]) -> str:
    """``"cancels layer L channel C"`` when ``weight`` writes against an earlier super activation, else ``""``."""
    for act in activations:
        if act.channel == weight.row and act.layer < weight.layer and act.value * weight.output_activation < 0:
            return f"opposite-sign pair: cancels the super activation of layer {act.layer}, channel {act.channel}"
    return ""


def fp16_safety(residual_stream: list[dict[str, Any]], layers: list[Any]) -> dict[str, Any]:
    """The largest |value| seen (residual stream after each layer, down-projection inputs and outputs)."""
    seen = [(r["max"], "residual stream", r["layer"]) for r in residual_stream]
    seen += [(s.max_output, "down_proj output", s.layer) for s in layers]
    seen += [(s.max_input, "down_proj input", s.layer) for s in layers]
    value, where, layer = max(seen, default=(0.0, "", -1))
    return {
        "max_abs": value,
        "where": where,
        "layer": layer,
        "fp16_max": FP16_MAX,
        "headroom": FP16_MAX / value if value > 0 else float("inf"),
        "overflows_fp16": value > FP16_MAX,
    }


def _norm_name(model: nn.Module, module: nn.Module) -> str:
    return next((name for name, m in model.named_modules() if m is module), type(module).__name__)


def explain_massive(
    model: nn.Module,
    hidden: list[torch.Tensor],
    acts: dict[int, SiteActivations],
    sites: list[DownProj],
    rerun: Callable[[], tuple[list[torch.Tensor], float]],
    top: int = 3,
) -> dict[str, Any]:
    """Where the residual stream's largest value comes from, when no single weight explains it.

    ``hidden``: residual stream after each layer (prompt 0); ``acts``: that prompt's down-projection
    activations; ``rerun()`` measures (residual stream, probe-loss increase) of the model as it is then.
    """
    import torch

    maxima = [float(h.abs().max()) for h in hidden]
    peak_layer = max(range(len(hidden)), key=maxima.__getitem__)
    flat = int(hidden[peak_layer].abs().argmax())
    token, channel = divmod(flat, hidden[peak_layer].shape[1])
    peak = float(hidden[peak_layer][token, channel])
    median = float(hidden[peak_layer][token].abs().median())
    out: dict[str, Any] = {
        "layer": peak_layer, "token": token, "channel": channel, "value": peak,
        "ratio_to_median": abs(peak) / max(median, 1e-30),
    }  # fmt: skip
    out["massive"] = out["ratio_to_median"] >= MASSIVE_RATIO
    builders = []
    for i in range(peak_layer + 1):
        before = float(hidden[i - 1][token, channel]) if i else 0.0
        added = float(hidden[i][token, channel]) - before
        site_index = next((s for s, site in enumerate(sites) if site.layer == i and site.expert is None), None)
        mlp = float(acts[site_index].y[token, channel]) if site_index in acts else float("nan")
        entry: dict[str, Any] = {"layer": i, "added": added, "mlp": mlp, "other": added - mlp}
        if site_index is not None and sites[site_index].output_module is not None:
            site = sites[site_index]
            raw = float(site.weight[channel].float() @ acts[site_index].x[token].to(site.weight.device))
            norm = site.output_module
            entry.update(
                down_proj=raw,
                norm=_norm_name(model, norm),
                gain=float(norm.weight[channel]),
                median_gain=float(norm.weight.float().median()),
            )
        builders.append(entry)
    ranked = sorted(builders, key=lambda b: -abs(b["added"]) if b["added"] * peak > 0 else 0.0)
    out["builders"] = ranked[:top]
    gains = [b for b in builders if "gain" in b]
    if gains:
        best = max(gains, key=lambda b: abs(b["mlp"]) if b["mlp"] == b["mlp"] else 0.0)
        norm = next(s.output_module for s in sites if s.layer == best["layer"] and s.output_module is not None)
        original = norm.weight[channel].detach().clone()
        try:
            with torch.no_grad():
                norm.weight[channel] = best["median_gain"]
            after, loss = rerun()
        finally:
            with torch.no_grad():
                norm.weight[channel] = original
        out["causal_check"] = {
            "parameter": f"{best['norm']}.weight[{channel}]",
            "layer": best["layer"],
            "gain": best["gain"],
            "set_to": best["median_gain"],
            "value_before": peak,
            "value_after": float(after[peak_layer][token, channel]),
            "loss_increase": loss,
        }
    return out
