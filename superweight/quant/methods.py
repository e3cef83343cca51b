"""Quantization methods around super weights, applied to a model's decoder linears in memory.

A method decides, per weight tensor, which entries are held out of the ranges (and kept exactly) and
how the rest are prepared before round-to-nearest:

* ``naive``: plain min-max RTN.
* ``sw``: the super weights held out and restored exactly (Yu et al. 2024, section 4).
* ``sw+clip``: ``sw`` plus z-score clipping of the other weights, the z chosen per tensor from a grid by
  the smallest output reconstruction error ``||X (W - Q(W))^T||`` on calibration inputs (WikiText-2
  validation text, never test).
* ``row``: the super activation's whole hidden channel (that row of every down-projection) held out.
* ``sparse:F``: dense-and-sparse (SqueezeLLM / SpQR style): the fraction F of largest-|w| entries of each
  tensor held out, super weights always among them.
* ``hqq`` / ``hqq+sw``: HQQ's choice of zero point (Badri & Shaji 2023, half-quadratic optimisation; the
  solver is torchao's public ``optimize_weights_proximal_legacy``) as a library baseline, without and with
  the super weights held out.

Every method produces the same stored form (codes, fp16 scales/offsets, sparse part), so bits per weight
and checkpoints are comparable. :class:`WeightSnapshot` makes the model edits undoable bit-exactly.
"""

from __future__ import annotations

import fnmatch
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from superweight.errors import QuantizationError
from superweight.quant.rtn import BitCount, QuantConfig, QuantMeta, dequantize, group_size, quantize

if TYPE_CHECKING:
    import torch
    from torch import nn

BASE_METHODS = ("naive", "sw", "sw+clip", "row", "sparse", "hqq", "hqq+sw")
Z_GRID = (2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, math.inf)


@dataclass(frozen=True)
class Method:
    name: str  # one of BASE_METHODS
    fraction: float = 0.0  # sparse:F

    @property
    def label(self) -> str:
        return f"sparse:{self.fraction:g}" if self.name == "sparse" else self.name

    @property
    def protects_super_weights(self) -> bool:
        return self.name not in ("naive", "hqq")


def parse_method(text: str) -> Method:
    """``"sw+clip"``, ``"sparse:0.005"``... -> :class:`Method`, or an error that lists the choices."""
    text = text.strip().lower()
    if text.startswith("sparse"):
        _, _, frac = text.partition(":")
        try:
            fraction = float(frac)
        except ValueError:
            raise QuantizationError(
                f"sparse needs a fraction, e.g. sparse:0.005 (got {text!r})", option="methods"
            ) from None
        if not 0 < fraction < 0.5:
            raise QuantizationError(
                f"sparse:F needs 0 < F < 0.5, e.g. sparse:0.005 (got {fraction:g})", option="methods"
            )
        return Method("sparse", fraction)
    if text not in BASE_METHODS:
        raise QuantizationError(
            f"unknown method {text!r}; choose from {', '.join(BASE_METHODS[:4])}, sparse:F, hqq, hqq+sw",
            option="methods",
        )
    return Method(text)


def check_combination(method: Method, config: QuantConfig) -> None:
    """Reject combinations that have no meaning, before any work is done."""
    if method.name.startswith("hqq") and config.scheme != "asym":
        raise QuantizationError(
            f"{method.label} chooses an asymmetric scale and zero point; use scheme asym", option="methods"
        )


# ------------------------------------------------------------------------------------- model side


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The ``(out, in)`` weight of a Linear (or the transposed view of a GPT-2 Conv1D); writes go through."""
    w = module.weight.data
    return w.T if type(module).__name__ == "Conv1D" else w


def select_linears(model: nn.Module, modules: str | None = None) -> list[tuple[str, nn.Module]]:
    """All decoder linears, or those whose name matches one of the comma-separated globs in ``modules``."""
    from superweight.model.architectures import linear_layers

    layers = linear_layers(model)
    if not modules:
        return layers
    patterns = [p.strip() for p in modules.split(",") if p.strip()]
    chosen = [(n, m) for n, m in layers if any(fnmatch.fnmatchcase(n, p) or n.endswith("." + p) for p in patterns)]
    if not chosen:
        raise QuantizationError(
            f"{modules!r} matched no decoder linear; names look like {layers[0][0]!r} "
            "(globs such as '*.mlp.down_proj' or suffixes such as 'down_proj' work)",
            option="modules",
        )
    return chosen


@dataclass
class Protection:
    """What the protecting methods hold out, by module name."""

    weights: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # super weights (row, col)
    rows: dict[str, list[int]] = field(default_factory=dict)  # whole output rows (super activation channel)

    @classmethod
    def from_scan(cls, model: nn.Module, scan: Any) -> Protection:
        """Super weights of a scan, and the super activation channels as rows of every down-projection."""
        from superweight.model.architectures import down_projections

        sites = [s for s in down_projections(model) if s.expert is None]  # fused MoE experts: not handled
        prot = cls()
        for sw in scan.super_weights:
            if sw.expert is None:
                prot.weights.setdefault(sw.module, []).append((sw.row, sw.col))
        channels = sorted({a.channel for a in scan.super_activations} | {sw.row for sw in scan.super_weights})
        for site in sites:
            if channels:
                prot.rows[site.name] = list(channels)
        return prot

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": {k: [list(c) for c in v] for k, v in self.weights.items()},
            "rows": dict(self.rows),
        }


class WeightSnapshot:
    """Exact copies of the selected weights: apply any number of quantizations, then restore bit-exactly."""

    def __init__(self, linears: list[tuple[str, nn.Module]]):
        self.linears = linears
        self.saved = {name: linear_weight(m).detach().clone() for name, m in linears}

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for name, module in self.linears:
                linear_weight(module).copy_(self.saved[name])

    def __enter__(self) -> WeightSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


# ------------------------------------------------------------------------------------ per tensor


def exclusion_mask(
    weight: torch.Tensor, method: Method, coords: list[tuple[int, int]], rows: list[int]
) -> torch.Tensor | None:
    """Which entries this method keeps exactly (None: none)."""
    import torch

    if not method.protects_super_weights:
        return None
    mask = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
    for r, c in coords:
        mask[r, c] = True
    if method.name == "row":
        for r in rows:
            mask[r, :] = True
    if method.name == "sparse":
        k = max(1, math.ceil(method.fraction * weight.numel()))
        top = weight.detach().abs().flatten().float().topk(k).indices
        mask.view(-1)[top] = True
    return mask if bool(mask.any()) else None


def reconstruction_error(weight: torch.Tensor, approx: torch.Tensor, inputs: torch.Tensor | None) -> float:
    """``||X (W - W')^T||^2`` on calibration inputs; plain squared weight error without inputs."""
    delta = (approx.float() - weight.float()).to(weight.device)
    if inputs is None:
        return float(delta.pow(2).sum())
    return float((inputs.to(delta.device).float() @ delta.T).pow(2).sum())


def clip_search(
    weight: torch.Tensor,
    config: QuantConfig,
    exclude: torch.Tensor | None,
    inputs: torch.Tensor | None,
    grid: tuple[float, ...] = Z_GRID,
) -> tuple[float, torch.Tensor, torch.Tensor, QuantMeta]:
    """The z-score clip (per tensor, over the non-held-out weights) with the least reconstruction error."""
    import torch

    w = weight.detach()
    rest = w[~exclude] if exclude is not None else w.flatten()
    mu, sigma = float(rest.float().mean()), float(rest.float().std())
    best: tuple[float, float, Any] | None = None
    for z in grid:
        clipped = w if math.isinf(z) else w.clamp(mu - z * sigma, mu + z * sigma)
        if exclude is not None:
            clipped = torch.where(exclude, w, clipped)  # held-out entries keep their exact values
        codes, meta = quantize(clipped, config, exclude=exclude)
        approx = dequantize(codes, meta).to(w.device)
        err = reconstruction_error(w, approx, inputs)
        if best is None or err < best[0]:
            best = (err, z, (approx, codes, meta))
    assert best is not None
    return best[1], *best[2]


HQQ_ROUND_ZERO_BITS = (4,)  # widths at which HQQ rounds its initial zero point (as torchao and hqq do)


def hqq_groups(groups: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HQQ (Badri & Shaji 2023) on ``(n, width)`` groups: codes, and (scale, offset) with w = scale * q + offset.

    The min-max start is HQQ's own; the half-quadratic solver that then moves the zero point to minimise
    ``||W - Q^-1(Q(W))||_p^p`` (p = 0.7) is torchao's public ``optimize_weights_proximal_legacy``.
    """
    import torch
    from torchao.quantization.quant_primitives import optimize_weights_proximal_legacy

    w = groups.float().contiguous()
    qmax = 2**bits - 1
    lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    inv_scale = (qmax / (hi - lo)).clamp(max=2e4)  # HQQ's convention: q = w * inv_scale + zero
    zero = -lo * inv_scale
    if bits in HQQ_ROUND_ZERO_BITS:
        zero = torch.round(zero)
    q, inv_scale, zero = optimize_weights_proximal_legacy(
        w, inv_scale, zero, [0, qmax], axis=1, dtype=torch.float32, device=str(w.device)
    )
    scale = (1.0 / inv_scale).reshape(-1)
    return q.reshape(groups.shape).clone(), scale.clone(), (-zero.reshape(-1) * scale).clone()


def hqq_quantize(
    weight: torch.Tensor, config: QuantConfig, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, QuantMeta]:
    """HQQ in this module's stored form; held-out entries are set to 0 for the optimisation, then restored."""
    import torch

    rows, cols = weight.shape
    w = weight.detach().float()
    if exclude is not None:
        w = w.masked_fill(exclude, 0.0)
    per_row, width = group_size((rows, cols), config.block)
    if config.block == "tensor":
        parts = [(w.reshape(1, -1), 1, rows * cols)]
    elif config.block == "channel":
        parts = [(w, rows, cols)]
    else:
        full = (cols // width) * width
        parts = [(w[:, :full].reshape(-1, width), rows, full)]
        if full < cols:
            parts.append((w[:, full:].contiguous(), rows, cols - full))
    codes, scales, offsets = [], [], []
    for groups, r, c in parts:
        q, s, m = hqq_groups(groups, config.bits)
        codes.append(q.reshape(r, c) if config.block != "tensor" else q.reshape(rows, cols))
        scales.append(s.reshape(r, -1))
        offsets.append(m.reshape(r, -1))
    code = torch.cat(codes, 1).to(torch.uint8).cpu()
    scale = torch.cat(scales, 1).reshape(-1).half().cpu()
    offset = torch.cat(offsets, 1).reshape(-1).half().cpu()
    assert scale.numel() == (1 if config.block == "tensor" else rows * per_row)
    _, meta = quantize(weight, QuantConfig(config.bits, config.block, "asym"), exclude=exclude)
    meta.scale, meta.offset = scale, offset
    return code, meta


@dataclass
class TensorResult:
    name: str
    codes: torch.Tensor
    meta: QuantMeta
    clip_z: float | None = None


def quantize_tensor(
    name: str,
    weight: torch.Tensor,
    method: Method,
    config: QuantConfig,
    protection: Protection | None = None,
    inputs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, TensorResult]:
    """Quantize one ``(out, in)`` weight by ``method``: (dequantized tensor, stored form)."""
    check_combination(method, config)
    protection = protection or Protection()
    coords = protection.weights.get(name, []) if method.protects_super_weights else []
    rows = protection.rows.get(name, []) if method.name == "row" else []
    exclude = exclusion_mask(weight, method, coords, rows)
    clip_z = None
    if method.name == "sw+clip":
        clip_z, approx, codes, meta = clip_search(weight, config, exclude, inputs)
    elif method.name.startswith("hqq"):
        codes, meta = hqq_quantize(weight, config, exclude)
        approx = dequantize(codes, meta)
    else:
        codes, meta = quantize(weight, config, exclude=exclude)
        approx = dequantize(codes, meta)
    return approx.to(weight.device), TensorResult(name, codes, meta, clip_z)


# -------------------------------------------------------------------------------------- per model


@dataclass
class QuantReport:
    """One applied quantization: what it cost in bits and time, and what the search chose."""

    method: str
    bits: int
    block: str
    bit_count: BitCount
    seconds: float
    clip_z: dict[str, float] = field(default_factory=dict)
    tensors: list[TensorResult] = field(default_factory=list)  # kept only when asked (for --save)

    @property
    def bits_per_weight(self) -> float:
        return self.bit_count.bits_per_weight

    def to_dict(self) -> dict[str, Any]:
        out = {"method": self.method, "bits": self.bits, "block": self.block, "seconds": self.seconds}
        out.update(self.bit_count.to_dict())
        if self.clip_z:
            zs = [z for z in self.clip_z.values() if math.isfinite(z)]
            out["clip_z"] = {
                "median": sorted(zs)[len(zs) // 2] if zs else math.inf,
                "unclipped_tensors": sum(1 for z in self.clip_z.values() if math.isinf(z)),
            }
        return out


def apply_quantization(
    snapshot: WeightSnapshot,
    method: Method,
    config: QuantConfig,
    protection: Protection | None = None,
    calibration: dict[str, torch.Tensor] | None = None,
    keep: bool = False,
) -> QuantReport:
    """Write the quantized weights into the model (from the snapshot's originals); undo with ``restore``."""
    import torch

    from superweight.progress import track

    check_combination(method, config)
    for _, module in snapshot.linears:  # fail on a bad block before touching any weight
        group_size(tuple(linear_weight(module).shape), config.block)
    start = time.perf_counter()
    total = BitCount(0, 0, 0, 0)
    report = QuantReport(method.label, config.bits, config.label, total, 0.0)
    with torch.no_grad():
        for name, module in track(snapshot.linears, f"{method.label} {config.bits}-bit {config.label}"):
            inputs = calibration.get(name) if calibration else None
            approx, result = quantize_tensor(name, snapshot.saved[name], method, config, protection, inputs)
            linear_weight(module).copy_(approx)
            total = total + result.meta.bit_count()
            if result.clip_z is not None:
                report.clip_z[name] = result.clip_z
            if keep:
                report.tensors.append(result)
    report.bit_count = total
    report.seconds = time.perf_counter() - start
    return report


def collect_inputs(
    model: nn.Module, linears: list[tuple[str, nn.Module]], windows: torch.Tensor, max_rows: int = 256
) -> dict[str, torch.Tensor]:
    """Calibration inputs of every selected linear: up to ``max_rows`` token rows, evenly spaced."""
    import torch

    from superweight.model.capture import hooks

    store: dict[str, list[torch.Tensor]] = {name: [] for name, _ in linears}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            store[name].append(args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu())

        return hook

    with torch.no_grad(), hooks([m.register_forward_pre_hook(hook_for(n)) for n, m in linears]):
        for window in windows:
            model(input_ids=window.view(1, -1).to(next(model.parameters()).device), use_cache=False)
    out = {}
    for name, parts in store.items():
        x = torch.cat(parts)
        pick = torch.linspace(0, x.shape[0] - 1, min(max_rows, x.shape[0])).round().long()
        out[name] = x[pick].clone()
    return out
