"""Detection for models that do not fit in memory: one decoder layer at a time, read from the shards.

The model is built empty (``accelerate.init_empty_weights``: parameters on ``meta``); embeddings, the
final norm and the head are read in; then each sweep walks the decoder layers in order: read layer
i's tensors from the safetensors shards (:mod:`superweight.model.shards`), run every prompt (and the
probe text) through it, record the down-projection statistics, drop the layer. Peak memory is about
one layer plus the embeddings plus the activations, whatever the depth.

The decisions are those of :mod:`superweight.detect.detection` (same spike rule, same candidate,
same stopping and confirmation rules), so a streamed scan reports the same coordinates as an
in-memory one. What changes is the order of work: all prompts share one read of each layer, and an
intervention (zero a candidate, look again) replays only from the candidate's layer, starting from
the hidden states saved there; the causal confirmations of all candidates share one sweep.
Architectures whose decoder loop is a plain ``hidden = layer(hidden, ...)`` are supported (the
registry's ``layerwise`` adapters).
"""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from superweight.coordinates import SuperWeight
from superweight.detect.detection import robust_z, super_activations
from superweight.detect.result import DEFAULT_PROMPTS, DetectionConfig, LayerStats, ScanResult, WeightRow
from superweight.errors import SuperweightError, UnsupportedArchitectureError
from superweight.progress import log

if TYPE_CHECKING:
    import torch

    from superweight.model.capture import SiteActivations

TINY = 1e-30


@dataclass
class _Track:
    """One chain of hidden states through the layers, under its own edits."""

    start: int
    hidden: dict[int, torch.Tensor]  # sequence index -> hidden state entering layer `start`
    edits: list[SuperWeight] = field(default_factory=list)
    record: bool = False  # keep down-projection activations and every layer's input
    acts: dict[int, dict[int, SiteActivations]] = field(default_factory=dict)  # seq -> site -> activations
    inputs: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)  # layer -> seq -> hidden entering it
    loss: float | None = None


class StreamedModel:
    """An empty model whose decoder layers are read from the files one at a time, only while used."""

    def __init__(self, spec: str | None, dtype: str = "float32") -> None:
        import torch
        from accelerate import init_empty_weights
        from accelerate.utils import set_module_tensor_to_device
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from superweight.model.architectures import adapter_for, decoder_layers, down_projections, layerwise_classes
        from superweight.model.shards import open_shards

        _return_freed_memory()
        self.reader = open_shards(spec)
        if self.reader.format != "safetensors":
            raise SuperweightError(
                "streaming reads safetensors shards; this model is a GGUF file: scan it in memory",
                option="strategy",
            )
        self.dtype = getattr(torch, dtype)
        config = AutoConfig.from_pretrained(self.reader.root)
        self.tokenizer = AutoTokenizer.from_pretrained(self.reader.root)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        from transformers.initialization import no_init_weights

        # parameters on meta (never filled: no init), buffers such as rotary frequencies real
        with init_empty_weights(), no_init_weights():
            self.model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        self.model.eval().requires_grad_(False)
        cls = type(self.model).__name__
        if cls not in layerwise_classes():
            raise UnsupportedArchitectureError(
                f"{cls} cannot be streamed layer by layer (supported: {', '.join(layerwise_classes())}); "
                "scan it in memory or offloaded",
                option="strategy",
            )
        self.prefix = adapter_for(self.model).layers
        self.layers = decoder_layers(self.model)
        self.sites = down_projections(self.model)
        self.set = set_module_tensor_to_device
        for name, _ in self.model.named_parameters():
            if not name.startswith(self.prefix + ".") and self.reader.has(name):
                self.set(self.model, name, "cpu", value=self.reader.get(name, self.dtype))
        self.model.tie_weights()
        missing = [
            n for n, p in self.model.named_parameters() if p.device.type == "meta" and not n.startswith(self.prefix)
        ]
        if missing:
            raise SuperweightError(f"{self.reader.root} has no tensor for {missing[0]}")
        self.layer_reads = 0
        self.kwargs: dict[int, dict[int, dict[str, Any]]] = {}  # seq -> layer -> the kwargs the model passes it

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def prepare(self, sequences: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        """Record each layer's call arguments for each sequence; return the hidden states entering layer 0."""
        import torch

        start: dict[int, torch.Tensor] = {}
        for s, ids in enumerate(sequences):
            self.kwargs[s] = {}
            with self._passthrough(record=s), torch.no_grad():
                self.model(ids, use_cache=False)
            start[s] = self._entry.pop(s)
        return start

    def _passthrough(self, record: int | None = None, inject: torch.Tensor | None = None) -> ExitStack:
        """Every decoder layer returns its input unchanged (it is run by :meth:`sweep` instead)."""
        stack = ExitStack()
        self._entry: dict[int, torch.Tensor] = getattr(self, "_entry", {})

        def make(i: int):
            def forward(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
                if record is not None:
                    self.kwargs[record][i] = kwargs
                    if i == 0:
                        self._entry[record] = hidden_states.detach().clone()
                if inject is not None and i == 0:
                    return inject
                return hidden_states

            return forward

        for i, layer in enumerate(self.layers):
            layer.forward = make(i)
            stack.callback(delattr, layer, "forward")
        return stack

    def _load(self, i: int) -> None:
        for name, _ in self.layers[i].named_parameters():
            self.set(self.layers[i], name, "cpu", value=self.reader.get(f"{self.prefix}.{i}.{name}", self.dtype))
        self.layer_reads += 1

    def _free(self, i: int) -> None:
        for name, _ in self.layers[i].named_parameters():
            self.set(self.layers[i], name, "meta")

    def sweep(self, tracks: list[_Track], loss_of: dict[int, torch.Tensor]) -> None:
        """Run every track from its start layer to the end, each layer read once for all of them."""
        import torch

        from superweight.model.capture import capture_down_proj
        from superweight.model.interventions import refs_for, zeroed

        first = min(t.start for t in tracks)
        for i in range(first, len(self.layers)):
            self._load(i)
            layer = self.layers[i]
            try:
                for track in (t for t in tracks if t.start <= i):
                    if track.record:
                        track.inputs[i] = dict(track.hidden)
                    here = [w for w in track.edits if w.layer == i]
                    with zeroed(refs_for(self.model, here)), torch.no_grad():
                        for s, hidden in track.hidden.items():
                            if track.record:
                                with capture_down_proj(self.sites) as records:
                                    out = type(layer).forward(layer, hidden, **self.kwargs[s][i])
                                track.acts.setdefault(s, {}).update(records)
                            else:
                                out = type(layer).forward(layer, hidden, **self.kwargs[s][i])
                            track.hidden[s] = out[0] if isinstance(out, tuple) else out
            finally:
                self._free(i)
        for track in tracks:
            if track.record:
                track.inputs[len(self.layers)] = dict(track.hidden)
            for s, ids in loss_of.items():
                if s in track.hidden:
                    with self._passthrough(inject=track.hidden[s]), torch.no_grad():
                        track.loss = float(self.model(ids, labels=ids, use_cache=False).loss)

    def row(self, site_index: int, row: int) -> torch.Tensor:
        """One row of a down-projection (``weight[row, :]``), read from the files."""
        site = self.sites[site_index]
        name = site.param_name
        if site.transposed or site.expert is not None:
            raise UnsupportedArchitectureError(f"{site.label}: only dense Linear down-projections are streamed")
        return self.reader.rows(name, row, row + 1, self.dtype)[0].float()


def _return_freed_memory() -> None:
    """Ask glibc to serve every allocation over 1 MiB with its own mapping, so a freed layer goes back to the OS.

    Otherwise glibc raises its mmap threshold after each large free (up to 32 MiB) and layer-sized
    tensors below it are carved from the heap, which fragments and keeps growing layer after layer.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    with suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(name).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


# --- the decisions of detection.py, on recorded statistics --------------------------------------


def _peak(t: torch.Tensor) -> tuple[float, int, int]:
    flat = int(t.abs().argmax())
    token, channel = divmod(flat, t.shape[1])
    return float(t[token, channel]), token, channel


def _peaks(acts: dict[int, dict[int, SiteActivations]], sm: StreamedModel, prompts: list[int]) -> tuple[dict, dict]:
    """Per layer: (value, prompt, site, token, channel) of the largest |input| and |output|."""
    in_peak: dict[int, tuple] = {}
    out_peak: dict[int, tuple] = {}
    for p in prompts:
        for s in sorted(acts[p]):
            rec, layer = acts[p][s], sm.sites[s].layer
            for peaks, tensor in ((in_peak, rec.x), (out_peak, rec.y)):
                value, token, channel = _peak(tensor)
                if layer not in peaks or abs(value) > abs(peaks[layer][0]):
                    peaks[layer] = (value, p, s, token, channel)
    return in_peak, out_peak


def _spiking(values: list[float], cfg: DetectionConfig) -> tuple[list[float], list[bool]]:
    z = robust_z(values, cfg.mad_floor)
    out = []
    for i, v in enumerate(values):
        others = values[:i] + values[i + 1 :]
        ratio = v / max(statistics.median(others), TINY) if others else 1.0
        out.append(z[i] >= cfg.z_threshold and ratio >= cfg.min_ratio)
    return z, out


class _Rows:
    def __init__(self, sm: StreamedModel) -> None:
        self.sm, self.cache = sm, {}

    def __call__(self, site: int, row: int) -> torch.Tensor:
        if (site, row) not in self.cache:
            self.cache[(site, row)] = self.sm.row(site, row)
        return self.cache[(site, row)]


def stream_scan(
    spec: str | None,
    prompts: list[str] | None = None,
    config: DetectionConfig | None = None,
    dtype: str = "float32",
) -> ScanResult:
    """Find the super weights of the model in ``spec``'s safetensors files without ever loading it whole."""
    from superweight.detect.detection import check_prompts
    from superweight.model.placement import Placement, peak_memory

    cfg = config or DetectionConfig()
    prompts = list(prompts or DEFAULT_PROMPTS)
    check_prompts(prompts)
    start = time.perf_counter()
    sm = StreamedModel(spec, dtype)
    load_s = time.perf_counter() - start
    texts = [*prompts, cfg.probe_text]
    ids = [sm.tokenizer(t, return_tensors="pt").input_ids for t in texts]
    for text, seq in zip(texts, ids, strict=True):
        if seq.shape[1] == 0:
            raise SuperweightError(f"prompt {text!r} has no tokens", option="prompt")
    P, probe = list(range(len(prompts))), len(prompts)
    entry = sm.prepare(ids)
    base = _Track(0, dict(entry), record=True)
    sm.sweep([base], {probe: ids[probe]})
    base_loss = float(base.loss)
    rows = _Rows(sm)
    n_layers = len(sm.layers)

    acts = {p: dict(base.acts[p]) for p in P}
    inputs = {i: {p: base.inputs[i][p] for p in P} for i in base.inputs}
    layers = sorted({site.layer for site in sm.sites})
    found: list[SuperWeight] = []
    seen: set[tuple[str, int, int]] = set()
    exhausted: set[int] = set()
    iterations: list[dict[str, Any]] = []
    base_in, base_out = _peaks(acts, sm, P)
    in_peak, out_peak = base_in, base_out
    for iteration in range(cfg.max_iterations):
        _, spike_in = _spiking([abs(in_peak[la][0]) for la in layers], cfg)
        z_out, spike_out = _spiking([abs(out_peak[la][0]) for la in layers], cfg)
        spiking = [
            (z_out[i], la) for i, la in enumerate(layers) if spike_in[i] and spike_out[i] and la not in exhausted
        ]
        if not spiking:
            break
        _, layer = max(spiking)
        cand = _candidate(acts, out_peak[layer], layer, sm, rows, cfg)
        before = abs(out_peak[layer][0])
        if cand.coordinate in seen:
            exhausted.add(layer)
            continue
        seen.add(cand.coordinate)
        cand.agreement = _agreement(acts, cand, sm, rows, cfg, P)
        replay = _Track(layer, dict(inputs[layer]), [*found, cand], record=True)
        sm.sweep([replay], {})
        new_acts = {p: {**{s: a for s, a in acts[p].items() if sm.sites[s].layer < layer}, **replay.acts[p]} for p in P}
        new_in, new_out = _peaks(new_acts, sm, P)
        cand.spike_drop = 1 - abs(new_out[layer][0]) / max(before, TINY)
        accepted = cand.spike_drop >= cfg.min_spike_drop
        iterations.append(
            {"iteration": iteration, "layer": layer, "row": cand.row, "col": cand.col,
             "spike_drop": cand.spike_drop, "accepted": accepted}
        )  # fmt: skip
        log(f"  round {iteration + 1}: layer {layer} [{cand.row}, {cand.col}] zeroed (streamed), spike drop "
            f"{cand.spike_drop:.0%}: {'kept' if accepted else 'rejected'}")  # fmt: skip
        if accepted:
            found.append(cand)
            acts, in_peak, out_peak = new_acts, new_in, new_out
            inputs.update(replay.inputs)
        else:
            exhausted.add(layer)

    if found:  # each candidate zeroed alone, all in one sweep from the earliest
        checks = [_Track(w.layer, {probe: base.inputs[w.layer][probe]}, [w]) for w in found]
        sm.sweep(checks, {probe: ids[probe]})
        for w, track in zip(found, checks, strict=True):
            w.loss_increase = float(track.loss) - base_loss
            w.confirmed = w.loss_increase >= cfg.min_loss_increase
    confirmed = [w for w in found if w.confirmed]
    hidden = [base.inputs[i + 1][0].reshape(-1, base.inputs[i + 1][0].shape[-1]).float() for i in range(n_layers)]
    base_acts = {p: base.acts[p] for p in P}
    detect_s = time.perf_counter() - start - load_s
    placement = Placement("stream", ["streamed"] * n_layers, {}, peak_memory())
    log(f"detection (streamed, {sm.layer_reads} layer reads): {len(confirmed)} confirmed, {detect_s:.1f} s")
    return ScanResult(
        model=str(spec),
        architecture=type(sm.model).__name__,
        num_parameters=sm.num_parameters(),
        prompts=prompts,
        super_weights=confirmed,
        unconfirmed=[w for w in found if not w.confirmed],
        super_activations=super_activations(hidden, base_acts[0], confirmed, sm.sites, cfg),
        layers=_layer_stats(base_in, base_out, layers, cfg),
        timings={"load_s": load_s, "detect_s": detect_s},
        base_loss=base_loss,
        config=cfg,
        iterations=iterations,
        residual_stream=[
            {"layer": i, "max": abs(v), "channel": c, "token": t} for i, (v, t, c) in enumerate(map(_peak, hidden))
        ],
        rows=_weight_rows(found, sm),
        source={"path": str(sm.reader.root), "kind": "folder", "dequantized_from": None,
                "placement": placement.to_dict(), "layer_reads": sm.layer_reads,
                "bytes_read": sm.reader.bytes_read},
    )  # fmt: skip


def _candidate(acts, peak, layer: int, sm: StreamedModel, rows: _Rows, cfg: DetectionConfig) -> SuperWeight:
    value, p, s, token, channel = peak
    rec = acts[p][s]
    x = rec.x[token]
    col = int((rows(s, channel) * x).abs().argmax())
    column = rec.y[:, channel].abs()
    tokens = [int(t) for t in (column >= cfg.fire_fraction * column.max()).nonzero().flatten()]
    return SuperWeight(layer=layer, module=sm.sites[s].label, row=channel, col=col, value=float(rows(s, channel)[col]),
                       input_activation=float(x[col]), output_activation=value, tokens=tokens,
                       expert=sm.sites[s].expert)  # fmt: skip


def _agreement(
    acts, sw: SuperWeight, sm: StreamedModel, rows: _Rows, cfg: DetectionConfig, prompts: list[int]
) -> float:
    agree = 0
    for p in prompts:
        per_layer: dict[int, tuple[float, int, int, int]] = {}
        for s in sorted(acts[p]):
            value, token, channel = _peak(acts[p][s].y)
            layer = sm.sites[s].layer
            if layer not in per_layer or abs(value) > abs(per_layer[layer][0]):
                per_layer[layer] = (value, s, token, channel)
        layers = sorted(per_layer)
        _, spikes = _spiking([abs(per_layer[la][0]) for la in layers], cfg)
        value, s, token, channel = per_layer[sw.layer]
        if spikes[layers.index(sw.layer)] and channel == sw.row:
            agree += int((rows(s, channel) * acts[p][s].x[token]).abs().argmax()) == sw.col
    return agree / len(prompts)


def _layer_stats(in_peak: dict, out_peak: dict, layers: list[int], cfg: DetectionConfig) -> list[LayerStats]:
    z_in, spike_in = _spiking([abs(in_peak[la][0]) for la in layers], cfg)
    z_out, spike_out = _spiking([abs(out_peak[la][0]) for la in layers], cfg)
    return [
        LayerStats(la, abs(in_peak[la][0]), in_peak[la][4], abs(out_peak[la][0]), out_peak[la][4], out_peak[la][3],
                   z_in[i], z_out[i], spike_in[i] and spike_out[i])
        for i, la in enumerate(layers)
    ]  # fmt: skip


def _weight_rows(weights: list[SuperWeight], sm: StreamedModel) -> list[WeightRow]:
    out: dict[tuple[str, int], WeightRow] = {}
    index = {site.label: i for i, site in enumerate(sm.sites)}
    for sw in weights:
        key = (sw.module, sw.row)
        if key not in out:
            values = sm.row(index[sw.module], sw.row).tolist()
            kind = "super weight" if sw.confirmed else "not confirmed"
            out[key] = WeightRow(f"layer {sw.layer} row {sw.row} ({kind})", sw.module, sw.row,
                                 [float(f"{v:.5g}") for v in values], [])  # fmt: skip
        out[key].marks.append(sw.col)
    return list(out.values())
