"""Per-tensor fingerprints of model files, read by streaming: independent of sharding and file layout.

Whole-file hashes (what model signing does today) change when a checkpoint is re-sharded and say
nothing about *which* weight changed. Here every tensor is hashed on its own, straight from its byte
range in the file (a safetensors header's ``data_offsets``, a GGUF tensor's ``data_offset``), in
chunks, so a 70 B model never has to fit in memory. Beside each hash sits a *locator*, 16 bytes that
find a single flipped bit without the original data:

* ``xor``: the XOR of the tensor's little-endian 64-bit words. One flipped bit changes exactly bit
  ``k`` of it, so ``old ^ new`` gives the bit's column ``k``.
* ``sum``: the sum (mod 2**64) of the indices of the words with an odd number of set bits. One flip
  toggles the parity of word ``i``, so ``new - old = ±i``.

A location is only reported after flipping that bit back reproduces the recorded SHA-256, so it is
never a guess. Non-finite values are counted on the way (safetensors never checks them).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from superweight.dtypes import by_code, describe_bit, of_torch
from superweight.errors import SuperweightError
from superweight.model.files import CorruptModelError, ModelFiles, TensorSpan

if TYPE_CHECKING:
    from torch import nn


CHUNK = 8 << 20  # bytes read per step: large enough for hashlib's speed, small enough for any RAM
_MASK64 = (1 << 64) - 1

# float dtype -> (integer view, exponent mask): a value is NaN/Inf when all exponent bits are set
_FLOAT_BITS = {
    "F64": (np.uint64, 0x7FF0000000000000),
    "F32": (np.uint32, 0x7F800000),
    "F16": (np.uint16, 0x7C00),
    "BF16": (np.uint16, 0x7F80),
}
# GGUF block types whose f16 scales sit at fixed byte offsets in each block (ggml-common.h): a block
# decodes to NaN/Inf exactly when one of them is non-finite, so checking them is enough.
_GGUF_SCALES = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
}  # fmt: skip


@dataclass
class TensorRecord:
    """The fingerprint of one tensor: enough to say whether, and where, it changed."""

    name: str
    dtype: str
    shape: list[int]
    nbytes: int
    sha256: str
    locator: dict[str, str]  # {"xor": hex, "sum": hex}, see the module docstring
    nonfinite: int | None  # NaN/Inf count; None where the dtype cannot hold them or was not checked
    file: str | None = None
    offset: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FileRecord:
    name: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ hashing


class _TensorHasher:
    """SHA-256 + locator + non-finite count of one tensor, fed its bytes in order."""

    def __init__(self, dtype: str, algorithm: str = "sha256", extras: bool = True) -> None:
        self.sha = hashlib.new(algorithm)
        self.dtype = dtype
        self.extras = extras
        self.xor = 0
        self.sum = 0
        self.words = 0  # 64-bit words seen so far
        self.nonfinite: int | None = 0 if dtype in _FLOAT_BITS or dtype in _GGUF_SCALES else None

    def update(self, chunk: memoryview) -> None:
        """``chunk`` must start at a multiple of 8 bytes (and of the block size) from the tensor's start."""
        self.sha.update(chunk)
        if self.extras:
            self.update_extras(chunk)

    def update_extras(self, chunk: memoryview) -> None:
        """The locator and NaN/Inf count (separate so that they can run beside the hash, in order)."""
        n = len(chunk)
        whole = n - n % 8
        words = np.frombuffer(chunk, dtype="<u8", count=whole // 8)
        if n % 8:
            tail = np.frombuffer(bytes(chunk[whole:]) + bytes(8 - n % 8), dtype="<u8")
            words = np.concatenate([words, tail])
        self.xor ^= int(np.bitwise_xor.reduce(words)) if words.size else 0
        odd = np.bitwise_count(words) & 1
        self.sum = (self.sum + _index_sum(odd) + self.words * int(np.count_nonzero(odd))) & _MASK64
        self.words += words.size
        if self.nonfinite is not None:
            self.nonfinite += count_nonfinite(chunk, self.dtype)

    def record(self, name: str, shape: tuple[int, ...], nbytes: int, **where: Any) -> TensorRecord:
        locator = {"xor": f"{self.xor:016x}", "sum": f"{self.sum:016x}"} if self.extras else {}
        return TensorRecord(
            name, self.dtype, list(shape), nbytes, self.sha.hexdigest(), locator,
            self.nonfinite if self.extras else None, **where,
        )  # fmt: skip


def _index_sum(flags: np.ndarray, width: int = 256) -> int:
    """Sum of the indices where ``flags`` (0/1) is set: row and column sums of a (-1, width) view,
    several times faster than summing ``flatnonzero`` (which branches on every entry)."""
    n = flags.size - flags.size % width
    grid = flags[:n].reshape(-1, width)
    rows = grid.sum(axis=1, dtype=np.int64)
    cols = grid.sum(axis=0, dtype=np.int64)
    total = width * int(rows @ np.arange(rows.size, dtype=np.int64))
    total += int(cols @ np.arange(width, dtype=np.int64))
    return total + int((np.flatnonzero(flags[n:]) + n).sum())


_ZEROS: dict[str, np.ndarray] = {}


def count_nonfinite(chunk: memoryview | bytes, dtype: str) -> int:
    """NaN/Inf values in raw bytes of ``dtype`` (a float type, or a GGUF type with known scale offsets)."""
    if dtype in ("F32", "F64"):
        # A dot product with zeros is NaN exactly when some value is NaN or Inf, at BLAS speed.
        values = np.frombuffer(chunk, dtype="<f4" if dtype == "F32" else "<f8")
        zeros = _ZEROS.get(dtype)
        if zeros is None or zeros.size < values.size:
            zeros = _ZEROS[dtype] = np.zeros(max(values.size, CHUNK // values.itemsize), dtype=values.dtype)
        with np.errstate(invalid="ignore"):
            probe = float(np.dot(values, zeros[: values.size]))
        if math.isfinite(probe):
            return 0
        return int(np.count_nonzero(~np.isfinite(values)))
    if dtype in _FLOAT_BITS:
        view, mask = _FLOAT_BITS[dtype]
        bits = np.frombuffer(chunk, dtype=np.dtype(view).newbyteorder("<"))
        return int(np.count_nonzero((bits & mask) == mask))
    if dtype in _GGUF_SCALES:
        import gguf

        block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[dtype]][1]
        blocks = np.frombuffer(chunk, dtype=np.uint8).reshape(-1, block_bytes)
        bad = np.zeros(blocks.shape[0], dtype=bool)
        for off in _GGUF_SCALES[dtype]:
            scale = blocks[:, off : off + 2].copy().view("<u2")[:, 0]
            bad |= (scale & 0x7C00) == 0x7C00
        return int(np.count_nonzero(bad))  # blocks, not values: a bad scale spoils the whole block
    return 0


def _chunk_size(span: TensorSpan) -> int:
    unit = 8
    if span.block is not None:
        unit = math.lcm(8, span.block[1])
    return max(unit, CHUNK - CHUNK % unit)


def _read_exact(fh: Any, n: int, path: Path) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise CorruptModelError(f"{path} was truncated while it was being read")
    return data


def hash_files(
    mf: ModelFiles,
    *,
    algorithm: str = "sha256",
    extras: bool = True,
    file_hashes: bool = True,
    progress: bool = True,
) -> tuple[list[TensorRecord], list[FileRecord]]:
    """Stream every file once: per-tensor records (and whole-file hashes) in one pass.

    The whole-file hash and the locator/NaN count run on their own threads (hashlib and numpy release
    the GIL), beside the per-tensor hash.
    """
    from superweight.progress import track

    tensors: list[TensorRecord] = []
    files: list[FileRecord] = []
    by_file: dict[Path, list[TensorSpan]] = {}
    for s in mf.spans:
        by_file.setdefault(s.path, []).append(s)
    with ThreadPoolExecutor(max_workers=1) as pool, ThreadPoolExecutor(max_workers=1) as extras_pool:
        for path in track(mf.files, "hashing files", total=len(mf.files)) if progress else mf.files:
            spans = sorted(by_file.get(path, []), key=lambda s: s.offset)
            file_sha = hashlib.new(algorithm)
            pending: list[Future] = []

            def feed(data: bytes, file_sha: Any = file_sha, pending: list[Future] = pending) -> None:
                if not file_hashes:
                    return
                pending.append(pool.submit(file_sha.update, data))
                if len(pending) > 3:  # bound memory: at most a few chunks in flight
                    pending.pop(0).result()

            with path.open("rb") as fh:
                pos = 0
                for span in spans:
                    if span.offset < pos:
                        raise CorruptModelError(f"{path}: tensor {span.name} overlaps the tensor before it")
                    if span.offset > pos:
                        feed(_read_exact(fh, span.offset - pos, path))
                    hasher = _TensorHasher(span.dtype, algorithm, extras)
                    step = _chunk_size(span)
                    left = span.nbytes
                    side: list[Future] = []  # extras on their own thread, in order, beside the hash
                    while left:
                        data = _read_exact(fh, min(step, left), path)
                        feed(data)
                        hasher.sha.update(data)
                        if extras:
                            side.append(extras_pool.submit(hasher.update_extras, memoryview(data)))
                            if len(side) > 2:
                                side.pop(0).result()
                        left -= len(data)
                    for f in side:
                        f.result()
                    tensors.append(
                        hasher.record(span.name, span.shape, span.nbytes, file=span.file, offset=span.offset)
                    )
                    pos = span.offset + span.nbytes
                while data := fh.read(CHUNK):
                    feed(data)
                for f in pending:
                    f.result()
            if file_hashes:
                files.append(FileRecord(path.name, path.stat().st_size, file_sha.hexdigest()))
    return sorted(tensors, key=lambda r: r.name), files


def hash_span(span: TensorSpan, algorithm: str = "sha256", flip: tuple[int, int] | None = None) -> str:
    """Hash one tensor from its file; with ``flip = (byte, bit)`` inverted, to confirm a location."""
    sha = hashlib.new(algorithm)
    with span.path.open("rb") as fh:
        fh.seek(span.offset)
        data = bytearray(_read_exact(fh, span.nbytes, span.path))
    if flip is not None:
        data[flip[0]] ^= 1 << flip[1]
    sha.update(data)
    return sha.hexdigest()


# ------------------------------------------------------------------------------------------ memory


def torch_dtype_name(dtype: Any) -> str:
    """The safetensors name of a torch dtype ("F32")."""
    try:
        return of_torch(dtype).code
    except ValueError:
        raise SuperweightError(f"cannot fingerprint tensors of dtype {dtype}") from None


def tensor_bytes(tensor: Any) -> memoryview:
    """The raw little-endian bytes of a CPU tensor (bf16 included), without a copy when contiguous."""
    import torch

    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    return memoryview(t.view(torch.uint8).reshape(-1).numpy())


def iter_state(model: nn.Module) -> Iterator[tuple[str, Any]]:
    """Named parameters and buffers once each (tied weights under their first name)."""
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        key = t.data_ptr()
        if key in seen or t.numel() == 0:
            continue
        seen.add(key)
        yield name, t


def hash_memory(model: nn.Module, *, algorithm: str = "sha256", names: set[str] | None = None) -> list[TensorRecord]:
    """Fingerprint a model in memory (the same records as for files, from its state dict)."""
    records = []
    for name, t in iter_state(model):
        if names is not None and name not in names:
            continue
        dtype = torch_dtype_name(t.dtype)
        hasher = _TensorHasher(dtype, algorithm)
        data = tensor_bytes(t)
        for i in range(0, len(data), CHUNK):
            hasher.update(data[i : i + CHUNK])
        records.append(hasher.record(name, tuple(t.shape), len(data)))
    return sorted(records, key=lambda r: r.name)


# ------------------------------------------------------------------------------------------ locating


def locate_flip(old: TensorRecord | dict[str, Any], new: TensorRecord) -> tuple[int, int] | None:
    """(byte, bit) of the single flipped bit that turns ``old`` into ``new``, if the locators say one."""
    old_loc = old.locator if isinstance(old, TensorRecord) else old.get("locator", {})
    if not old_loc or not new.locator:
        return None
    dx = int(old_loc["xor"], 16) ^ int(new.locator["xor"], 16)
    if dx == 0 or dx & (dx - 1):
        return None  # not exactly one column changed: more than one bit flipped
    k = dx.bit_length() - 1
    ds = (int(new.locator["sum"], 16) - int(old_loc["sum"], 16)) & _MASK64
    word = ds if ds < 1 << 63 else (1 << 64) - ds
    byte = word * 8 + k // 8
    if byte >= new.nbytes:
        return None
    return byte, k % 8


def element_of(byte: int, bit: int, dtype: str, shape: list[int] | tuple[int, ...]) -> dict[str, Any]:
    """Turn a byte/bit position in a tensor into an element index and a bit of that element."""
    entry = by_code(dtype)
    if entry is None:  # a GGUF block type: say which row and block
        import gguf

        elems, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[dtype]]
        row_bytes = shape[-1] // elems * block_bytes
        return {"byte": byte, "bit": bit, "row": byte // row_bytes, "block": byte % row_bytes // block_bytes}
    flat = byte // entry.itemsize
    element_bit = (byte % entry.itemsize) * 8 + bit
    index = [int(i) for i in np.unravel_index(flat, tuple(shape))] if shape else []
    return {"index": index, "bit": element_bit, "meaning": describe_bit(dtype, element_bit), "byte": byte}
