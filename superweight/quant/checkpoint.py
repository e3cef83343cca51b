"""A real compressed checkpoint: packed integer codes, fp16 scales/offsets and sparse outliers in safetensors.

Layout of a checkpoint folder (every file written atomically):

* ``quantized.safetensors``: per quantized linear ``NAME``: ``NAME.codes`` (bit-packed uint8),
  ``NAME.scale`` and ``NAME.offset`` (float16 per group), ``NAME.sparse_index`` (int32 flat indices) and
  ``NAME.sparse_value`` (the held-out weights, exact); layouts in the safetensors metadata.
* ``rest.safetensors``: every other parameter (embeddings, norms), unchanged, tied tensors stored once.
* ``config.json`` + tokenizer files, and ``manifest.json`` (method, bits, bytes on disk).

:func:`load_quantized_model` rebuilds a model from the folder alone (no pickle anywhere).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.errors import QuantizationError
from superweight.io import atomic_write, write_json
from superweight.quant.rtn import QuantConfig, QuantMeta, dequantize, pack, unpack

if TYPE_CHECKING:
    import torch

    from superweight.model.loading import LoadedModel
    from superweight.quant.methods import QuantReport

FORMAT = "superweight-quant/1"
_DTYPES = ("float32", "float16", "bfloat16")
OPTION = "checkpoint"  # the setting a checkpoint folder is given by


@dataclass
class CheckpointManifest:
    """``manifest.json`` of a checkpoint folder: what was quantized, how, and the bytes it takes."""

    format: str
    model: str
    architecture: str
    dtype: str
    method: str
    bits: int
    block: str
    bits_per_weight: float
    quantized_weights: int
    modules: int  # linears quantized
    bytes: dict[str, int]
    written: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest.json") -> CheckpointManifest:
        """The manifest, or one line naming what is missing or wrong in it."""
        if not isinstance(data, dict):
            raise QuantizationError(f"{where} is not a superweight checkpoint manifest (not a JSON object)", OPTION)
        if data.get("format") != FORMAT:
            raise QuantizationError(f"{where} is not a {FORMAT} manifest (format {data.get('format')!r})", OPTION)
        types = {"bits": int, "modules": int, "quantized_weights": int, "bits_per_weight": (int, float), "bytes": dict}
        for f in fields(cls):
            if f.name not in data:
                raise QuantizationError(f"{where} lacks {f.name!r}: truncated or not written by superweight", OPTION)
            kind = types.get(f.name, str)  # every other field is a string
            if not isinstance(data[f.name], kind) or isinstance(data[f.name], bool):
                raise QuantizationError(f"{where}: {f.name!r} has the wrong type ({data[f.name]!r})", OPTION)
        if data["dtype"] not in _DTYPES:
            raise QuantizationError(f"{where}: unsupported dtype {data['dtype']!r}", OPTION)
        from superweight.quant.methods import parse_method
        from superweight.quant.rtn import parse_block

        try:
            QuantConfig(data["bits"], parse_block(data["block"]))
            parse_method(data["method"])
        except QuantizationError as exc:
            raise QuantizationError(f"{where} names an invalid quantization: {exc.message}", OPTION) from None
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def read_manifest(path: str | Path) -> CheckpointManifest:
    """The manifest of the checkpoint folder at ``path``, checked (missing, not JSON, truncated, wrong)."""
    folder = Path(path).expanduser()
    file = folder / "manifest.json"
    if not folder.is_dir():
        raise QuantizationError(f"{folder} is not a folder: give a checkpoint folder written by a sweep's save", OPTION)
    if not file.is_file():
        raise QuantizationError(f"{folder} has no manifest.json: not a checkpoint written by a sweep's save", OPTION)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise QuantizationError(
            f"{file} is not JSON (truncated or damaged); write the checkpoint again", OPTION
        ) from None
    return CheckpointManifest.from_dict(data, str(file))


def check_same_model(quantized: LoadedModel, base: LoadedModel, manifest: CheckpointManifest) -> None:
    """The checkpoint quantizes ``base``: the same architecture, parameter names and shapes."""
    if manifest.architecture != base.architecture or quantized.architecture != base.architecture:
        raise QuantizationError(
            f"the checkpoint is of a {manifest.architecture} ({manifest.model}), not this {base.architecture} "
            f"({base.spec}); give the model it was written from",
            OPTION,
        )
    ours = {k: tuple(v.shape) for k, v in quantized.model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in base.model.state_dict().items()}
    if ours != theirs:
        diff = sorted(set(ours.items()) ^ set(theirs.items()))
        raise QuantizationError(
            f"the checkpoint ({manifest.model}) is of another {base.architecture} than {base.spec}: "
            f"parameter {diff[0][0]} differs in shape or presence",
            OPTION,
        )


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def save_checkpoint(out_dir: str | Path, lm: LoadedModel, report: QuantReport) -> CheckpointManifest:
    """Write ``report``'s model (made with ``keep=True``) to ``out_dir``; return the manifest."""
    import torch
    from safetensors.torch import save_file

    if not report.tensors:
        raise QuantizationError("nothing to save: the quantization was not kept (apply_quantization(keep=True))")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise QuantizationError(f"{out} exists and is not a folder", option="save")
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    layouts: dict[str, Any] = {}
    for t in report.tensors:
        m = t.meta
        tensors[f"{t.name}.codes"] = pack(t.codes, m.config.bits)
        tensors[f"{t.name}.scale"] = m.scale.contiguous()
        if m.offset is not None:
            tensors[f"{t.name}.offset"] = m.offset.contiguous()
        if m.sparse_index is not None and m.sparse_index.numel():
            tensors[f"{t.name}.sparse_index"] = m.sparse_index.to(torch.int32).contiguous()
            tensors[f"{t.name}.sparse_value"] = m.sparse_value.contiguous()
        layouts[t.name] = {
            "shape": list(m.shape),
            "bits": m.config.bits,
            "block": m.config.block,
            "scheme": m.config.scheme,
            "dtype": _dtype_name(m.dtype),
        }
    metadata = {"format": FORMAT, "layouts": json.dumps(layouts)}
    atomic_write(out / "quantized.safetensors", lambda p: save_file(tensors, str(p), metadata=metadata))

    quantized = {f"{t.name}.weight" for t in report.tensors}
    rest: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in lm.model.state_dict().items():
        if name in quantized or tensor.data_ptr() in seen:
            continue  # tied weights (lm_head = embeddings) are stored once and re-tied at load
        seen.add(tensor.data_ptr())
        rest[name] = tensor.detach().cpu().contiguous()
    atomic_write(out / "rest.safetensors", lambda p: save_file(rest, str(p), metadata={"format": FORMAT}))
    lm.model.config.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    sizes = {p.name: p.stat().st_size for p in (out / "quantized.safetensors", out / "rest.safetensors")}
    manifest = CheckpointManifest(
        format=FORMAT,
        model=lm.spec,
        architecture=lm.architecture,
        dtype=lm.dtype,
        method=report.method,
        bits=report.bits,
        block=report.block,
        bits_per_weight=report.bits_per_weight,
        quantized_weights=report.bit_count.weights,
        modules=len(report.tensors),
        bytes={**sizes, "total": sum(sizes.values())},
        written=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    write_json(out / "manifest.json", manifest.to_dict())
    return manifest


def read_quantized(path: str | Path) -> dict[str, tuple[torch.Tensor, QuantMeta]]:
    """Each quantized tensor of a checkpoint as (unpacked codes, meta), ready for :func:`dequantize`."""
    from safetensors import SafetensorError

    file = Path(path) / "quantized.safetensors" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise QuantizationError(f"{file} does not exist: not a checkpoint written by a sweep's save", OPTION)
    try:
        return _read_quantized(file)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise QuantizationError(f"{file} is damaged or truncated ({type(exc).__name__}: {exc})", OPTION) from None


def _read_quantized(file: Path) -> dict[str, tuple[torch.Tensor, QuantMeta]]:
    import torch
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as fh:
        meta = fh.metadata() or {}
        if meta.get("format") != FORMAT:
            raise QuantizationError(f"{file} is not a {FORMAT} checkpoint (format {meta.get('format')!r})", OPTION)
        layouts = json.loads(meta["layouts"])
        keys = set(fh.keys())
        out = {}
        for name, lay in layouts.items():
            shape = tuple(lay["shape"])
            if lay["dtype"] not in _DTYPES:
                raise QuantizationError(f"{file}: unsupported dtype {lay['dtype']!r} for {name}", OPTION)
            config = QuantConfig(lay["bits"], lay["block"], lay["scheme"])
            codes = unpack(fh.get_tensor(f"{name}.codes"), config.bits, shape[0] * shape[1]).reshape(shape)
            has_sparse = f"{name}.sparse_index" in keys
            m = QuantMeta(
                config=config,
                shape=shape,
                dtype=getattr(torch, lay["dtype"]),
                scale=fh.get_tensor(f"{name}.scale"),
                offset=fh.get_tensor(f"{name}.offset") if f"{name}.offset" in keys else None,
                sparse_index=fh.get_tensor(f"{name}.sparse_index").long()
                if has_sparse
                else torch.zeros(0, dtype=torch.long),
                sparse_value=fh.get_tensor(f"{name}.sparse_value") if has_sparse else torch.zeros(0),
            )
            out[name] = (codes, m)
    return out


def load_quantized_model(path: str | Path) -> LoadedModel:
    """Rebuild the quantized model from a checkpoint folder (config, tokenizer, rest, dequantized linears)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from superweight.model.loading import LoadedModel
    from superweight.quant.methods import linear_weight

    folder = Path(path).expanduser()
    manifest = read_manifest(folder)
    start = time.perf_counter()
    try:
        config = AutoConfig.from_pretrained(folder)
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, manifest.dtype))
        rest = load_file(str(folder / "rest.safetensors"))
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise QuantizationError(f"{folder}: cannot rebuild the model ({type(exc).__name__}: {exc})", OPTION) from None
    if type(model).__name__ != manifest.architecture:
        raise QuantizationError(
            f"{folder}: config.json builds a {type(model).__name__}, the manifest says {manifest.architecture}", OPTION
        )
    try:
        _, unexpected = model.load_state_dict(rest, strict=False)
    except RuntimeError:
        raise QuantizationError(f"{folder}: rest.safetensors does not fit the model in config.json", OPTION) from None
    if unexpected:
        raise QuantizationError(f"{folder}: rest.safetensors has tensors this model does not ({unexpected[0]})", OPTION)
    modules = dict(model.named_modules())
    stored = read_quantized(folder)
    if len(stored) != manifest.modules:
        raise QuantizationError(
            f"{folder}: {len(stored)} quantized tensors, the manifest says {manifest.modules}", OPTION
        )
    with torch.no_grad():
        for name, (codes, meta) in stored.items():
            if name not in modules:
                raise QuantizationError(f"{folder}: quantized tensor {name} is not a module of this model", OPTION)
            target = linear_weight(modules[name])
            if tuple(target.shape) != tuple(meta.shape):
                raise QuantizationError(
                    f"{folder}: {name} is stored as {tuple(meta.shape)}, the model has {tuple(target.shape)}", OPTION
                )
            target.copy_(dequantize(codes, meta))
    model.tie_weights()
    model.eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=str(folder),
        source="quantized",
        path=str(folder),
        architecture=type(model).__name__,
        num_parameters=sum(p.numel() for p in model.parameters()),
        dtype=manifest.dtype,
        device="cpu",
        load_s=time.perf_counter() - start,
        extra={"manifest": manifest.to_dict()},
    )
