"""Round-to-nearest weight quantization as pure functions: ``quantize(W, cfg) -> (codes, meta)``.

Like hqq's functional core, nothing here knows about models: a 2-D ``(out, in)`` tensor goes in, integer
codes and the parameters to undo them come out, and :func:`dequantize` rebuilds the tensor. That keeps
every layout testable on tiny tensors, and bit-exact against llama.cpp's own quantizers (``gguf.quants``):
``asym`` at 4 bits and block 32 is Q4_1, ``sym`` at 8 bits is Q8_0 and ``symfull`` at 4 bits is Q4_0.

Blocks are contiguous groups along the input dimension (a row that does not divide evenly ends in a
shorter block, with its own scale), one group per output channel (``channel``) or one for the whole
tensor (``tensor``). Entries marked in ``exclude`` are held out of the ranges and stored exactly in a
sparse part (flat int32 index + original value), which is how super weights and dense-and-sparse
outliers are kept. :meth:`QuantMeta.bit_count` charges every stored bit: codes, fp16 scales and offsets,
and the sparse values and indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from superweight.errors import QuantizationError

if TYPE_CHECKING:
    import torch

SCHEMES = ("asym", "sym", "symfull")
BLOCK_WORDS = ("channel", "tensor")
MIN_BLOCK = 8
SCALE_BITS = 16  # scales and offsets are stored as float16, as in llama.cpp's Q4_0/Q4_1/Q8_0
INDEX_BITS = 32  # sparse outliers: one int32 flat index each


@dataclass(frozen=True)
class QuantConfig:
    """Bits, block layout and rounding scheme of one quantization."""

    bits: int = 4
    block: int | str = 128  # group size along the input dim, "channel" or "tensor"
    scheme: str = "asym"  # asym: min/max (Q4_1); sym: absmax (Q8_0); symfull: signed max (Q4_0)

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise QuantizationError(f"must be an integer from 2 to 8 (got {self.bits!r})", option="bits")
        if self.scheme not in SCHEMES:
            raise QuantizationError(
                f"unknown scheme {self.scheme!r}; choose one of {', '.join(SCHEMES)}", option="scheme"
            )
        if isinstance(self.block, str):
            if self.block not in BLOCK_WORDS:
                raise QuantizationError(
                    f"unknown block {self.block!r}; give a group size (e.g. 128), channel or tensor", option="blocks"
                )
        elif not isinstance(self.block, int) or self.block < MIN_BLOCK:
            raise QuantizationError(
                f"block size must be an integer >= {MIN_BLOCK} (got {self.block!r})", option="blocks"
            )

    @property
    def label(self) -> str:
        return str(self.block)


def parse_block(text: str) -> int | str:
    """``"128"`` -> 128, ``"channel"``/``"tensor"`` stay words; anything else is a clear error."""
    text = text.strip().lower()
    if text in BLOCK_WORDS:
        return text
    if text.isdigit():
        value = int(text)
        if value < MIN_BLOCK:
            raise QuantizationError(f"block size must be >= {MIN_BLOCK} (got {value})", option="blocks")
        return value
    raise QuantizationError(
        f"bad block {text!r}; give a group size (e.g. 32..2048), channel or tensor", option="blocks"
    )


@dataclass
class BitCount:
    """Every stored bit of one quantized tensor, by part."""

    weights: int  # number of weights in the tensor
    codes: int
    scales: int
    sparse: int

    @property
    def total(self) -> int:
        return self.codes + self.scales + self.sparse

    @property
    def bits_per_weight(self) -> float:
        return self.total / self.weights

    def __add__(self, other: BitCount) -> BitCount:
        return BitCount(
            self.weights + other.weights,
            self.codes + other.codes,
            self.scales + other.scales,
            self.sparse + other.sparse,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "codes_bits": self.codes,
            "scale_bits": self.scales,
            "sparse_bits": self.sparse,
            "bits_per_weight": self.bits_per_weight,
        }


@dataclass
class QuantMeta:
    """What :func:`dequantize` needs besides the codes (and what a checkpoint stores)."""

    config: QuantConfig
    shape: tuple[int, int]
    dtype: Any  # torch dtype of the original tensor
    scale: torch.Tensor  # float16, one per group
    offset: torch.Tensor | None  # float16 per group (asym: the group minimum), else None
    sparse_index: torch.Tensor = field(default=None)  # int64 flat indices held out exactly
    sparse_value: torch.Tensor = field(default=None)  # their original values (original dtype)

    @property
    def groups(self) -> int:
        return int(self.scale.numel())

    def bit_count(self) -> BitCount:
        n = self.shape[0] * self.shape[1]
        per_group = SCALE_BITS * (2 if self.offset is not None else 1)
        k = 0 if self.sparse_index is None else int(self.sparse_index.numel())
        value_bits = 0 if k == 0 else self.sparse_value.element_size() * 8
        return BitCount(n, n * self.config.bits, self.groups * per_group, k * (value_bits + INDEX_BITS))


# ------------------------------------------------------------------------------------------ layout


def group_size(shape: tuple[int, int], block: int | str) -> tuple[int, int]:
    """(groups per row, group width); ``tensor`` is handled as one row of every weight."""
    rows, cols = shape
    if block == "channel":
        return 1, cols
    if block == "tensor":
        return 1, rows * cols
    if block > cols:
        raise QuantizationError(
            f"block {block} is longer than a row ({cols} inputs) of a {rows}x{cols} tensor; "
            "use a smaller block or block channel",
            option="blocks",
        )
    return math.ceil(cols / block), block


def _grouped(t: torch.Tensor, block: int | str, fill: float) -> torch.Tensor:
    """``(groups, width)`` view of a 2-D tensor; a short last block per row is padded with ``fill``."""
    import torch.nn.functional as F

    rows, cols = t.shape
    per_row, width = group_size((rows, cols), block)
    if block == "tensor":
        return t.reshape(1, -1)
    pad = per_row * width - cols
    if pad:
        t = F.pad(t, (0, pad), value=fill)
    return t.reshape(rows * per_row, width)


def _ungrouped(g: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    rows, cols = shape
    return g.reshape(rows, -1)[:, :cols]


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C ``roundf`` (half away from zero), written as ggml's reference does, for bit-exact codes."""
    a = x.abs()
    floored = a.floor()
    return x.sign() * (floored + (2 * (a - floored)).floor())


def _inverse(d: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.where(d == 0, torch.zeros_like(d), 1 / d)


# ------------------------------------------------------------------------------------- schemes
# Each scheme maps grouped float32 values (+ a validity mask) to (codes, fp16 scale, fp16 offset or None),
# computing the codes with the float32 scale and storing it as float16, exactly like ggml.


def _asym(g: torch.Tensor, valid: torch.Tensor, bits: int):

    qmax = 2**bits - 1
    if valid is None:
        lo, hi = g.amin(1, keepdim=True), g.amax(1, keepdim=True)
    else:
        lo = g.masked_fill(~valid, math.inf).amin(1, keepdim=True)
        hi = g.masked_fill(~valid, -math.inf).amax(1, keepdim=True)
        empty = ~valid.any(1, keepdim=True)
        lo, hi = lo.masked_fill(empty, 0.0), hi.masked_fill(empty, 0.0)
    d = (hi - lo) / qmax
    codes = g.sub(lo).mul_(_inverse(d)).add_(0.5).trunc_().clamp_(0, qmax)
    return codes, d.half().flatten(), lo.half().flatten()


def _sym(g: torch.Tensor, valid: torch.Tensor, bits: int):

    half = 2 ** (bits - 1)
    amax = (g.abs() if valid is None else g.abs().masked_fill(~valid, 0.0)).amax(1, keepdim=True)
    d = amax / (half - 1)
    codes = _roundf(g * _inverse(d)).clamp(-(half - 1), half - 1) + half
    return codes, d.half().flatten(), None


def _symfull(g: torch.Tensor, valid: torch.Tensor, bits: int):
    import torch

    half = 2 ** (bits - 1)
    masked = g if valid is None else g.masked_fill(~valid, 0.0)
    signed_max = masked.gather(1, masked.abs().argmax(1, keepdim=True))
    d = signed_max / -half
    codes = torch.trunc(g * _inverse(d) + (half + 0.5)).clamp(0, 2 * half - 1)
    return codes, d.half().flatten(), None


_QUANTIZERS = {"asym": _asym, "sym": _sym, "symfull": _symfull}


def _dequant_groups(codes: torch.Tensor, meta: QuantMeta) -> torch.Tensor:
    d = meta.scale.float().unsqueeze(1)
    if meta.config.scheme == "asym":
        return codes.mul_(d).add_(meta.offset.float().unsqueeze(1))
    return codes.sub_(2 ** (meta.config.bits - 1)).mul_(d)


# ------------------------------------------------------------------------------------- public API


def quantize(
    weight: torch.Tensor, config: QuantConfig, *, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, QuantMeta]:
    """RTN-quantize a 2-D ``(out, in)`` tensor; entries where ``exclude`` is True are kept exactly.

    Returns uint8 codes of ``weight``'s shape (unpacked: see :func:`pack`) and the metadata.
    """
    import torch

    if weight.dim() != 2:
        raise QuantizationError(f"quantize takes a 2-D (out, in) tensor, got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise QuantizationError(f"quantize takes a floating-point tensor, got {weight.dtype}")
    shape = (int(weight.shape[0]), int(weight.shape[1]))
    w = weight.detach().float()
    g = _grouped(w, config.block, 0.0)
    ragged = isinstance(config.block, int) and shape[1] % config.block != 0
    valid = None
    if exclude is not None or ragged:  # padding and held-out entries must not set a range
        keep = torch.ones_like(w, dtype=torch.bool) if exclude is None else ~exclude.to(w.device)
        valid = _grouped(keep, config.block, False)
    codes, scale, offset = _QUANTIZERS[config.scheme](g, valid, config.bits)
    codes = _ungrouped(codes, shape).to(torch.uint8).contiguous()
    index = torch.zeros(0, dtype=torch.int64)
    values = weight.detach().new_zeros(0)
    if exclude is not None and bool(exclude.any()):
        index = exclude.flatten().nonzero().flatten().cpu()
        values = weight.detach().flatten()[index.to(weight.device)].clone().cpu()
    meta = QuantMeta(config, shape, weight.dtype, scale.cpu(), None if offset is None else offset.cpu(), index, values)
    return codes, meta


def dequantize(codes: torch.Tensor, meta: QuantMeta) -> torch.Tensor:
    """The tensor the codes stand for, with the held-out entries put back exactly."""
    g = _grouped(codes.float(), meta.config.block, 0.0)
    out = _ungrouped(_dequant_groups(g, meta), meta.shape).to(meta.dtype).contiguous()
    if meta.sparse_index is not None and meta.sparse_index.numel():
        out.view(-1)[meta.sparse_index] = meta.sparse_value.to(meta.dtype)
    return out


def fake_quantize(weight: torch.Tensor, config: QuantConfig, *, exclude: torch.Tensor | None = None):
    """``dequantize(quantize(W))`` and its metadata: what a model computes with after quantization."""
    codes, meta = quantize(weight, config, exclude=exclude)
    return dequantize(codes, meta).to(weight.device), codes, meta


# ------------------------------------------------------------------------------------------ packing


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``bits``-bit unsigned codes densely (little-endian bit order) into a uint8 tensor."""
    import torch

    flat = codes.detach().cpu().reshape(-1).numpy().astype(np.uint8)
    if flat.size and int(flat.max()) >= 2**bits:
        raise QuantizationError(f"a code does not fit in {bits} bits")
    bit_matrix = np.unpackbits(flat[:, None], axis=1, bitorder="little")[:, :bits]
    return torch.from_numpy(np.packbits(bit_matrix.reshape(-1), bitorder="little").copy())


def unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``count`` codes, as uint8."""
    import torch

    stream = np.unpackbits(packed.cpu().numpy().astype(np.uint8), bitorder="little")[: count * bits]
    if stream.size != count * bits:
        raise QuantizationError(f"packed data holds fewer than {count} codes of {bits} bits")
    bit_matrix = np.zeros((count, 8), dtype=np.uint8)
    bit_matrix[:, :bits] = stream.reshape(count, bits)
    return torch.from_numpy(np.packbits(bit_matrix, axis=1, bitorder="little").reshape(-1).copy())


def packed_bytes(count: int, bits: int) -> int:
    return math.ceil(count * bits / 8)
