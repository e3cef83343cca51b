"""Tensors read one at a time from a model's files, never the whole model: safetensors shards or GGUF.

Each read opens the shard with ``safetensors.safe_open`` (memory-mapped), copies out the one tensor
(or one row of it), and closes the file again, so the mapping never keeps a whole shard resident:
peak memory is the largest tensor asked for, whatever the model's size. A GGUF file (the built-in
aliases) is read with the ``gguf`` package, one tensor dequantized at a time, under its Hugging Face
name (``gguf``'s own name map).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.errors import ModelNotFoundError

if TYPE_CHECKING:
    import torch


@dataclass
class ShardReader:
    """Every tensor of a model's files by (Hugging Face) name, read on demand."""

    root: Path
    format: str  # "safetensors" or "gguf"
    where: dict[str, Path]  # tensor name -> file
    shapes: dict[str, tuple[int, ...]]
    config: dict[str, Any] = field(default_factory=dict)
    gguf_names: dict[str, str] = field(default_factory=dict)  # HF name -> GGUF name
    bytes_read: int = 0
    readers: dict[Path, Any] = field(default_factory=dict, repr=False)  # parsed GGUF files

    def names(self) -> list[str]:
        return list(self.where)

    def has(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str, dtype: Any = None) -> torch.Tensor:
        """One whole tensor (as stored, or converted to ``dtype``)."""
        if self.format == "gguf":
            tensor = self._gguf(name)
        else:
            from safetensors import safe_open

            with safe_open(self.where[name], framework="pt") as fh:
                tensor = fh.get_tensor(name)
        self.bytes_read += tensor.numel() * tensor.element_size()
        return tensor if dtype is None else tensor.to(dtype)

    def rows(self, name: str, start: int, stop: int, dtype: Any = None) -> torch.Tensor:
        """Rows ``start:stop`` of a 2-D tensor, reading only those bytes (safetensors slices)."""
        if self.format == "gguf":
            tensor = self._gguf(name)[start:stop].clone()
        else:
            from safetensors import safe_open

            with safe_open(self.where[name], framework="pt") as fh:
                tensor = fh.get_slice(name)[start:stop]
        self.bytes_read += tensor.numel() * tensor.element_size()
        return tensor if dtype is None else tensor.to(dtype)

    def _gguf(self, name: str) -> torch.Tensor:
        import torch
        from gguf import GGUFReader
        from gguf.quants import dequantize

        path = self.where[name]
        reader = self.readers.get(path)
        if reader is None:
            reader = self.readers[path] = GGUFReader(path)
        wanted = self.gguf_names[name]
        for t in reader.tensors:
            if t.name == wanted:
                values = dequantize(t.data, t.tensor_type)
                return torch.from_numpy(values.reshape(self.shapes[name]).copy())
        raise ModelNotFoundError(f"{path} has no tensor {wanted!r}")


def open_shards(spec: str | None) -> ShardReader:
    """The tensors of an alias, a ``.gguf`` file or a Hugging Face folder of safetensors shards."""
    from superweight.model.files import resolve_model_files

    files = resolve_model_files(spec)
    if files.format == "gguf":
        return _gguf_reader(files)
    config: dict[str, Any] = {}
    if (files.root / "config.json").is_file():
        config = json.loads((files.root / "config.json").read_text())
    where = {s.name: s.path for s in files.spans}
    shapes = {s.name: s.shape for s in files.spans}
    return ShardReader(files.root, "safetensors", where, shapes, config)


def _gguf_reader(files: Any) -> ShardReader:
    """HF names for a GGUF file's tensors, through the gguf package's name map."""
    from superweight.model.files import gguf_tensor_name

    arch = files.identity.get("architecture")
    layers = int(files.identity.get("block_count") or 0)
    by_gguf = {s.name: s for s in files.spans}
    where: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    names: dict[str, str] = {}
    parts = ("mlp.down_proj", "mlp.up_proj", "mlp.gate_proj", "post_attention_layernorm", "pre_feedforward_layernorm",
             "post_feedforward_layernorm", "input_layernorm")  # fmt: skip
    for i in range(layers):
        for part in parts:
            hf = f"model.layers.{i}.{part}.weight"
            try:
                gname = gguf_tensor_name(hf, arch, layers)
            except Exception:  # a name this architecture does not have
                continue
            for candidate in (gname, gname + ".weight"):
                if candidate in by_gguf:
                    where[hf], shapes[hf], names[hf] = by_gguf[candidate].path, by_gguf[candidate].shape, candidate
    config = {"model_type": arch, "num_hidden_layers": layers, "format": "gguf"}
    return ShardReader(files.root, "gguf", where, shapes, config, names)
