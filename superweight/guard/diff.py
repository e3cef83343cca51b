"""Compare two checkpoints of one architecture tensor by tensor, and say what became of the super weights.

Tensors are read one pair at a time straight from the files (safetensors byte ranges, GGUF tensors
dequantized with the ``gguf`` package), so memory holds two tensors, never two models. Across formats,
GGUF names are mapped to Hugging Face names with gguf's own tensor-name map, and Llama's Q/K rows are
un-permuted the way transformers does when it loads a GGUF file.

A super weight's fate compares its value in B with A: *kept* (within 5 %), *scaled* (another factor,
sign flips included), *removed* (below 10 % of its size), or *moved* (gone here, while B's same
down-projection holds a weight at least half as large elsewhere, the usual result of a permutation
or a re-trained outlier).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from superweight.dtypes import by_code, decode
from superweight.errors import SuperweightError
from superweight.model.files import ModelFiles, TensorSpan, gguf_tensor_name, resolve_model_files

if TYPE_CHECKING:
    from superweight.detect.result import ScanResult
    from superweight.guard.manifest import SuperWeightEntry


@dataclass
class TensorDiff:
    name: str  # in A
    name_b: str
    shape: list[int]
    rel_change: float  # ||B - A|| / ||A||
    max_change: float  # max |B - A|
    changed: int  # entries that differ
    numel: int
    identical_bytes: bool


@dataclass
class WeightFate:
    layer: int
    row: int
    col: int
    value_a: float
    value_b: float
    fate: str  # kept | scaled | removed | moved
    ratio: float
    moved_to: list[int] | None = None


@dataclass
class ActivationFate:
    layer: int
    channel: int
    magnitude_a: float
    magnitude_b: float
    fate: str
    ratio: float


@dataclass
class DiffReport:
    model_a: str
    model_b: str
    formats: list[str]
    tensors: list[TensorDiff]  # sorted by rel_change, largest first
    only_a: list[str]
    only_b: list[str]
    super_weights: list[WeightFate] = field(default_factory=list)
    super_activations: list[ActivationFate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffReport:
        from superweight.results import build

        report = build(cls, data)
        report.tensors = [build(TensorDiff, t) for t in data["tensors"]]
        report.super_weights = [build(WeightFate, w) for w in data["super_weights"]]
        report.super_activations = [build(ActivationFate, a) for a in data["super_activations"]]
        return report


def read_tensor(span: TensorSpan) -> np.ndarray:
    """One tensor as float32 (GGUF blocks dequantized), read from its byte range."""
    raw = np.fromfile(span.path, dtype=np.uint8, count=span.nbytes, offset=span.offset)
    entry = by_code(span.dtype)
    if entry is not None:
        if entry.numpy is None and span.dtype != "BF16":
            raise SuperweightError(f"cannot compare tensors of dtype {span.dtype} ({span.name})")
        return decode(raw, span.dtype).reshape(span.shape)
    import gguf

    rows = math.prod(span.shape[:-1])
    values = gguf.quants.dequantize(raw.reshape(rows, -1), gguf.GGMLQuantizationType[span.dtype])
    return values.astype(np.float32).reshape(span.shape)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (as transformers' GGUF loader does)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def _pairs(
    a: ModelFiles, b: ModelFiles
) -> tuple[list[tuple[TensorSpan, TensorSpan, int | None]], list[str], list[str]]:
    """Matching tensors, with the head count to un-permute a GGUF Q/K tensor by (or None)."""
    names_b = {s.name: s for s in b.spans}
    if a.format == b.format:
        pairs = [(s, names_b[s.name], None) for s in a.spans if s.name in names_b]
        matched = {s.name for s, _, _ in pairs}
        return pairs, [s.name for s in a.spans if s.name not in names_b], sorted(names_b.keys() - matched)
    g, h = (a, b) if a.format == "gguf" else (b, a)
    arch = g.identity.get("architecture") or ""
    layers = int(g.identity.get("block_count") or 0)
    to_gguf = {}
    for s in h.spans:
        try:
            to_gguf[s.name] = gguf_tensor_name(s.name, arch, layers)
        except SuperweightError:
            continue
    g_by = {s.name: s for s in g.spans}
    pairs = []
    for s in h.spans:
        gs = g_by.get(to_gguf.get(s.name, ""))
        if gs is None:
            continue
        heads = None
        if arch == "llama" and gs.name.endswith(("attn_q.weight", "attn_k.weight")):
            key = "head_count" if gs.name.endswith("attn_q.weight") else "head_count_kv"
            heads = int(g.identity.get(key) or g.identity.get("head_count") or 0) or None
        pairs.append((s, gs, heads) if h is a else (gs, s, heads))
    matched_h = {p[0 if h is a else 1].name for p in pairs}
    matched_g = {p[1 if h is a else 0].name for p in pairs}
    only_h = [s.name for s in h.spans if s.name not in matched_h]
    only_g = [s.name for s in g.spans if s.name not in matched_g]
    return pairs, (only_h if h is a else only_g), (only_g if h is a else only_h)


def _tensor_diff(sa: TensorSpan, sb: TensorSpan, heads: int | None) -> TensorDiff:
    if sa.dtype == sb.dtype and sa.nbytes == sb.nbytes and heads is None:
        ra = np.fromfile(sa.path, dtype=np.uint8, count=sa.nbytes, offset=sa.offset)
        rb = np.fromfile(sb.path, dtype=np.uint8, count=sb.nbytes, offset=sb.offset)
        if np.array_equal(ra, rb):
            return TensorDiff(sa.name, sb.name, list(sa.shape), 0.0, 0.0, 0, math.prod(sa.shape), True)
    a, b = read_tensor(sa), read_tensor(sb)
    if heads is not None:  # the GGUF side is permuted
        if sa.path.suffix == ".gguf":
            a = _unpermute(a, heads)
        else:
            b = _unpermute(b, heads)
    if a.shape != b.shape:
        raise SuperweightError(f"{sa.name} is {list(a.shape)} in A but {list(b.shape)} in B: not the same architecture")
    d = (b - a).astype(np.float64)
    norm = float(np.linalg.norm(a.astype(np.float64)))
    dn = float(np.linalg.norm(d))
    rel = dn / norm if norm else (0.0 if dn == 0 else math.inf)
    max_change = float(np.nanmax(np.abs(d))) if d.size else 0.0
    return TensorDiff(sa.name, sb.name, list(a.shape), rel, max_change, int(np.count_nonzero(a != b)), a.size, False)


def _fate(a: float, b: float) -> tuple[str, float]:
    ratio = b / a if a else math.inf
    if abs(ratio - 1) <= 0.05:
        return "kept", ratio
    if abs(ratio) < 0.1:
        return "removed", ratio
    return "scaled", ratio


def diff_checkpoints(
    model_a: str,
    model_b: str,
    *,
    super_weights: list[SuperWeightEntry] | None = None,
    scan: ScanResult | None = None,
    activations: bool = False,
) -> DiffReport:
    """Per-tensor change statistics (largest first) and the fate of each super weight and activation.

    ``super_weights`` are A's manifest entries (``Manifest.super_weights``); without them (and
    without ``scan``) model A is loaded once and scanned.

    Example:
        >>> report = diff_checkpoints("./base", "./finetuned")
        >>> [(t.name, t.rel_change) for t in report.tensors[:5]]
    """
    from superweight.progress import track

    fa, fb = resolve_model_files(model_a), resolve_model_files(model_b)
    pairs, only_a, only_b = _pairs(fa, fb)
    if not pairs:
        raise SuperweightError(f"{model_a} and {model_b} share no tensor: not two checkpoints of one architecture")
    report = DiffReport(model_a, model_b, [fa.format, fb.format], [], only_a, only_b)
    for sa, sb, heads in track(pairs, "comparing tensors", total=len(pairs)):
        report.tensors.append(_tensor_diff(sa, sb, heads))
    report.tensors.sort(key=lambda t: (-t.rel_change if math.isfinite(t.rel_change) else -math.inf, t.name))
    if fa.format != fb.format:
        report.notes.append("different formats: values compared as float32 after GGUF dequantization (Q/K un-permuted)")
    lm = None
    if super_weights is None:
        from superweight.guard.fingerprint import super_weight_entries
        from superweight.model.loading import load_model

        lm = load_model(model_a)
        if scan is None:
            from superweight.detect.detection import find_super_weights

            scan = find_super_weights(lm.model, lm.tokenizer, model_name=model_a)
        super_weights = super_weight_entries(lm, scan.super_weights, None)
    by_a = {sa.name: (sa, sb) for sa, sb, _ in pairs}
    for e in super_weights:
        report.super_weights.append(_weight_fate(e, fa, by_a))
    if activations:
        report.super_activations = _activation_fates(model_a, model_b, scan, lm)
    elif scan is not None and scan.super_activations:
        report.notes.append("super activations not measured (pass activations=True / --activations)")
    return report


def _weight_fate(e: SuperWeightEntry, fa: ModelFiles, by_a: dict[str, tuple[TensorSpan, TensorSpan]]) -> WeightFate:
    name = e.param
    if fa.format == "gguf":
        name = gguf_tensor_name(name, fa.identity.get("architecture") or "", int(fa.identity.get("block_count") or 0))
    if name not in by_a:
        return WeightFate(e.layer, e.row, e.col, e.value, math.nan, "removed", 0.0)
    sa, sb = by_a[name]
    a, b = read_tensor(sa), read_tensor(sb)
    idx = tuple(e.index)
    va, vb = float(a[idx]), float(b[idx])
    fate, ratio = _fate(va, vb)
    moved = None
    if fate in ("removed", "scaled") and abs(ratio) < 0.5:
        top = np.unravel_index(int(np.nanargmax(np.abs(b))), b.shape)
        if tuple(int(i) for i in top) != idx and abs(float(b[top])) >= 0.5 * abs(va):
            fate, moved = "moved", [int(i) for i in top]
    return WeightFate(e.layer, e.row, e.col, va, vb, fate, ratio, moved)


def _activation_fates(model_a: str, model_b: str, scan: ScanResult | None, lm_a: Any) -> list[ActivationFate]:
    """Run the canary prompt through both models and compare each super activation's peak."""
    from superweight.guard.canary import run_canary
    from superweight.model.loading import load_model

    if scan is None or not scan.super_activations:
        return []
    out = []
    lm_a = lm_a or load_model(model_a)
    channels = sorted({a.channel for a in scan.super_activations})
    peaks_a = {c: run_canary(lm_a.model, lm_a.tokenizer, c).layer_magnitudes for c in channels}
    del lm_a
    lm_b = load_model(model_b)
    peaks_b = {c: run_canary(lm_b.model, lm_b.tokenizer, c).layer_magnitudes for c in channels}
    for act in scan.super_activations:
        ma, mb = max(peaks_a[act.channel][act.layer :]), max(peaks_b[act.channel][act.layer :])
        fate, ratio = _fate(ma, mb)
        out.append(ActivationFate(act.layer, act.channel, ma, mb, fate, ratio))
    return out
