"""Check a model against its manifest: tensor hashes, the super weights' exact bits, and the canary.

Three checks, from cheapest to broadest:

* ``fast``: read each super weight's bytes (and row) at the offsets the manifest recorded, or compare
  it in memory. Microseconds; catches the edits that matter most.
* ``hash``: stream every tensor and compare per-tensor hashes. Catches any change, says which
  tensor, and (for a single flipped bit) which element and bit.
* ``canary``: run the fixed prompt and compare within tolerances. The only check that still means
  something after a conversion (another dtype, re-quantization), where hashes cannot match.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.dtypes import by_code, describe_bit
from superweight.errors import ManifestError
from superweight.guard.canary import CanaryCheck, compare_canary, run_canary
from superweight.guard.fingerprint import decode_value, read_element
from superweight.guard.hashing import (
    TensorRecord,
    element_of,
    hash_files,
    hash_memory,
    hash_span,
    locate_flip,
    tensor_bytes,
    torch_dtype_name,
)
from superweight.guard.manifest import Manifest, SuperWeightEntry, check_signature
from superweight.model.files import ModelFiles, resolve_model_files

if TYPE_CHECKING:
    from superweight.model.loading import LoadedModel


@dataclass
class SuperWeightStatus:
    layer: int
    module: str
    row: int
    col: int
    tensor: str
    status: str  # "same", "changed", "row changed" or "within tolerance" (another dtype)
    old_value: float
    new_value: float | None
    old_bits: str
    new_bits: str | None
    flipped_bits: list[int] = field(default_factory=list)  # bit positions in the element (GGUF: in the block)
    meanings: list[str] = field(default_factory=list)
    row_changed: bool | None = None


@dataclass
class TensorChange:
    name: str
    change: str  # "changed", "missing", "added", "dtype", "shape"
    old_sha256: str | None = None
    new_sha256: str | None = None
    location: dict[str, Any] | None = None  # a single flipped bit, confirmed by re-hashing (see element_of)
    super_weights: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    model: str
    manifest: str
    ok: bool
    checks: dict[str, str]  # check -> "pass", "FAIL" or "skipped: why"
    tensors_checked: int
    changed: list[TensorChange]
    super_weights: list[SuperWeightStatus]
    nonfinite: dict[str, int]
    canary: CanaryCheck | None
    signature: str
    notes: list[str]
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerifyReport:
        from superweight.results import build

        report = build(cls, data)
        report.changed = [build(TensorChange, c) for c in data["changed"]]
        report.super_weights = [build(SuperWeightStatus, s) for s in data["super_weights"]]
        report.canary = build(CanaryCheck, data["canary"]) if data.get("canary") else None
        return report


def _flipped(old: bytes, new: bytes) -> list[int]:
    pairs = enumerate(zip(old, new, strict=True))
    return [i * 8 + b for i, (x, y) in pairs for b in range(8) if (x ^ y) >> b & 1]


def _status(entry: SuperWeightEntry, old_bits: bytes, new_bits: bytes, old_value: float, new_value: float,
            dtype: str) -> SuperWeightStatus:  # fmt: skip
    flips = _flipped(old_bits, new_bits)
    return SuperWeightStatus(
        entry.layer, entry.module, entry.row, entry.col, entry.tensor or entry.param,
        "changed" if flips else "same", old_value, new_value,
        old_bits.hex(), new_bits.hex(), flips, [describe_bit(dtype, b) for b in flips],
    )  # fmt: skip


def _element_status(entry: SuperWeightEntry, new: dict[str, Any]) -> SuperWeightStatus:
    """Compare a manifest entry with the element read now (see fingerprint.read_element)."""
    old_value = entry.file_value if entry.file_value is not None else entry.value
    status = _status(entry, bytes.fromhex(entry.bits or ""), bytes.fromhex(new["bits"]), old_value,
                     new["file_value"], entry.dtype or "")  # fmt: skip
    status.row_changed = new["row_sha256"] != entry.row_sha256
    if status.row_changed and status.status == "same":
        status.status = "row changed"
    return status


def check_super_weight_bytes(manifest: Manifest, files: dict[str, Path]) -> list[SuperWeightStatus]:
    """Read each super weight's recorded bytes and row from the files (no model load, no full hash)."""
    out = []
    for e in manifest.super_weights:
        if not e.in_file:
            raise ManifestError("this manifest has no file offsets for its super weights (made from memory)")
        path = files.get(e.file or "")
        if path is None:
            raise ManifestError(f"the model has no file {e.file!r}, which the manifest's super weights are in")
        with path.open("rb") as fh:
            fh.seek(e.row_offset or 0)
            row = fh.read(e.row_nbytes or 0)
        start = (e.byte_offset or 0) - (e.row_offset or 0)
        raw = row[start : start + (e.nbytes or 0)]
        status = _element_status(e, {"bits": raw.hex(), "file_value": decode_value(raw, e.dtype or "", e.col),
                                     "row_sha256": hashlib.sha256(row).hexdigest()})  # fmt: skip
        out.append(status)
    return out


def check_super_weights_memory(model: Any, manifest: Manifest, rel_tol: float = 1e-2) -> list[SuperWeightStatus]:
    """Compare the super weights of a loaded model with the manifest: bits when the dtype matches,
    else the value within ``rel_tol`` (a bf16 copy rounds them)."""
    from superweight.model.architectures import down_projections, find_down_proj

    sites = down_projections(model)
    out = []
    for e in manifest.super_weights:
        site = find_down_proj(sites, e.module)
        scalar = site.parameter.data[tuple(site.raw_index(e.row, e.col))].reshape(1)
        dtype = torch_dtype_name(scalar.dtype)
        value = float(scalar)
        if dtype == e.memory_dtype:
            status = _status(e, bytes.fromhex(e.memory_bits), bytes(tensor_bytes(scalar)), e.value, value, dtype)
        else:
            close = math.isfinite(value) and abs(value - e.value) <= rel_tol * abs(e.value)
            status = SuperWeightStatus(e.layer, e.module, e.row, e.col, e.param,
                                       "within tolerance" if close else "changed", e.value, value,
                                       e.memory_bits, None)  # fmt: skip
        out.append(status)
    return out


def _model_files_by_name(spec: str | None) -> dict[str, Path]:
    """File name -> path for a model spec, without parsing any file (for the fast path)."""
    from superweight.model.spec import resolve_spec

    return {p.name: p for p in resolve_spec(spec).weight_files}


def compare_records(manifest: Manifest, records: list[TensorRecord], spans: dict[str, Any] | None = None
                    ) -> list[TensorChange]:  # fmt: skip
    """What changed between the manifest's tensors and these, with single bit flips located."""
    old = {t.name: t for t in manifest.tensors}
    new = {r.name: r for r in records}
    sw_by_tensor: dict[str, list[str]] = {}
    for e in manifest.super_weights:
        sw_by_tensor.setdefault(e.tensor or e.param, []).append(e.label)
    changes = []
    for name in sorted(old.keys() | new.keys()):
        o, n = old.get(name), new.get(name)
        if n is None or o is None:
            changes.append(TensorChange(name, "missing" if n is None else "added"))
            continue
        if o.dtype != n.dtype or list(o.shape) != list(n.shape):
            kind = "dtype" if o.dtype != n.dtype else "shape"
            changes.append(TensorChange(name, kind, o.sha256, n.sha256))
            continue
        if o.sha256 == n.sha256:
            continue
        change = TensorChange(name, "changed", o.sha256, n.sha256, super_weights=sw_by_tensor.get(name, []))
        flip = locate_flip(o, n)
        if flip is not None and spans is not None and name in spans:
            if hash_span(spans[name], manifest.hash, flip) == o.sha256:  # never report a guess
                change.location = element_of(flip[0], flip[1], n.dtype, n.shape)
        elif flip is not None and spans is None:
            change.location = {**element_of(flip[0], flip[1], n.dtype, n.shape), "confirmed": False}
        changes.append(change)
    return changes


def check_same_model(manifest: Manifest, mf: ModelFiles) -> tuple[bool, str]:
    """Raise for another model; say whether hashes can match (False after a conversion)."""
    m = manifest.model
    arch_old, arch_new = m.identity.get("architecture"), mf.identity.get("architecture")
    if arch_old and arch_new and arch_old != arch_new:
        raise ManifestError(f"the manifest is for a {arch_old} model ({m.identity.get('name') or m.spec}), "
                            f"{mf.spec} is {arch_new}: another model")  # fmt: skip
    if m.format != mf.format:
        return False, f"the manifest describes a {m.format} model and {mf.spec} is {mf.format}"
    old = {t.name: t for t in manifest.tensors}
    new = {s.name: s for s in mf.spans}
    common = old.keys() & new.keys()
    if len(common) < 0.5 * max(len(old), len(new)):
        raise ManifestError(f"the manifest is for another model ({m.identity.get('name') or m.spec}): only "
                            f"{len(common)} of its {len(old)} tensor names are in {mf.spec}")  # fmt: skip
    for name in sorted(common):
        if list(old[name].shape) != list(new[name].shape):
            raise ManifestError(f"the manifest is for another model: {name} is {list(new[name].shape)} in "
                                f"{mf.spec} but {old[name].shape} in the manifest")  # fmt: skip
    same_dtype = sum(old[n].dtype == new[n].dtype for n in common)
    if same_dtype < len(common) / 2:
        return False, f"{mf.spec} stores its tensors in other dtypes than the manifest (converted or re-quantized)"
    return True, ""


def check_same_architecture(manifest: Manifest, lm: LoadedModel) -> None:
    """Raise when a loaded model is of another architecture than the one the manifest was made from."""
    expected = (manifest.model.memory or {}).get("architecture")
    if expected and expected != lm.architecture:
        raise ManifestError(f"the manifest is for a {expected} ({manifest.model.spec}), {lm.spec} is a "
                            f"{lm.architecture}: another model")  # fmt: skip


def verify_model(
    spec: str | None,
    manifest: Manifest,
    *,
    manifest_path: str = "",
    fast: bool = False,
    canary: bool = False,
    pubkey: str | Path | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> VerifyReport:
    """Verify a model (files) against a manifest; see the module docstring for the checks."""
    from superweight.progress import log

    timings: dict[str, float] = {}
    signature = check_signature(manifest, pubkey)
    if fast and not manifest.super_weights:
        raise ManifestError("the manifest records no super weights (made without a scan): verify without "
                            "{option}", option="fast")  # fmt: skip
    checks: dict[str, str] = {}
    notes: list[str] = []
    changed: list[TensorChange] = []
    statuses: list[SuperWeightStatus] = []
    nonfinite: dict[str, int] = {}
    tensors_checked = 0
    spec_name = spec or manifest.model.spec
    files = _model_files_by_name(spec)
    sized = {f.name: f.size for f in manifest.files}
    offsets_valid = bool(sized) and all(n in files and files[n].stat().st_size == s for n, s in sized.items())
    if fast and offsets_valid and manifest.super_weights:
        if any(by_code(e.dtype or "") is None for e in manifest.super_weights):
            import gguf  # noqa: F401  (imported before the clock starts: it takes longer than the check)
        start = time.perf_counter()
        statuses = check_super_weight_bytes(manifest, files)
        timings["fast_s"] = time.perf_counter() - start
        checks["fast"] = "FAIL" if any(s.status != "same" for s in statuses) else "pass"
        checks["hash"] = "skipped: fast check only"
    else:
        start = time.perf_counter()
        mf = resolve_model_files(spec)
        comparable, why = check_same_model(manifest, mf)
        timings["resolve_s"] = time.perf_counter() - start
        if not comparable:
            notes.append(f"{why}: hashes cannot match, so the model is checked by its canary")
            checks["hash"] = checks["fast"] = "skipped: not comparable"
            canary = True
        else:
            spans = {s.name: s for s in mf.spans}
            if manifest.super_weights:
                start = time.perf_counter()
                for e in manifest.super_weights:
                    if e.tensor not in spans:
                        raise ManifestError(f"{mf.spec} has no tensor {e.tensor!r} holding a super weight")
                    statuses.append(_element_status(e, read_element(spans[e.tensor], tuple(e.index))))
                timings["fast_s"] = time.perf_counter() - start
                checks["fast"] = "FAIL" if any(s.status != "same" for s in statuses) else "pass"
            if fast:
                checks["hash"] = "skipped: fast check only"
            else:
                log(f"hashing {len(mf.spans)} tensors of {mf.spec}")
                start = time.perf_counter()
                records, file_records = hash_files(mf, algorithm=manifest.hash)
                timings["hash_s"] = time.perf_counter() - start
                tensors_checked = len(records)
                changed = compare_records(manifest, records, spans)
                nonfinite = {r.name: r.nonfinite for r in records if r.nonfinite}
                checks["hash"] = "FAIL" if changed else "pass"
                old_files = {f.name: f.sha256 for f in manifest.files}
                new_files = {f.name: f.sha256 for f in file_records}
                if not changed and old_files and old_files != new_files:
                    notes.append("every tensor matches but the files differ: re-sharded or re-written, same weights")
            if nonfinite:
                notes.append(f"{len(nonfinite)} tensors hold NaN/Inf values")
    canary_result = None
    if canary:
        canary_result, mem_statuses = _run_canary_check(spec, manifest, dtype, device)
        checks["canary"] = "pass" if canary_result.passed else "FAIL"
        if mem_statuses:
            checks["memory"] = "FAIL" if any(s.status == "changed" for s in mem_statuses) else "pass"
            if not statuses:
                statuses = mem_statuses
        if dtype != (manifest.model.memory or {}).get("dtype", dtype):
            notes.append(f"loaded as {dtype}: super weights compared within rounding, behaviour by the canary")
    ok = all(v == "pass" or v.startswith("skipped") for v in checks.values())
    return VerifyReport(spec_name, manifest_path, ok, checks, tensors_checked, changed, statuses, nonfinite,
                        canary_result, signature, notes, timings)  # fmt: skip


def _run_canary_check(spec: str | None, manifest: Manifest, dtype: str, device: str
                      ) -> tuple[CanaryCheck, list[SuperWeightStatus]]:  # fmt: skip
    from superweight.model.loading import load_model

    if manifest.canary is None:
        raise ManifestError("the manifest has no canary (made without one); re-create it to check by behaviour")
    lm = load_model(spec, dtype=dtype, device=device)
    check_same_architecture(manifest, lm)
    reference = manifest.canary
    current = run_canary(lm.model, lm.tokenizer, reference.channel, prompt=reference.prompt,
                         top_k=len(reference.top_ids))  # fmt: skip
    statuses = check_super_weights_memory(lm.model, manifest) if manifest.super_weights else []
    return compare_canary(reference, current), statuses


def verify_memory(lm: LoadedModel, manifest: Manifest, checks: tuple[str, ...] = ("hash", "fast", "canary")
                  ) -> VerifyReport:  # fmt: skip
    """Verify a model in memory against a manifest made from memory (what ``attack`` uses)."""
    check_same_architecture(manifest, lm)
    timings: dict[str, float] = {}
    results: dict[str, str] = {}
    changed: list[TensorChange] = []
    statuses: list[SuperWeightStatus] = []
    canary_result = None
    if "fast" in checks and manifest.super_weights:
        start = time.perf_counter()
        statuses = check_super_weights_memory(lm.model, manifest)
        timings["fast_s"] = time.perf_counter() - start
        results["fast"] = "FAIL" if any(s.status != "same" for s in statuses) else "pass"
    if "hash" in checks:
        start = time.perf_counter()
        changed = compare_records(manifest, hash_memory(lm.model, algorithm=manifest.hash))
        timings["hash_s"] = time.perf_counter() - start
        results["hash"] = "FAIL" if changed else "pass"
    if "canary" in checks and manifest.canary is not None:
        reference = manifest.canary
        start = time.perf_counter()
        current = run_canary(lm.model, lm.tokenizer, reference.channel, prompt=reference.prompt,
                             top_k=len(reference.top_ids))  # fmt: skip
        canary_result = compare_canary(reference, current)
        timings["canary_s"] = time.perf_counter() - start
        results["canary"] = "pass" if canary_result.passed else "FAIL"
    ok = all(v == "pass" for v in results.values())
    return VerifyReport(lm.spec, "<memory>", ok, results, len(manifest.tensors), changed, statuses, {},
                        canary_result, "n/a", [], timings)  # fmt: skip
