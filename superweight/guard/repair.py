"""Repair a damaged model from its manifest, into a new copy: the super weights' exact bits come back.

A manifest records every super weight's bytes where the file holds them (for GGUF, the whole block,
scale included), so a damaged super weight can be written back bit-exactly without any other copy
of the model. Any other tensor whose hash no longer matches can only be restored from a *trusted*
copy, and only when that copy's tensor has exactly the hash the manifest vouches for. Everything is
done in a staging folder beside ``out`` that is renamed into place at the end; the model given is
never written to. The repaired copy is verified against the manifest, and (optionally) the
perplexity of the damaged and the repaired model says what the repair was worth.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.errors import ManifestError, SuperweightError
from superweight.guard.hashing import CHUNK, hash_files, hash_span
from superweight.guard.manifest import Manifest, check_signature
from superweight.guard.verify import check_same_model, compare_records, verify_model

if TYPE_CHECKING:
    from superweight.measure.settings import EvalSettings
    from superweight.model.files import ModelFiles, TensorSpan

# Few tokens: a repair is judged by whether perplexity comes back, not by a benchmark-grade number.
REPAIR_EVAL_TOKENS = 2048
REPAIR_SEQ_LEN = 512


@dataclass
class RestoredElement:
    """One super weight written back: its bytes (a GGUF block: the whole block) before and after."""

    label: str  # layer L [row, col]
    tensor: str
    file: str
    byte_offset: int
    bits_before: str
    bits_after: str


@dataclass
class RepairResult:
    model: str  # what was repaired (never written to)
    manifest: str
    out: str  # the repaired copy (a folder)
    out_model: str  # what to load: the folder, or the weight file inside it
    restored: list[RestoredElement]
    tensors_restored: list[str]  # taken from the trusted copy (hash vouched for by the manifest)
    unrepaired: list[str]  # still differ from the manifest: no trusted copy had the vouched-for bytes
    verified: bool  # the copy matches every tensor hash of the manifest
    checks: dict[str, str]
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    eval_tokens: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RepairResult:
        from superweight.results import build

        result = build(cls, data)
        result.restored = [build(RestoredElement, r) for r in data["restored"]]
        return result


def _check_out(out: Path, root: Path, model_path: Path) -> None:
    """Refuse an output that is the model, inside it, or holds it, or that already has files in it."""
    out, root = out.expanduser().resolve(), root.resolve()
    inside = out == root or root in out.parents or out in model_path.resolve().parents
    if inside:
        raise SuperweightError(f"{out} is (or holds, or is inside) the model being repaired; repair writes a new "
                               "copy, never in place: give another folder", option="out")  # fmt: skip
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SuperweightError(f"{out} exists and is not empty; give a new folder", option="out")


def _copy_model(mf: ModelFiles, model_path: Path, staging: Path) -> Path:
    """Copy the model (a folder with its config and tokenizer, or one weight file) into ``staging``."""
    if model_path.is_dir():
        shutil.copytree(model_path, staging, dirs_exist_ok=True, copy_function=shutil.copyfile)
        return staging
    target = staging / model_path.name
    shutil.copyfile(model_path, target)  # not copy2: a fresh mtime, so no loader cache mistakes it for the old file
    return target


def _write_at(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _copy_span(src: TensorSpan, dst: TensorSpan) -> None:
    """Copy one tensor's bytes from a trusted file into the same tensor of the copy (any sharding)."""
    with src.path.open("rb") as fin, dst.path.open("r+b") as fout:
        fin.seek(src.offset)
        fout.seek(dst.offset)
        left = src.nbytes
        while left:
            chunk = fin.read(min(CHUNK, left))
            if not chunk:
                raise ManifestError(f"the trusted copy's {src.name} ends early ({src.path} is truncated)")
            fout.write(chunk)
            left -= len(chunk)


def _restore_super_weights(manifest: Manifest, files: dict[str, Path]) -> list[RestoredElement]:
    out = []
    for e in manifest.super_weights:
        if not e.in_file or e.bits is None or e.byte_offset is None:
            raise ManifestError("the manifest has no file bytes for its super weights (made from memory); "
                                "re-create it from the model files")  # fmt: skip
        path = files.get(e.file or "")
        if path is None:
            raise ManifestError(f"the model has no file {e.file!r}, which the manifest's super weights are in")
        want = bytes.fromhex(e.bits)
        with path.open("rb") as fh:
            fh.seek(e.byte_offset)
            have = fh.read(len(want))
        if have != want:
            _write_at(path, e.byte_offset, want)
            out.append(RestoredElement(e.label, e.tensor or e.param, e.file or "", e.byte_offset, have.hex(), e.bits))
    return out


def _restore_from_trusted(manifest: Manifest, changed: list[str], copy: ModelFiles, trusted: str
                          ) -> tuple[list[str], list[str]]:  # fmt: skip
    """Tensors copied from ``trusted`` (only with the manifest's hash), and the notes on the rest."""
    from superweight.model.files import resolve_model_files

    tmf = resolve_model_files(trusted)
    check_same_model(manifest, tmf)
    spans = {s.name: s for s in tmf.spans}
    ours = {s.name: s for s in copy.spans}
    done, notes = [], []
    for name in changed:
        record, src = manifest.tensor(name), spans.get(name)
        if record is None or name not in ours:
            continue
        if src is None or src.nbytes != ours[name].nbytes:
            notes.append(f"the trusted copy has no tensor {name} of that size")
        elif hash_span(src, manifest.hash) != record.sha256:
            notes.append(f"the trusted copy's {name} does not have the hash the manifest vouches for: not used")
        else:
            _copy_span(src, ours[name])
            done.append(name)
    return done, notes


def _perplexity(spec: str, settings: EvalSettings, dtype: str, device: str) -> tuple[float, int]:
    from superweight.measure.corpus import load_text, tokenize_corpus
    from superweight.measure.perplexity import perplexity_on_ids
    from superweight.model.loading import load_model

    lm = load_model(spec, dtype=dtype, device=device, use_cache=False)
    corpus = load_text(settings.sources[0], data_dir=settings.data_dir, split=settings.split)
    windows = tokenize_corpus(lm.tokenizer, corpus, seq_len=settings.seq_len, max_tokens=settings.max_tokens,
                              model=lm.model)  # fmt: skip
    ppl = perplexity_on_ids(lm.model, windows, desc="perplexity").perplexity
    return (ppl if math.isfinite(ppl) else math.inf), int(windows.ids.numel())


def repair_settings(**overrides: Any) -> EvalSettings:
    """The default evaluation of a repair: the first few WikiText-2 tokens."""
    from superweight.measure.settings import EvalSettings

    return EvalSettings(**{"max_tokens": REPAIR_EVAL_TOKENS, "seq_len": REPAIR_SEQ_LEN, **overrides})


def repair_model(
    spec: str | None,
    manifest: Manifest,
    out: str | Path,
    *,
    manifest_path: str = "",
    trusted: str | None = None,
    pubkey: str | Path | None = None,
    settings: EvalSettings | None = None,
    evaluate: bool = True,
    dtype: str = "float32",
    device: str = "cpu",
) -> RepairResult:
    """Write a repaired copy of ``spec`` to the new folder ``out`` (see the module docstring).

    Example:
        >>> result = repair_model("./damaged", load_manifest("m.json"), "./repaired", trusted="./backup")
        >>> result.verified, result.perplexity_before, result.perplexity_after
    """
    from superweight.model.files import resolve_model_files
    from superweight.model.spec import resolve_spec
    from superweight.progress import log, step

    signature = check_signature(manifest, pubkey)
    resolved = resolve_spec(spec if spec is not None else manifest.model.spec)
    mf = resolve_model_files(resolved.spec)
    comparable, why = check_same_model(manifest, mf)
    if not comparable:
        raise ManifestError(f"{why}: a repair writes back exact bytes, so the model must be stored as the "
                            "manifest describes it")  # fmt: skip
    out = Path(out)
    model_path = resolved.path
    _check_out(out, model_path if model_path.is_dir() else model_path.parent, model_path)
    settings = settings or repair_settings()
    if evaluate:
        settings.check_data()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    notes = [f"manifest signature: {signature}"]
    try:
        with step("copying the model"):
            target = _copy_model(mf, model_path, staging)
        copy = resolve_model_files(str(target))
        restored = _restore_super_weights(manifest, {p.name: p for p in copy.files})
        log(f"restored {len(restored)} super weight(s) from the manifest")
        with step("hashing the copy"):
            records, _ = hash_files(copy, algorithm=manifest.hash, progress=False)
        changed = [c.name for c in compare_records(manifest, records) if c.change == "changed"]
        tensors_restored: list[str] = []
        if changed and trusted is not None:
            tensors_restored, trusted_notes = _restore_from_trusted(manifest, changed, copy, trusted)
            notes += trusted_notes
        elif changed:
            notes.append(f"{len(changed)} tensor(s) differ from the manifest beyond the super weights; give a "
                         "trusted copy to restore them")  # fmt: skip
        report = verify_model(str(target), manifest)
        unrepaired = [c.name for c in report.changed]
        if out.exists():
            out.rmdir()  # empty (checked above)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    out_model = out / target.relative_to(staging) if target != staging else out
    result = RepairResult(resolved.spec, manifest_path, str(out), str(out_model), restored, tensors_restored,
                          unrepaired, report.ok, report.checks, notes=notes)  # fmt: skip
    if evaluate:
        with step("perplexity of the damaged and the repaired model"):
            result.perplexity_before, result.eval_tokens = _perplexity(resolved.spec, settings, dtype, device)
            result.perplexity_after, _ = _perplexity(str(out_model), settings, dtype, device)
    return result
