"""Find super weights and super activations (Yu et al. 2024, section 3.1), with decisions a machine can make.

The published method prints the layers whose down-projection input and output exceed a fixed |value|
(50) and leaves the rest to the eye. Here:

* A layer *spikes* when its max |activation| is an outlier among the layers: a robust z-score of
  log-magnitudes against the median and MAD of the *other* layers (leave-one-out, so that one spike
  cannot hide itself) at least ``z_threshold``, and at least ``min_ratio`` times their median. Log
  space and ratios make it independent of the model's scale and dtype.
* A super weight sits where input and output spike together: ``row`` is the output channel of the
  spike and ``col`` the input channel that contributes most to it (``|W[row, j] * x[token, j]|``; the
  paper takes the input's arg-max, which is almost always the same channel).
* It is zeroed and the pass repeated. A candidate whose zeroing does not lower its layer's spike by
  ``min_spike_drop`` is rejected (the stopping rule); the loop ends when no unexplained spike is left,
  or after ``max_iterations``. No coordinate is ever reported twice.
* The candidates are confirmed causally *as a set* (:mod:`superweight.detect.confirm`): alone, marginal
  in search order, leave-one-out, and per group, on probe windows (:mod:`superweight.detect.probe`),
  against a null of magnitude-matched weights (:mod:`superweight.detect.nulls`). Unconfirmed candidates
  stay in the JSON, out of the main list; :mod:`superweight.detect.evidence` says what the rest means.

Every weight is restored bit-exactly before returning, even on error.
"""

from __future__ import annotations

import math
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from superweight.coordinates import SuperActivation, SuperWeight
from superweight.detect.confirm import SetLosses, confirm_set
from superweight.detect.contributions import decompose
from superweight.detect.evidence import explain_massive, fp16_safety, pair_label
from superweight.detect.nulls import layer_nulls
from superweight.detect.probe import bos_toggled, probe_windows, window_losses
from superweight.detect.result import DEFAULT_PROMPTS, DetectionConfig, LayerStats, ScanResult, WeightRow
from superweight.errors import SuperweightError
from superweight.model.architectures import DownProj, architecture_name, down_projections, find_down_proj
from superweight.model.capture import SiteActivations, capture_down_proj, capture_layer_outputs
from superweight.model.interventions import WeightRef, zeroed
from superweight.progress import log

if TYPE_CHECKING:
    import torch
    from torch import nn

    from superweight.model.loading import LoadedModel

TINY = 1e-30  # stands in for 0 under a log or a division: a layer whose maximum is exactly 0

# --- spike statistics ---------------------------------------------------------------------------


def robust_z(values: list[float], mad_floor: float) -> list[float]:
    """Leave-one-out robust z-score of log-magnitudes: how far each layer sits above the others."""
    logs = [math.log(max(v, TINY)) for v in values]
    if len(logs) < 2:
        return [0.0] * len(logs)
    scores = []
    for i, value in enumerate(logs):
        others = logs[:i] + logs[i + 1 :]
        med = statistics.median(others)
        mad = statistics.median(abs(o - med) for o in others)
        scores.append((value - med) / (1.4826 * max(mad, mad_floor)))
    return scores


def _ratio_to_others(values: list[float], i: int) -> float:
    others = values[:i] + values[i + 1 :]
    return values[i] / max(statistics.median(others), TINY) if others else 1.0


def _spiking(values: list[float], cfg: DetectionConfig) -> tuple[list[float], list[bool]]:
    z = robust_z(values, cfg.mad_floor)
    return z, [z[i] >= cfg.z_threshold and _ratio_to_others(values, i) >= cfg.min_ratio for i in range(len(values))]


# --- one measurement pass ----------------------------------------------------------------------


@dataclass
class _Peak:
    value: float  # signed
    prompt: int
    site: int
    token: int
    channel: int


@dataclass
class _Pass:
    """Activations of every site for every prompt, reduced to what the decisions need."""

    acts: list[dict[int, SiteActivations]]  # per prompt: site index -> activations
    layers: list[int]  # sorted distinct layer indices
    in_peak: dict[int, _Peak]  # per layer
    out_peak: dict[int, _Peak]

    def maxima(self, which: str) -> list[float]:
        peaks = self.in_peak if which == "in" else self.out_peak
        return [abs(peaks[layer].value) for layer in self.layers]


def _peak(t: torch.Tensor) -> tuple[float, int, int]:
    flat = int(t.abs().argmax())
    token, channel = divmod(flat, t.shape[1])
    return float(t[token, channel]), token, channel


def _measure(model: nn.Module, sites: list[DownProj], prompt_ids: list[torch.Tensor]) -> _Pass:
    import torch

    acts: list[dict[int, SiteActivations]] = []
    with torch.no_grad():
        for ids in prompt_ids:
            with capture_down_proj(sites) as records:
                model(ids)
            acts.append(dict(records))
    in_peak: dict[int, _Peak] = {}
    out_peak: dict[int, _Peak] = {}
    for p, records in enumerate(acts):
        for s, rec in records.items():
            layer = sites[s].layer
            for peaks, tensor in ((in_peak, rec.x), (out_peak, rec.y)):
                value, token, channel = _peak(tensor)
                if layer not in peaks or abs(value) > abs(peaks[layer].value):
                    peaks[layer] = _Peak(value, p, s, token, channel)
    return _Pass(acts, sorted(out_peak), in_peak, out_peak)


def _candidate(run: _Pass, layer: int, sites: list[DownProj], cfg: DetectionConfig) -> SuperWeight:
    """The weight behind ``layer``'s output spike: the input channel contributing most to it."""
    peak = run.out_peak[layer]
    site = sites[peak.site]
    rec = run.acts[peak.prompt][peak.site]
    x = rec.x[peak.token]
    contributions = (site.weight[peak.channel].float() * x).abs()
    col = int(contributions.argmax())
    column = rec.y[:, peak.channel].abs()
    tokens = [int(t) for t in (column >= cfg.fire_fraction * column.max()).nonzero().flatten()]
    return SuperWeight(
        layer=layer,
        module=site.label,
        row=peak.channel,
        col=col,
        value=float(site.weight[peak.channel, col]),
        input_activation=float(x[col]),
        output_activation=peak.value,
        tokens=tokens,
        expert=site.expert,
    )


def _agreement(run: _Pass, sw: SuperWeight, sites: list[DownProj], cfg: DetectionConfig) -> float:
    """Share of prompts that, on their own, spike at this layer with the same (row, col)."""
    agree = 0
    for records in run.acts:
        per_layer: dict[int, tuple[float, int, int, int]] = {}
        for s, rec in records.items():
            value, token, channel = _peak(rec.y)
            layer = sites[s].layer
            if layer not in per_layer or abs(value) > abs(per_layer[layer][0]):
                per_layer[layer] = (value, s, token, channel)
        layers = sorted(per_layer)
        _, spikes = _spiking([abs(per_layer[layer][0]) for layer in layers], cfg)
        value, s, token, channel = per_layer[sw.layer]
        if spikes[layers.index(sw.layer)] and channel == sw.row:
            col = int((sites[s].weight[channel].float() * records[s].x[token]).abs().argmax())
            agree += col == sw.col
    return agree / len(run.acts)


def _site_of(sites: list[DownProj], label: str) -> tuple[int, DownProj]:
    return next((i, s) for i, s in enumerate(sites) if s.label == label)


def _layer_outputs(model: nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream after each decoder layer, (tokens, hidden) each."""
    import torch

    from superweight.errors import UnsupportedArchitectureError
    from superweight.model.architectures import decoder_layers

    with torch.no_grad():
        try:
            layers = decoder_layers(model)
        except UnsupportedArchitectureError:  # a --down-proj model: HF's hidden states (last one normed)
            return [h[0].float() for h in model(ids, output_hidden_states=True).hidden_states[1:]]
        with capture_layer_outputs(layers) as outs:
            model(ids)
    return [outs[i] for i in range(len(layers))]


def _residual_stream(hidden: list[torch.Tensor]) -> list[dict[str, Any]]:
    out = []
    for i, h in enumerate(hidden):
        value, token, channel = _peak(h)
        out.append({"layer": i, "max": abs(value), "channel": channel, "token": token})
    return out


def check_prompts(prompts: list[str] | tuple[str, ...] | None) -> None:
    """Fail on an empty prompt before a model is loaded."""
    for text in prompts or []:
        if not text or not text.strip():
            raise SuperweightError("empty prompt: give text with at least one token", option="prompt")


def _encode(tokenizer: Any, text: str, device: torch.device) -> torch.Tensor:
    check_prompts([text])
    ids = tokenizer(text, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise SuperweightError(f"prompt {text!r} has no tokens")
    return ids.to(device)


def find_super_weights(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str] | tuple[str, ...] | None = None,
    config: DetectionConfig | None = None,
    model_name: str | None = None,
) -> ScanResult:
    """Find the super weights of ``model`` and the super activations they produce.

    Example:
        >>> lm = load_model("smollm2-135m")
        >>> result = find_super_weights(lm.model, lm.tokenizer)
        >>> [(w.layer, w.row, w.col) for w in result.super_weights]
    """
    cfg = config or DetectionConfig()
    prompts = list(prompts or DEFAULT_PROMPTS)
    start = time.perf_counter()
    sites = down_projections(model)
    device = next(model.parameters()).device
    prompt_ids = [_encode(tokenizer, p, device) for p in prompts]
    alt_ids = bos_toggled(tokenizer, prompt_ids)  # the same prompts with BOS added (or removed)
    bos_agreement: dict[tuple[str, int, int], float] = {}
    probe = probe_windows(tokenizer, cfg.probe_text, model, cfg.probe_windows, cfg.probe_tokens)

    base = _measure(model, sites, prompt_ids)
    layers = _layer_stats(base, cfg)
    found: list[SuperWeight] = []
    seen: set[tuple[str, int, int]] = set()
    exhausted: set[int] = set()
    iterations: list[dict[str, Any]] = []
    run = base
    with ExitStack() as stack:  # every zeroed weight is restored when this block ends
        for iteration in range(cfg.max_iterations):
            _, spike_in = _spiking(run.maxima("in"), cfg)
            z_out, spike_out = _spiking(run.maxima("out"), cfg)
            spiking = [
                (z_out[i], layer)
                for i, layer in enumerate(run.layers)
                if spike_in[i] and spike_out[i] and layer not in exhausted
            ]
            if not spiking:
                break
            _, layer = max(spiking)
            cand = _candidate(run, layer, sites, cfg)
            before = abs(run.out_peak[layer].value)
            if cand.coordinate in seen:
                exhausted.add(layer)
                continue
            seen.add(cand.coordinate)
            ref = WeightRef(find_down_proj(sites, cand.module), cand.row, cand.col)
            cand.agreement = _agreement(run, cand, sites, cfg)
            if alt_ids:
                bos_agreement[cand.coordinate] = _agreement(_measure(model, sites, alt_ids), cand, sites, cfg)
            ctx = zeroed([ref])
            ctx.__enter__()
            after_run = _measure(model, sites, prompt_ids)
            cand.spike_drop = 1 - abs(after_run.out_peak[layer].value) / max(before, TINY)
            accepted = cand.spike_drop >= cfg.min_spike_drop
            iterations.append(
                {"iteration": iteration, "layer": layer, "row": cand.row, "col": cand.col,
                 "spike_drop": cand.spike_drop, "accepted": accepted}
            )  # fmt: skip
            log(
                f"  round {iteration + 1}: layer {layer} [{cand.row}, {cand.col}] zeroed, spike "
                f"{'down' if cand.spike_drop >= 0 else 'up'} {abs(cand.spike_drop):.0%}: "
                f"{'kept' if accepted else 'rejected, stopping on this layer'}"
            )
            if accepted:
                stack.push(lambda *exc, ctx=ctx: ctx.__exit__(*exc))
                found.append(cand)
                run = after_run
            else:
                ctx.__exit__(None, None, None)
                exhausted.add(layer)

    losses = SetLosses(model, lambda: window_losses(model, probe))
    contributions = {(sw.module, sw.row): decompose(base.acts, *_site_of(sites, sw.module), sw.row) for sw in found}
    nulls = layer_nulls(losses, sites, found, cfg.null_draws) if cfg.null_draws else {}
    evidence, groups, set_loss = confirm_set(losses, found, cfg, contributions, nulls)
    base_loss = losses.base_loss
    confirmed = [w for w in found if w.confirmed]
    hidden = _layer_outputs(model, prompt_ids[0])
    activations = super_activations(hidden, base.acts[0], confirmed, sites, cfg)
    for ev, sw in zip(evidence, found, strict=True):
        ev.label = pair_label(sw, activations)
        ev.bos_agreement = bos_agreement.get(sw.coordinate)
    residual = _residual_stream(hidden)
    massive: dict[str, Any] = {}
    extra = 0
    if not confirmed:

        def rerun() -> tuple[list[torch.Tensor], float]:
            nonlocal extra
            extra += 2
            after = _layer_outputs(model, prompt_ids[0])
            loss = window_losses(model, probe)
            return after, sum(loss) / len(loss) - base_loss

        massive = explain_massive(model, hidden, base.acts[0], sites, rerun)
    detect_s = time.perf_counter() - start
    prompt_passes = (len(prompt_ids) + len(alt_ids)) * len(iterations) + len(prompt_ids) + 1 + extra // 2
    log(
        f"detection: {len(confirmed)} confirmed super weight(s), "
        f"{len(found) - len(confirmed)} unconfirmed, {detect_s:.1f} s"
    )
    return ScanResult(
        model=model_name or str(getattr(model.config, "_name_or_path", "") or architecture_name(model)),
        architecture=architecture_name(model),
        num_parameters=sum(p.numel() for p in model.parameters()),
        prompts=prompts,
        super_weights=confirmed,
        unconfirmed=[w for w in found if not w.confirmed],
        super_activations=activations,
        layers=layers,
        # forward passes: the prompts once per measuring round, the probe once per zeroed set, one residual trace
        timings={
            "detect_s": detect_s,
            "forward_passes": prompt_passes + losses.passes + extra // 2,
            "prompt_passes": prompt_passes,  # short prompts, batch of 1
            "probe_passes": losses.passes + extra // 2,  # one batch of probe windows each
        },
        base_loss=base_loss,
        config=cfg,
        iterations=iterations,
        residual_stream=residual,
        rows=weight_rows(model, found),
        evidence=evidence,
        groups=groups,
        set_loss=set_loss,
        probe=probe.to_dict(),
        fp16=fp16_safety(residual, layers),
        massive=massive,
    )


def scan_model(lm: LoadedModel, prompts: list[str] | None = None, config: DetectionConfig | None = None) -> ScanResult:
    """:func:`find_super_weights` on a loaded model, with where it came from and its load time."""
    result = find_super_weights(lm.model, lm.tokenizer, prompts, config, model_name=lm.spec)
    result.timings = {"load_s": lm.load_s, **result.timings}
    result.source = {"path": lm.path, "kind": lm.source, "dequantized_from": lm.dequantized_from}
    # --- super experts (MoE models only: a dense model costs no forward pass) and the atlas's word on this model
    from superweight.detect.atlas import agreement, load_atlas
    from superweight.detect.atlas_check import names_for
    from superweight.detect.experts import find_super_experts

    result.super_experts = find_super_experts(lm.model, lm.tokenizer, result.prompts)
    atlas = load_atlas()
    result.atlas = agreement(names_for(lm.spec, atlas), result.super_weights, result.super_experts, atlas)
    return result


def weight_rows(model: nn.Module, weights: list[SuperWeight]) -> list[WeightRow]:
    """The down-projection rows holding ``weights`` (confirmed or not), one per (module, row)."""
    sites = down_projections(model)
    out: dict[tuple[str, int], WeightRow] = {}
    for sw in weights:
        key = (sw.module, sw.row)
        if key not in out:
            values = find_down_proj(sites, sw.module).weight[sw.row].detach().float().cpu().tolist()
            kind = "super weight" if sw.confirmed else "not confirmed"
            out[key] = WeightRow(
                f"layer {sw.layer} row {sw.row} ({kind})", sw.module, sw.row, [float(f"{v:.5g}") for v in values], []
            )
        out[key].marks.append(sw.col)
    return list(out.values())


def _layer_stats(run: _Pass, cfg: DetectionConfig) -> list[LayerStats]:
    z_in, spike_in = _spiking(run.maxima("in"), cfg)
    z_out, spike_out = _spiking(run.maxima("out"), cfg)
    stats = []
    for i, layer in enumerate(run.layers):
        pin, pout = run.in_peak[layer], run.out_peak[layer]
        stats.append(
            LayerStats(
                layer=layer,
                max_input=abs(pin.value),
                input_channel=pin.channel,
                max_output=abs(pout.value),
                output_channel=pout.channel,
                token=pout.token,
                input_z=z_in[i],
                output_z=z_out[i],
                spike=spike_in[i] and spike_out[i],
            )
        )
    return stats


def super_activations(
    hidden: list[torch.Tensor],
    acts: dict[int, Any],
    weights: list[SuperWeight],
    sites: list[DownProj],
    cfg: DetectionConfig,
) -> list[SuperActivation]:
    """The hidden-state spike each super weight creates, from the intact model's first prompt.

    ``acts`` maps a site's index to its activations on that prompt; the streamed scan calls this too.
    """
    out: dict[tuple[int, int], SuperActivation] = {}
    for sw in weights:
        key = (sw.layer, sw.row)
        if key in out:
            continue
        # the down-projection output at this channel, in the first prompt, model intact
        column = max(
            (acts[s].y[:, sw.row] for s, site in enumerate(sites) if site.layer == sw.layer),
            key=lambda c: float(c.abs().max()),
        )
        peak = int(column.abs().argmax())
        tokens = [int(t) for t in (column.abs() >= cfg.fire_fraction * column.abs().max()).nonzero().flatten()]
        residual = [float(h[tokens, sw.row].abs().max()) for h in hidden]
        ref = residual[sw.layer] if sw.layer < len(residual) else 0.0
        persists = sw.layer
        for i in range(sw.layer, len(residual)):
            if residual[i] < 0.5 * ref:
                break
            persists = i
        out[key] = SuperActivation(sw.layer, sw.row, float(column[peak]), tokens, residual, persists)
    return list(out.values())
