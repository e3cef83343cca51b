"""Turn a model spec (alias, folder, .gguf file, hub id) into a model + tokenizer in memory.

Weights are never rewritten at load: coordinates found later index the raw Hugging Face tensors.
A GGUF file is dequantized by transformers' own loader; since that takes a while (over a minute for
Gemma 3), the dequantized model is cached as safetensors, keyed by the file's path, size and mtime.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.dtypes import MODEL_DTYPES
from superweight.errors import ModelNotFoundError, SuperweightError
from superweight.model.spec import ALIASES, resolve_spec

if TYPE_CHECKING:
    from torch import nn

DEVICES = ("cpu", "cuda", "auto")


@dataclass
class LoadedModel:
    """A model ready for hooks, and what is needed to say where it came from."""

    model: nn.Module
    tokenizer: Any
    spec: str  # what the user asked for
    source: str  # "alias", "folder", "gguf" or "hub"
    path: str  # the resolved file or folder (or hub id)
    architecture: str  # Hugging Face class name
    num_parameters: int
    dtype: str
    device: str
    load_s: float
    dequantized_from: str | None = None  # "GGUF" when transformers dequantized a .gguf file
    cache_path: str | None = None  # where the dequantized copy is cached
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec

    def describe(self) -> str:
        parts = [f"{self.architecture}, {self.num_parameters / 1e6:.1f} M parameters, {self.dtype} on {self.device}"]
        if self.dequantized_from:
            parts.append(f"dequantized from {self.dequantized_from}")
        return f"loaded {self.spec} ({self.path}): {'; '.join(parts)} in {self.load_s:.1f} s"


def cache_root() -> Path:
    return Path(os.environ.get("SUPERWEIGHT_CACHE", Path.home() / ".cache" / "superweight"))


def check_gguf(path: Path) -> None:
    """Fail with one line on a file that is not GGUF at all (cheap: parsing one fully can take 30 s)."""
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelNotFoundError(f"{path} is not a GGUF file (bad magic bytes {magic!r})")


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype not in MODEL_DTYPES:
        raise SuperweightError(f"unknown dtype {dtype!r}; choose one of {', '.join(MODEL_DTYPES)}", option="dtype")
    return getattr(torch, dtype)


def _resolve_device(device: str) -> str:
    import torch

    if device not in DEVICES:
        raise SuperweightError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}", option="device")
    if device == "cuda" and not torch.cuda.is_available():
        raise SuperweightError("cuda was asked for but no CUDA device is available; use cpu", option="device")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    from superweight.progress import is_quiet

    if is_quiet():
        transformers.utils.logging.disable_progress_bar()


def gguf_cache_dir(path: Path, dtype: str) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{dtype}".encode()).hexdigest()[:20]
    return cache_root() / "gguf" / f"{path.stem}-{key}"


def _load_gguf(path: Path, dtype: str, use_cache: bool, place: dict[str, Any]) -> tuple[Any, Any, str | None]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf(path)
    cached = gguf_cache_dir(path, dtype)  # keyed by size and mtime: a hit means the same file loaded before
    if use_cache and (cached / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=_torch_dtype(dtype), **place)
        tokenizer = AutoTokenizer.from_pretrained(cached)
        return model, tokenizer, str(cached)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=_torch_dtype(dtype), **place
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # truncation surfaces as many kinds of error deep inside the reader
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelNotFoundError(
            f"{path} is a corrupt or truncated GGUF file, or one transformers cannot read "
            f"({type(exc).__name__}: {first})"
        ) from None
    if not use_cache:
        return model, tokenizer, None
    _write_cache(model, tokenizer, cached)
    return model, tokenizer, str(cached) if cached.exists() else None


def _write_cache(model: Any, tokenizer: Any, cached: Path) -> None:
    """Save the dequantized model as a plain safetensors folder (written aside, then renamed)."""
    import copy

    from safetensors.torch import save_model

    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    try:
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the copy is plain floats, not GGUF any more
        tmp.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, cached)
    except OSError:
        pass  # a cache we cannot write is only slower, never wrong
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_folder(path: Path, dtype: str, allow_pickle: bool, place: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} has no config.json: not a Hugging Face model folder")
    has_safetensors = any(path.glob("*.safetensors"))
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt"))
    if not has_safetensors:
        if has_pickle and not allow_pickle:
            raise ModelNotFoundError(
                f"{path} holds only pickled weights (.bin); pass {{option}} to load them (weights_only=True)",
                option="allow_pickle",
            )
        if not has_pickle:
            raise ModelNotFoundError(f"{path} has no weights (*.safetensors or *.bin)")
    try:
        # transformers loads .bin files with torch.load(weights_only=True).
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=_torch_dtype(dtype), use_safetensors=has_safetensors, **place
        )
    except ValueError as exc:
        raise ModelNotFoundError(f"transformers cannot load {path}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read the weights in {path}: {str(exc).splitlines()[0]}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        raise ModelNotFoundError(f"{path} has no usable tokenizer files") from None
    return model, tokenizer


def _load_hub(spec: str, dtype: str, place: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    try:
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=_torch_dtype(dtype), local_files_only=offline, **place)
        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=offline)
    except OSError:
        raise ModelNotFoundError(
            f"model {spec!r} is not in the local Hugging Face cache and could not be downloaded "
            f"(offline?); built-in offline models: {', '.join(ALIASES)}"
        ) from None
    return model, tokenizer


def load_model(
    spec: str | None = None,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    allow_pickle: bool = False,
    use_cache: bool = True,
    down_proj: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[Any, Any] | None = None,
    offload_folder: str | Path | None = None,
    resident_down_proj: bool = False,
) -> LoadedModel:
    """Load ``spec``: a built-in alias, a local HF folder, a ``.gguf`` file, or a hub id.

    ``down_proj`` (a glob over module names) registers an ad-hoc adapter for this model's class, so
    that every later step (detection, conditions, quantization, the guard) finds its down-projections.

    ``device_map`` / ``max_memory`` / ``offload_folder`` go to accelerate through ``from_pretrained``
    (spread over GPUs, CPU and disk); ``resident_down_proj`` keeps the down-projections of offloaded
    layers in memory, which detection needs (see :mod:`superweight.model.placement`).

    Example:
        >>> lm = load_model("smollm2-135m")
        >>> lm.model, lm.tokenizer
    """
    resolved = resolve_spec(spec)
    _quiet_transformers()
    torch_device = _resolve_device(device)
    place = _placement_kwargs(resolved, dtype, torch_device, device_map, max_memory, offload_folder, resident_down_proj)
    start = time.perf_counter()
    dequantized = cache_path = None
    path = resolved.path
    if resolved.kind in ("alias", "gguf"):
        model, tokenizer, cache_path = _load_gguf(path, dtype, use_cache, place)
        dequantized = "GGUF"
    elif resolved.kind == "safetensors":
        raise ModelNotFoundError(f"{path} is one weight file; give its folder (with config.json and the tokenizer)")
    elif resolved.kind == "folder":
        model, tokenizer = _load_folder(path, dtype, allow_pickle, place)
    else:
        model, tokenizer = _load_hub(resolved.spec, dtype, place)
    model.eval()
    model.requires_grad_(False)
    if torch_device != "cpu" and not place:
        model.to(torch_device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if down_proj:
        from superweight.model.architectures import register_pattern

        register_pattern(model, down_proj)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=resolved.spec,
        source=resolved.kind,
        path=str(path),
        architecture=type(model).__name__,
        num_parameters=sum(p.numel() for p in model.parameters()),
        dtype=dtype,
        device=torch_device,
        load_s=time.perf_counter() - start,
        dequantized_from=dequantized,
        cache_path=cache_path,
        extra={"device_map": {k: str(v) for k, v in (getattr(model, "hf_device_map", None) or {}).items()}}
        if place
        else {},
    )


def _placement_kwargs(
    resolved: Any,
    dtype: str,
    device: str,
    device_map: str | dict[str, Any] | None,
    max_memory: str | dict[Any, Any] | None,
    offload_folder: str | Path | None,
    resident_down_proj: bool,
) -> dict[str, Any]:
    """What ``from_pretrained`` gets to dispatch the model (empty: load on one device as before)."""
    from superweight.model.placement import parse_device_map, parse_max_memory

    device_map = parse_device_map(device_map)
    memory = parse_max_memory(max_memory)
    if device_map is None:
        if memory is not None or offload_folder is not None:
            raise SuperweightError("needs a device map (auto, balanced, sequential or JSON)", option="device_map")
        return {}
    place: dict[str, Any] = {"device_map": device_map}
    if memory is not None:
        place["max_memory"] = memory
    if offload_folder is not None:
        Path(offload_folder).mkdir(parents=True, exist_ok=True)
        place["offload_folder"] = str(offload_folder)
    if resident_down_proj and isinstance(device_map, str):
        place["device_map"] = _resident_map(resolved, dtype, device, device_map, memory)
    return place


def _resident_map(resolved: Any, dtype: str, device: str, strategy: str, memory: dict[Any, int] | None) -> dict:
    """accelerate's own map for ``strategy``, with the down-projections kept on the main device."""
    from accelerate import infer_auto_device_map, init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from superweight.model.placement import resident_down_projections

    config = AutoConfig.from_pretrained(resolved.path if resolved.kind == "folder" else resolved.spec)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config, dtype=_torch_dtype(dtype))
    from superweight.model.architectures import decoder_layers

    layer_class = type(decoder_layers(skeleton)[0]).__name__  # a decoder layer is never split
    kwargs: dict[str, Any] = {"no_split_module_classes": [layer_class], "dtype": _torch_dtype(dtype)}
    if memory is not None:
        kwargs["max_memory"] = memory
    device_map = infer_auto_device_map(skeleton, **kwargs)
    main = 0 if device == "cuda" else "cpu"
    return resident_down_projections(device_map, skeleton, main)
