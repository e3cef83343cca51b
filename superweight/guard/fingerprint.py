"""Build a model's manifest: per-tensor hashes by streaming the files, then (loading the model once)
the super weights' exact bytes in the files and in memory, and the canary.

The super weights are located in the files by :func:`read_element` (safetensors: one element; GGUF:
the whole block holding it, scale included), so ``verify --fast`` can later read those few bytes
without loading or hashing anything.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from superweight.dtypes import by_code, decode
from superweight.errors import ManifestError
from superweight.guard.hashing import FileRecord, TensorRecord, tensor_bytes, torch_dtype_name
from superweight.guard.manifest import ActivationEntry, Manifest, ModelInfo, SuperWeightEntry, content_digest
from superweight.model.files import ModelFiles, TensorSpan, gguf_tensor_name

if TYPE_CHECKING:
    from superweight.detect.result import ScanResult
    from superweight.guard.canary import Canary
    from superweight.model.loading import LoadedModel


@dataclass
class FingerprintResult:
    """What ``fingerprint`` reports: where the manifest went, and the manifest itself."""

    manifest_path: str
    manifest: Manifest

    @property
    def signed(self) -> bool:
        return self.manifest.signature is not None

    def to_dict(self) -> dict[str, Any]:
        return {"manifest_path": self.manifest_path, "manifest": self.manifest.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FingerprintResult:
        return cls(str(data["manifest_path"]), Manifest.from_dict(data["manifest"]))


def read_element(span: TensorSpan, index: tuple[int, ...]) -> dict[str, Any]:
    """Where ``index`` of a tensor lies in its file, its bytes, its value, and its row's bytes."""
    shape = span.shape
    if len(index) != len(shape) or any(not 0 <= i < d for i, d in zip(index, shape, strict=True)):
        raise ManifestError(f"index {list(index)} is outside tensor {span.name} of shape {list(shape)}")
    rows = math.prod(shape[:-1])
    row_bytes = span.nbytes // max(rows, 1)
    row_index = int(np.ravel_multi_index(index[:-1], shape[:-1])) if len(shape) > 1 else 0
    row_offset = span.offset + row_index * row_bytes
    if span.itemsize is not None:
        offset, nbytes = row_offset + index[-1] * span.itemsize, span.itemsize
    else:
        elems, block_bytes = span.block  # type: ignore[misc]
        offset, nbytes = row_offset + index[-1] // elems * block_bytes, block_bytes
    with span.path.open("rb") as fh:
        fh.seek(row_offset)
        row = fh.read(row_bytes)
    raw = row[offset - row_offset : offset - row_offset + nbytes]
    return {
        "tensor": span.name,
        "file": span.file,
        "dtype": span.dtype,
        "byte_offset": offset,
        "nbytes": nbytes,
        "bits": raw.hex(),
        "file_value": decode_value(raw, span.dtype, index[-1]),
        "row_offset": row_offset,
        "row_nbytes": row_bytes,
        "row_sha256": hashlib.sha256(row).hexdigest(),
    }


def decode_value(raw: bytes, dtype: str, col: int) -> float:
    """The value of one element from its bytes (a whole block for GGUF types)."""
    if by_code(dtype) is not None:
        return float(decode(raw, dtype)[0])
    import gguf

    qtype = gguf.GGMLQuantizationType[dtype]
    elems = gguf.GGML_QUANT_SIZES[qtype][0]
    values = gguf.quants.dequantize(np.frombuffer(raw, dtype=np.uint8).reshape(1, -1), qtype)
    return float(values.reshape(-1)[col % elems])


def file_tensor_name(lm: LoadedModel, mf: ModelFiles, param: str) -> str:
    """The name a model parameter has in its files (GGUF files name tensors their own way)."""
    from superweight.model.architectures import decoder_layers

    if mf.format != "gguf":
        return param
    return gguf_tensor_name(param, mf.identity.get("architecture") or "", len(decoder_layers(lm.model)))


def super_weight_entries(lm: LoadedModel, super_weights: list[Any], mf: ModelFiles | None) -> list[SuperWeightEntry]:
    """Manifest entries for super weights: HF coordinates, the in-memory bits, and the bytes in the file."""
    from superweight.model.architectures import down_projections, find_down_proj

    sites = down_projections(lm.model)
    entries = []
    for sw in super_weights:
        site = find_down_proj(sites, sw.module)
        idx = site.raw_index(sw.row, sw.col)
        scalar = site.parameter.data[idx].reshape(1)
        entry = SuperWeightEntry(
            layer=sw.layer, module=sw.module, row=sw.row, col=sw.col, expert=site.expert, param=site.param_name,
            index=[int(i) for i in idx], value=float(scalar), memory_dtype=torch_dtype_name(scalar.dtype),
            memory_bits=bytes(tensor_bytes(scalar)).hex(),
        )  # fmt: skip
        if mf is not None:
            span = mf.span(file_tensor_name(lm, mf, site.param_name))
            for key, value in read_element(span, tuple(entry.index)).items():
                setattr(entry, key, value)
        entries.append(entry)
    return entries


def build_manifest(
    *,
    spec: str,
    records: list[TensorRecord],
    files: list[FileRecord] | None = None,
    mf: ModelFiles | None = None,
    lm: LoadedModel | None = None,
    scan: ScanResult | None = None,
    canary: Canary | None = None,
    super_weights: list[SuperWeightEntry] | None = None,
    algorithm: str = "sha256",
    notes: list[str] | None = None,
) -> Manifest:
    """Assemble a manifest (ready for :func:`~superweight.guard.manifest.save_manifest`)."""
    from superweight import __version__

    model = ModelInfo(
        spec=spec,
        format=mf.format if mf is not None else "memory",
        identity=dict(mf.identity) if mf is not None else {},
        content_digest=content_digest(records),
        num_tensors=len(records),
        num_bytes=sum(r.nbytes for r in records),
    )
    if lm is not None:
        model.memory = {"architecture": lm.architecture, "dtype": lm.dtype, "num_parameters": lm.num_parameters}
        model.identity.setdefault("classes", [lm.architecture])
    return Manifest(
        model=model,
        tensors=list(records),
        super_weights=list(super_weights or []),
        super_activations=[
            ActivationEntry(a.layer, a.channel, a.value, list(a.tokens))
            for a in (scan.super_activations if scan is not None else [])
        ],
        files=list(files or []),
        nonfinite={r.name: r.nonfinite for r in records if r.nonfinite},
        canary=canary,
        hash=algorithm,
        tool={"name": "superweight", "version": __version__},
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        notes=list(notes or []),
    )


def canary_channel(scan: ScanResult | None) -> int | None:
    """The channel the canary watches: the largest super activation's."""
    if scan is None or not scan.super_activations:
        return None
    return max(scan.super_activations, key=lambda a: abs(a.value)).channel


def fingerprint(
    spec: str | None,
    *,
    scan: bool = True,
    canary: bool = True,
    scan_result: ScanResult | None = None,
    algorithm: str = "sha256",
    dtype: str = "float32",
    device: str = "cpu",
    down_proj: str | None = None,
) -> Manifest:
    """Fingerprint model files: per-tensor hashes by streaming, then (loading the model once) the
    super weights' exact bytes and the canary.

    Example:
        >>> manifest = fingerprint("smollm2-135m")
        >>> save_manifest(manifest, "smollm2.manifest.json")
    """
    from superweight.guard.hashing import hash_files
    from superweight.model.files import resolve_model_files
    from superweight.progress import log, step

    mf = resolve_model_files(spec)
    log(f"hashing {len(mf.spans)} tensors in {len(mf.files)} {mf.format} file(s) under {mf.root}")
    with step("hashing"):
        records, files = hash_files(mf, algorithm=algorithm)
    lm = can = None
    entries: list[SuperWeightEntry] = []
    if scan or canary or scan_result is not None:
        from superweight.model.loading import load_model

        lm = load_model(spec, dtype=dtype, device=device, down_proj=down_proj)
        if scan_result is None and scan:
            from superweight.detect.detection import find_super_weights

            with step("finding super weights"):
                scan_result = find_super_weights(lm.model, lm.tokenizer, model_name=lm.spec)
        if scan_result is not None:
            entries = super_weight_entries(lm, scan_result.super_weights, mf)
        if canary:
            from superweight.guard.canary import run_canary

            can = run_canary(lm.model, lm.tokenizer, canary_channel(scan_result))
    notes = [] if entries or scan_result is not None else ["made without a scan: no super weights"]
    return build_manifest(
        spec=mf.spec, records=records, files=files, mf=mf, lm=lm, scan=scan_result, canary=can,
        super_weights=entries, algorithm=algorithm, notes=notes,
    )  # fmt: skip


def fingerprint_memory(lm: LoadedModel, scan: ScanResult | None = None, canary: bool = True) -> Manifest:
    """Fingerprint a model as it is in memory (for checks on edits that never reach a file)."""
    from superweight.guard.hashing import hash_memory

    can = None
    if canary:
        from superweight.guard.canary import run_canary

        can = run_canary(lm.model, lm.tokenizer, canary_channel(scan))
    entries = super_weight_entries(lm, scan.super_weights, None) if scan is not None else []
    return build_manifest(spec=lm.spec, records=hash_memory(lm.model), lm=lm, scan=scan, canary=can,
                          super_weights=entries)  # fmt: skip
