"""Bit flips in the block scales and zero points of quantized checkpoints, and which check catches each.

In a quantized file a super weight is not one number: it is a code times its block's scale (plus the
block's zero point/minimum). One flipped bit in that fp16 scale rescales the super weight *and* every
weight of its block. This module flips such a bit in a working copy of the checkpoint (the user's
file is never written), for the block holding each super weight and for random blocks elsewhere,
in two formats: GGUF (``d`` and, for the ``_1``/``_K`` types, ``m``/``dmin`` at the start of each
block) and this project's packed format (``NAME.scale`` / ``NAME.offset``, one fp16 per group, see
:mod:`superweight.quant.checkpoint`). Three checks are asked:

* ``hash``: the per-tensor hash of the file (always sees a changed byte);
* ``super_weight``: the bytes that determine each super weight's value (GGUF: its whole block; packed:
  its group's scale and offset and its codes, or its held-out exact value);
* ``canary``: the behaviour of the model with the block dequantized from the attacked file.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from superweight.errors import SuperweightError

if TYPE_CHECKING:
    from superweight.coordinates import SuperWeight
    from superweight.model.files import TensorSpan
    from superweight.model.loading import LoadedModel

FIELDS = ("scale", "zero")
FP16_BITS = {"sign": 15, "exponent": 14, "mantissa": 9}  # the MSB of each part of an IEEE half
# GGUF block types: byte offset of the fp16 scale ``d`` and of the minimum ``m``/``dmin`` (None: no zero point)
GGUF_FIELDS = {"Q4_0": (0, None), "Q5_0": (0, None), "Q8_0": (0, None), "Q4_1": (0, 2), "Q5_1": (0, 2),
               "Q4_K": (0, 2), "Q5_K": (0, 2), "Q2_K": (None, None)}  # fmt: skip


@dataclass(frozen=True)
class Block:
    """One quantization block: ``param`` (HF name) row ``row``, columns ``start:stop``."""

    param: str
    row: int
    index: int  # block index within the row
    start: int
    stop: int


@dataclass
class QuantAttackResult:
    target: str  # "super weight" or "random"
    field: str  # scale | zero
    tensor: str  # the file tensor holding the flipped bit
    block: Block
    bit: int
    before: float  # the scale (or zero point) before the flip
    after: float
    caught: dict[str, bool]  # hash / super_weight / canary -> caught
    canary_change: float  # the canary's largest relative activation change
    restored: bool  # the working copy's bytes are back to the original


@dataclass
class QuantAttackReport:
    model: str
    format: str  # gguf | packed
    dtype: str  # the block type (Q4_1, ...) or the packed scheme
    super_weights: list[str]
    results: list[QuantAttackResult] = field(default_factory=list)

    def rate(self, target: str, check: str) -> float:
        """Share of the attacks on ``target`` blocks that ``check`` caught."""
        rows = [r.caught[check] for r in self.results if r.target == target]
        return sum(rows) / len(rows) if rows else math.nan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantAttackReport:
        from superweight.results import build

        report = build(cls, data)
        report.results = [build(QuantAttackResult, r) for r in data["results"]]
        for r in report.results:
            r.block = Block(**r.block) if isinstance(r.block, dict) else r.block
        return report


# ------------------------------------------------------------------------------------------ formats


def _read(path: Path, offset: int, n: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read(n)


def flip_file_bit(path: Path, offset: int, bit: int) -> None:
    """Flip bit ``bit`` (0 = LSB) of the byte at ``offset`` of ``path``, in place."""
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ (1 << bit)]))


class GGUFBlocks:
    """Blocks of a GGUF file's 2-D quantized tensors, in Hugging Face coordinates."""

    format = "gguf"

    def __init__(self, path: Path, num_layers: int) -> None:
        from superweight.model.files import resolve_model_files

        self.path = path
        self.mf = resolve_model_files(str(path))
        self.arch = self.mf.identity.get("architecture") or ""
        self.num_layers = num_layers
        self.spans = {s.name: s for s in self.mf.spans}
        self._names: dict[str, str] = {}

    def span(self, param: str) -> TensorSpan:
        from superweight.model.files import gguf_tensor_name

        if param not in self._names:  # gguf builds its whole name map per lookup: once per parameter
            self._names[param] = gguf_tensor_name(param, self.arch, self.num_layers)
        span = self.spans.get(self._names[param])
        if span is None or span.block is None or span.dtype not in GGUF_FIELDS:
            raise SuperweightError(f"{param} is not stored as a supported GGUF block type in {self.path}")
        return span

    def dtype(self, param: str) -> str:
        return self.span(param).dtype

    def blocks(self, param: str, row: int | None = None, col: int | None = None) -> list[Block]:
        span = self.span(param)
        elems = span.block[0]  # type: ignore[index]
        rows, cols = span.shape[0], span.shape[-1]
        pick = range(rows) if row is None else [row]
        return [Block(param, r, b, b * elems, (b + 1) * elems) for r in pick for b in range(cols // elems)
                if col is None or b == col // elems]  # fmt: skip

    def _block_offset(self, block: Block) -> tuple[TensorSpan, int]:
        span = self.span(block.param)
        _, nbytes = span.block  # type: ignore[misc]
        row_bytes = span.nbytes // span.shape[0]
        return span, span.offset + block.row * row_bytes + block.index * nbytes

    def field_offset(self, block: Block, name: str) -> tuple[str, Path, int] | None:
        span, start = self._block_offset(block)
        at = GGUF_FIELDS[span.dtype][0 if name == "scale" else 1]
        return None if at is None else (span.name, span.path, start + at)

    def values(self, block: Block, path: Path) -> np.ndarray:
        import gguf

        span, start = self._block_offset(block)
        raw = np.frombuffer(_read(path, start, span.block[1]), dtype=np.uint8).reshape(1, -1)  # type: ignore[index]
        return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[span.dtype]).reshape(-1)

    def super_weight_ranges(self, block: Block, col: int) -> list[tuple[Path, int, int]]:
        span, start = self._block_offset(block)
        return [(span.path, start, span.block[1])]  # type: ignore[index]


class PackedBlocks:
    """Groups of this project's packed checkpoint (``quantized.safetensors``), in HF coordinates."""

    format = "packed"

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        from superweight.model.files import resolve_model_files

        self.path = path
        self.mf = resolve_model_files(str(path))
        self.spans = {s.name: s for s in self.mf.spans}
        self._clean: dict[str, Any] | None = None
        with safe_open(str(path), framework="pt") as fh:
            self.layouts = json.loads((fh.metadata() or {}).get("layouts", "{}"))
        if not self.layouts:
            raise SuperweightError(f"{path} is not a packed superweight checkpoint (no layouts in its header)")

    def _layout(self, param: str) -> tuple[str, dict[str, Any]]:
        name = param.removesuffix(".weight")
        if name not in self.layouts:
            raise SuperweightError(f"{param} is not quantized in {self.path}")
        return name, self.layouts[name]

    def dtype(self, param: str) -> str:
        lay = self._layout(param)[1]
        return f"{lay['bits']}-bit {lay['scheme']}, block {lay['block']}"

    def _width(self, lay: dict[str, Any]) -> tuple[int, int]:
        from superweight.quant.rtn import group_size

        return group_size(tuple(lay["shape"]), lay["block"])

    def blocks(self, param: str, row: int | None = None, col: int | None = None) -> list[Block]:
        _, lay = self._layout(param)
        if lay["block"] == "tensor":
            raise SuperweightError("a per-tensor scale has no blocks to attack one by one")
        per_row, width = self._width(lay)
        cols = lay["shape"][1]
        pick = range(lay["shape"][0]) if row is None else [row]
        return [Block(param, r, b, b * width, min((b + 1) * width, cols)) for r in pick for b in range(per_row)
                if col is None or b == col // width]  # fmt: skip

    def field_offset(self, block: Block, name: str) -> tuple[str, Path, int] | None:
        base, lay = self._layout(block.param)
        span = self.spans.get(f"{base}.{'scale' if name == 'scale' else 'offset'}")
        if span is None:
            return None
        group = block.row * self._width(lay)[0] + block.index
        return span.name, span.path, span.offset + 2 * group

    def values(self, block: Block, path: Path) -> np.ndarray:
        """The block as the file dequantizes now (codes read once; scale and offset read again each time)."""
        from dataclasses import replace

        import torch

        from superweight.quant.checkpoint import read_quantized
        from superweight.quant.rtn import dequantize

        if self._clean is None:
            self._clean = read_quantized(path)
        base = self._layout(block.param)[0]
        codes, meta = self._clean[base]

        def now(field: str, like: torch.Tensor | None) -> torch.Tensor | None:
            span = self.spans.get(f"{base}.{field}")
            if like is None or span is None:
                return like
            raw = np.frombuffer(_read(path, span.offset, span.nbytes), dtype="<f2").copy()
            return torch.from_numpy(raw).reshape(like.shape)

        meta = replace(meta, scale=now("scale", meta.scale), offset=now("offset", meta.offset))
        return dequantize(codes, meta)[block.row, block.start : block.stop].float().numpy()

    def super_weight_ranges(self, block: Block, col: int) -> list[tuple[Path, int, int]]:
        base, lay = self._layout(block.param)
        flat = block.row * lay["shape"][1] + col
        index = self.spans.get(f"{base}.sparse_index")
        if index is not None:
            held = np.frombuffer(_read(index.path, index.offset, index.nbytes), dtype="<i4")
            where = np.nonzero(held == flat)[0]
            if where.size:  # held out exactly: its value is all that matters
                value = self.spans[f"{base}.sparse_value"]
                size = value.nbytes // held.size
                return [(value.path, value.offset + int(where[0]) * size, size)]
        out = [(p, o, 2) for n in FIELDS if (f := self.field_offset(block, n)) is not None for _, p, o in [f]]
        codes = self.spans[f"{base}.codes"]
        first, last = flat * lay["bits"] // 8, ((flat + 1) * lay["bits"] - 1) // 8
        return [*out, (codes.path, codes.offset + first, last - first + 1)]


# ------------------------------------------------------------------------------------------ attacking


def open_blocks(path: str | Path, num_layers: int) -> GGUFBlocks | PackedBlocks:
    """The block view of a quantized checkpoint: a ``.gguf`` file, or a packed folder / its safetensors."""
    path = Path(path)
    if path.suffix == ".gguf":
        return GGUFBlocks(path, num_layers)
    file = path / "quantized.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise SuperweightError(f"{path} is neither a .gguf file nor a packed checkpoint (quantized.safetensors)")
    return PackedBlocks(file)


def _fp16(raw: bytes) -> float:
    return float(np.frombuffer(raw, dtype="<f2")[0])


def attack_quantized(
    checkpoint: str | Path,
    lm: LoadedModel,
    super_weights: list[SuperWeight],
    *,
    random_blocks: int = 20,
    bit: str = "exponent",
    fields: tuple[str, ...] = FIELDS,
    seed: int = 0,
    canary_prompt: str | None = None,
) -> QuantAttackReport:
    """Flip one bit of a block's scale or zero point, for each super weight's block and for random
    blocks of the same tensors, in a working copy; say which checks catch each (module docstring).

    ``lm`` must be the checkpoint's own model in memory (its weights are the dequantized file): the
    canary runs on it (``canary_prompt``, default the manifest's) with the attacked block put in, and
    every weight is restored bit-exactly.
    """
    from superweight.guard.canary import compare_canary, run_canary
    from superweight.guard.hashing import hash_span
    from superweight.model.architectures import decoder_layers, down_projections, find_down_proj
    from superweight.model.interventions import WeightRef, edited
    from superweight.progress import track

    if bit not in FP16_BITS:
        raise SuperweightError(f"unknown bit {bit!r}; choose one of {', '.join(FP16_BITS)}", option="bit")
    if not super_weights:
        raise SuperweightError("no super weight to attack: scan the model first")
    source = Path(checkpoint)
    work_dir = Path(tempfile.mkdtemp(prefix="superweight-qattack-"))
    try:
        original = open_blocks(source, len(decoder_layers(lm.model)))
        work = work_dir / original.path.name
        shutil.copyfile(original.path, work)
        blocks = open_blocks(work, len(decoder_layers(lm.model)))
        sites = down_projections(lm.model)
        targets: list[tuple[str, Block]] = []
        sw_ranges, sw_blocks = [], set()
        for sw in super_weights:
            site = find_down_proj(sites, sw.module)
            (block,) = blocks.blocks(site.param_name, sw.row, sw.col)
            targets.append(("super weight", block))
            sw_blocks.add(block)
            sw_ranges += blocks.super_weight_ranges(block, sw.col)
        rng = np.random.default_rng(seed)
        params = sorted({site.param_name for site in sites})
        while sum(t == "random" for t, _ in targets) < random_blocks:
            candidates = blocks.blocks(params[int(rng.integers(len(params)))])
            pick = candidates[int(rng.integers(len(candidates)))]
            if pick not in sw_blocks and all(pick != b for _, b in targets):
                targets.append(("random", pick))
        clean_sw = [_read(p, o, n) for p, o, n in sw_ranges]
        hashes: dict[str, str] = {}
        prompt = {} if canary_prompt is None else {"prompt": canary_prompt}
        reference = run_canary(lm.model, lm.tokenizer, super_weights[0].row, **prompt)
        site_of = {s.param_name: s for s in sites}
        report = QuantAttackReport(lm.spec, blocks.format, blocks.dtype(targets[0][1].param),
                                   [f"layer {w.layer} [{w.row}, {w.col}]" for w in super_weights])  # fmt: skip
        bit_index = FP16_BITS[bit]
        for target, block in track(targets, "quantized attacks", total=len(targets)):
            for name in fields:
                where = blocks.field_offset(block, name)
                if where is None:
                    continue  # this block type has no zero point
                tensor, path, offset = where
                span = blocks.spans[tensor]
                if tensor not in hashes:
                    hashes[tensor] = hash_span(span)
                before = _read(path, offset, 2)
                flip_file_bit(path, offset + bit_index // 8, bit_index % 8)
                after = _read(path, offset, 2)
                values = blocks.values(block, path)
                caught = {
                    "hash": hash_span(span) != hashes[tensor],
                    "super_weight": [_read(p, o, n) for p, o, n in sw_ranges] != clean_sw,
                }
                site = site_of[block.param]
                refs = [WeightRef(site, block.row, c) for c in range(block.start, block.stop)]
                new = iter(values[: len(refs)].tolist())
                with edited(refs, lambda w, new=new: w.new_tensor(next(new))):
                    current = run_canary(lm.model, lm.tokenizer, reference.channel, prompt=reference.prompt,
                                         top_k=len(reference.top_ids))  # fmt: skip
                check = compare_canary(reference, current)
                caught["canary"] = not check.passed
                flip_file_bit(path, offset + bit_index // 8, bit_index % 8)
                report.results.append(QuantAttackResult(
                    target, name, tensor, block, bit_index, _fp16(before), _fp16(after), caught,
                    check.max_activation_change, _read(path, offset, 2) == before,
                ))  # fmt: skip
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return report
