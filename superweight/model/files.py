"""A model as files: where each tensor's raw bytes are, read from headers only (never the data).

A safetensors file starts with an 8-byte little-endian header length and a JSON header whose
``data_offsets`` give each tensor's byte range; a GGUF file's tensor infos give a ``data_offset`` (read
with the ``gguf`` package). Both are checked against the file's size, so a truncated file is one clear
error here instead of a confusing one later.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from superweight.dtypes import by_code
from superweight.errors import ModelNotFoundError, SuperweightError


class CorruptModelError(ModelNotFoundError):
    """A model file that cannot be parsed: truncated, or with a header that lies about its contents."""


@dataclass(frozen=True)
class TensorSpan:
    """Where one tensor's raw bytes live in a model file."""

    name: str  # as stored in the file
    dtype: str  # safetensors dtype ("F32") or GGML type ("Q4_1")
    shape: tuple[int, ...]  # row-major (torch) order, also for GGUF
    file: str  # file name, relative to the model's root
    path: Path
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def itemsize(self) -> int | None:
        entry = by_code(self.dtype)
        return None if entry is None else entry.itemsize

    @property
    def block(self) -> tuple[int, int] | None:
        """(elements, bytes) of one GGUF quantization block; None for plain dtypes."""
        if by_code(self.dtype) is not None:
            return None
        import gguf

        return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[self.dtype]]


@dataclass
class ModelFiles:
    """A model as files: its format, identity and the byte range of every tensor."""

    spec: str
    format: str  # "safetensors" or "gguf"
    root: Path
    files: list[Path]
    spans: list[TensorSpan]
    identity: dict[str, Any] = field(default_factory=dict)

    def span(self, name: str) -> TensorSpan:
        for s in self.spans:
            if s.name == name:
                return s
        raise SuperweightError(f"{self.spec} has no tensor named {name!r}")


# ------------------------------------------------------------------------------------------ sources


def resolve_model_files(spec: str | None) -> ModelFiles:
    """The weight files of an alias, a ``.gguf`` file, a ``.safetensors`` file or an HF folder, with every span."""
    from superweight.model.spec import resolve_spec

    resolved = resolve_spec(spec)
    path = resolved.path
    if resolved.kind in ("alias", "gguf"):
        return _gguf_files(resolved.spec, path)
    if resolved.kind == "safetensors":
        return _safetensors_files(resolved.spec, path.parent, [path])
    if resolved.kind == "folder":
        files = sorted(path.glob("*.safetensors"))
        if not files:
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return _gguf_files(resolved.spec, ggufs[0])
            hint = " (only pickled .bin weights: convert them to safetensors first)" if any(path.glob("*.bin")) else ""
            raise ModelNotFoundError(f"{path} holds no .safetensors or single .gguf file{hint}")
        return _safetensors_files(resolved.spec, path, files)
    raise ModelNotFoundError(
        f"{resolved.spec!r} is a hub id; this step reads weight files: download the model and give its folder"
    )


def read_safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(data start, header dict) of a safetensors file, checked against the file's size."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CorruptModelError(f"{path} is truncated ({size} bytes): not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise CorruptModelError(f"{path} is truncated or not safetensors (header length {n} > file size {size})")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptModelError(f"{path} has a corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptModelError(f"{path} has a corrupt safetensors header (not a JSON object)")
    return 8 + n, header


def _safetensors_files(spec: str, root: Path, files: list[Path]) -> ModelFiles:
    spans: list[TensorSpan] = []
    for path in files:
        start, header = read_safetensors_header(path)
        size = path.stat().st_size
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape, (b, e) = (
                    info["dtype"],
                    tuple(int(d) for d in info["shape"]),
                    info["data_offsets"],
                )
            except (KeyError, TypeError, ValueError):
                raise CorruptModelError(f"{path}: corrupt header entry for {name!r}") from None
            entry = by_code(dtype)
            if entry is None:
                raise CorruptModelError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
            if e - b != math.prod(shape) * entry.itemsize or b < 0:
                raise CorruptModelError(f"{path}: tensor {name!r} has {e - b} bytes for shape {list(shape)} {dtype}")
            if start + e > size:
                raise CorruptModelError(
                    f"{path} is truncated: tensor {name!r} ends at byte {start + e}, the file has {size}"
                )
            spans.append(TensorSpan(name, dtype, shape, path.name, path, start + b, e - b))
    names = [s.name for s in spans]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CorruptModelError(f"{root}: tensor {dup!r} is stored in more than one file")
    identity: dict[str, Any] = {"format": "safetensors"}
    config = root / "config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text())
            identity.update(architecture=cfg.get("model_type"), name=cfg.get("_name_or_path") or root.name)
            identity["classes"] = cfg.get("architectures")
        except (OSError, json.JSONDecodeError):
            pass
    return ModelFiles(spec, "safetensors", root, files, sorted(spans, key=lambda s: s.name), identity)


def _gguf_files(spec: str, path: Path) -> ModelFiles:
    from superweight.model.loading import check_gguf

    try:
        check_gguf(path)
    except ModelNotFoundError as exc:
        raise CorruptModelError(str(exc)) from None
    from gguf import GGUFReader

    reader = GGUFReader(path)
    size = path.stat().st_size
    spans = []
    for t in reader.tensors:
        offset, nbytes = int(t.data_offset), int(t.n_bytes)
        if offset + nbytes > size:
            raise CorruptModelError(f"{path} is truncated: tensor {t.name} ends past the end of the file")
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        spans.append(TensorSpan(t.name, t.tensor_type.name, shape, path.name, path, offset, nbytes))

    def field_value(key: str) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    identity = {
        "format": "gguf",
        "architecture": field_value("general.architecture"),
        "name": field_value("general.name"),
        "file_type": field_value("general.file_type"),
    }
    arch = identity["architecture"]
    for key in ("block_count", "attention.head_count", "attention.head_count_kv"):
        identity[key.replace("attention.", "")] = field_value(f"{arch}.{key}")
    return ModelFiles(spec, "gguf", path.parent, [path], sorted(spans, key=lambda s: s.name), identity)


def gguf_tensor_name(hf_param: str, architecture: str, num_layers: int) -> str:
    """The GGUF name of a Hugging Face parameter (gguf's own tensor-name map)."""
    import gguf

    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == architecture), None)
    if arch is None:
        raise SuperweightError(f"the gguf package does not know the architecture {architecture!r}")
    name = gguf.get_tensor_name_map(arch, num_layers).get_name(hf_param, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise SuperweightError(f"no GGUF tensor corresponds to {hf_param!r} for {architecture}")
    return name
