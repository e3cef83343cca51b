"""One table of element types: names in torch, safetensors and numpy, sizes and float bit layouts.

Files name dtypes the safetensors way (``"BF16"``), people and torch the long way (``"bfloat16"``); the
guard needs each float's bit layout to say which bit flipped. Everything that converts between these
reads this table, so a new dtype is one row here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str  # torch attribute name: torch.bfloat16
    code: str  # safetensors header code: "BF16"
    itemsize: int  # bytes per element
    numpy: str | None  # little-endian numpy type (None: no numpy equivalent, e.g. bfloat16)
    int_view: str  # torch integer dtype of the same width, to read and flip raw bits
    exponent_bits: int = 0  # 0 for integer types
    mantissa_bits: int = 0

    @property
    def is_float(self) -> bool:
        return self.exponent_bits > 0

    @property
    def bits(self) -> int:
        return 8 * self.itemsize


TABLE: tuple[DType, ...] = (
    DType("float64", "F64", 8, "<f8", "int64", 11, 52),
    DType("float32", "F32", 4, "<f4", "int32", 8, 23),
    DType("float16", "F16", 2, "<f2", "int16", 5, 10),
    DType("bfloat16", "BF16", 2, None, "int16", 8, 7),
    DType("float8_e4m3fn", "F8_E4M3", 1, None, "int8", 4, 3),
    DType("float8_e5m2", "F8_E5M2", 1, None, "int8", 5, 2),
    DType("int64", "I64", 8, "<i8", "int64"),
    DType("int32", "I32", 4, "<i4", "int32"),
    DType("int16", "I16", 2, "<i2", "int16"),
    DType("int8", "I8", 1, "i1", "int8"),
    DType("uint64", "U64", 8, "<u8", "int64"),
    DType("uint32", "U32", 4, "<u4", "int32"),
    DType("uint16", "U16", 2, "<u2", "int16"),
    DType("uint8", "U8", 1, "u1", "uint8"),
    DType("bool", "BOOL", 1, "?", "uint8"),
)

BY_CODE = {d.code: d for d in TABLE}
BY_NAME = {d.name: d for d in TABLE}

# What a model may be loaded and evaluated in (the --dtype choices).
MODEL_DTYPES = ("float32", "bfloat16", "float16")


def by_code(code: str) -> DType | None:
    """The entry for a safetensors code, or None (e.g. a GGUF block type such as ``Q4_1``)."""
    return BY_CODE.get(code)


def of_torch(dtype: Any) -> DType:
    """The entry for a ``torch.dtype``."""
    name = str(dtype).removeprefix("torch.")
    if name not in BY_NAME:
        raise ValueError(f"no dtype entry for {dtype}")
    return BY_NAME[name]


def decode(raw: bytes | np.ndarray, code: str) -> np.ndarray:
    """Raw little-endian bytes of a plain dtype as float32 values (bfloat16 widened exactly)."""
    data = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    if code == "BF16":
        return (data.view("<u2").astype("<u4") << 16).view("<f4")
    entry = BY_CODE.get(code)
    if entry is None or entry.numpy is None:
        raise ValueError(f"cannot decode dtype {code}")
    return data.view(entry.numpy).astype(np.float32)


def describe_bit(code: str, bit: int) -> str:
    """What bit ``bit`` (0 = least significant) of an element means: sign, exponent or mantissa."""
    entry = BY_CODE.get(code)
    if entry is None or not entry.is_float:
        return f"bit {bit}"
    top = entry.exponent_bits + entry.mantissa_bits
    if bit == top:
        return "sign"
    if bit >= entry.mantissa_bits:
        return "exponent MSB" if bit == top - 1 else f"exponent bit {bit - entry.mantissa_bits}"
    return f"mantissa bit {bit}"
