"""The functional quantization core: exact packing, llama.cpp bit-exactness, layouts and bit accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from superweight.errors import QuantizationError
from superweight.quant.rtn import (
    QuantConfig,
    dequantize,
    fake_quantize,
    pack,
    packed_bytes,
    parse_block,
    quantize,
    unpack,
)

gguf_quants = pytest.importorskip("gguf.quants")
from gguf import GGMLQuantizationType  # noqa: E402


def _weights(rows: int = 16, cols: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[min(3, rows - 1), 17] = 1.7  # an outlier, as real weights have
    return w


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_unpack_round_trips_exactly(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (1001,), generator=g, dtype=torch.int64).to(torch.uint8)
    packed = pack(codes, bits)
    assert packed.numel() == packed_bytes(1001, bits) == -(-1001 * bits // 8)
    assert torch.equal(unpack(packed, bits, 1001), codes)


def test_pack_rejects_codes_wider_than_bits() -> None:
    with pytest.raises(QuantizationError, match="does not fit in 3 bits"):
        pack(torch.tensor([8], dtype=torch.uint8), 3)


def _oracle(w: torch.Tensor, qtype: GGMLQuantizationType) -> np.ndarray:
    raw = gguf_quants.quantize(w.numpy(), qtype)
    return gguf_quants.dequantize(raw, qtype).reshape(w.shape)


@pytest.mark.parametrize(
    ("qtype", "config"),
    [
        (GGMLQuantizationType.Q4_0, QuantConfig(4, 32, "symfull")),
        (GGMLQuantizationType.Q8_0, QuantConfig(8, 32, "sym")),
        (GGMLQuantizationType.Q4_1, QuantConfig(4, 32, "asym")),
        (GGMLQuantizationType.Q5_1, QuantConfig(5, 32, "asym")),
    ],
)
def test_rtn_is_bit_exact_with_llama_cpp(qtype: GGMLQuantizationType, config: QuantConfig) -> None:
    w = _weights()
    ours = fake_quantize(w, config)[0]
    assert np.array_equal(ours.numpy(), _oracle(w, qtype))


def test_q4_0_codes_match_the_oracle_bytes() -> None:
    w = _weights(4, 64)
    codes, meta = quantize(w, QuantConfig(4, 32, "symfull"))
    raw = gguf_quants.quantize(w.numpy(), GGMLQuantizationType.Q4_0).reshape(-1, 18)
    assert np.array_equal(meta.scale.numpy().view(np.uint8).reshape(-1, 2), raw[:, :2])
    nibbles = raw[:, 2:]
    oracle_codes = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1)
    assert np.array_equal(codes.reshape(-1, 32).numpy(), oracle_codes)


def test_asym_round_trip_error_is_within_half_a_step() -> None:
    w = _weights()
    for block in (32, 100, "channel", "tensor"):
        deq, _, meta = fake_quantize(w, QuantConfig(4, block))
        step = meta.scale.float().max().item()
        assert (deq - w).abs().max().item() <= 0.5 * step * 1.01 + 1e-3


def test_ragged_last_block_gets_its_own_scale() -> None:
    w = _weights(2, 100)
    _, meta = quantize(w, QuantConfig(4, 32))
    assert meta.groups == 2 * 4  # 32 + 32 + 32 + 4 per row


def test_larger_blocks_are_worse_with_an_outlier() -> None:
    w = _weights()
    errors = [(fake_quantize(w, QuantConfig(4, b))[0] - w).pow(2).sum().item() for b in (32, 128, "tensor")]
    assert errors[0] < errors[1] < errors[2]


def test_excluded_entries_are_restored_exactly_and_leave_the_range() -> None:
    w = _weights()
    exclude = torch.zeros_like(w, dtype=torch.bool)
    exclude[3, 17] = True
    plain, _, _ = fake_quantize(w, QuantConfig(3, "tensor"))
    held, _, meta = fake_quantize(w, QuantConfig(3, "tensor"), exclude=exclude)
    assert held[3, 17].item() == w[3, 17].item()
    assert plain[3, 17].item() != w[3, 17].item()
    others = ~exclude
    assert (held - w)[others].pow(2).sum() < (plain - w)[others].pow(2).sum() / 10
    assert meta.sparse_index.tolist() == [3 * 256 + 17]


def test_bits_per_weight_by_hand() -> None:
    w = _weights(4, 64)  # 256 weights
    exclude = torch.zeros_like(w, dtype=torch.bool)
    exclude[0, 0] = exclude[1, 5] = True
    _, meta = quantize(w, QuantConfig(3, 32), exclude=exclude)
    count = meta.bit_count()
    # codes 256 * 3; 8 groups * (fp16 scale + fp16 min); 2 outliers * (fp32 value + int32 index)
    assert (count.codes, count.scales, count.sparse) == (768, 8 * 32, 2 * 64)
    assert count.bits_per_weight == pytest.approx((768 + 256 + 128) / 256)
    _, sym = quantize(w, QuantConfig(8, "channel", "sym"))
    assert sym.bit_count().bits_per_weight == pytest.approx(8 + 4 * 16 / 256)


def test_dequantize_keeps_dtype_and_shape() -> None:
    w = _weights(8, 64).to(torch.bfloat16)
    codes, meta = quantize(w, QuantConfig(4, 64))
    out = dequantize(codes, meta)
    assert out.dtype == torch.bfloat16 and out.shape == w.shape


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 1}, "from 2 to 8"),
        ({"bits": 9}, "from 2 to 8"),
        ({"block": 4}, ">= 8"),
        ({"block": "row"}, "unknown block"),
        ({"scheme": "nf4"}, "unknown scheme"),
    ],
)
def test_invalid_configs_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(QuantizationError, match=message):
        QuantConfig(**kwargs)


def test_block_longer_than_a_row_says_so() -> None:
    with pytest.raises(QuantizationError, match="longer than a row"):
        quantize(_weights(4, 64), QuantConfig(4, 128))


def test_parse_block() -> None:
    assert parse_block("128") == 128
    assert parse_block(" Channel ") == "channel"
    with pytest.raises(QuantizationError):
        parse_block("12x")
