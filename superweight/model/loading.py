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
        raise SuperweightError(f"unknown dtype {dtype!r}; choose one of {', '.join(MODEL_DTYPES)}")
    return getattr(torch, dtype)


def _resolve_device(device: str) -> str:
    import torch

    if device not in DEVICES:
        raise SuperweightError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise SuperweightError("--device cuda was asked for but no CUDA device is available; use --device cpu")
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


def _load_gguf(path: Path, dtype: str, use_cache: bool) -> tuple[Any, Any, str | None]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf(path)
    cached = gguf_cache_dir(path, dtype)  # keyed by size and mtime: a hit means the same file loaded before
    if use_cache and (cached / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=_torch_dtype(dtype))
        tokenizer = AutoTokenizer.from_pretrained(cached)
        return model, tokenizer, str(cached)
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=_torch_dtype(dtype))
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


def _load_folder(path: Path, dtype: str, allow_pickle: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} has no config.json: not a Hugging Face model folder")
    has_safetensors = any(path.glob("*.safetensors"))
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt"))
    if not has_safetensors:
        if has_pickle and not allow_pickle:
            raise ModelNotFoundError(
                f"{path} holds only pickled weights (.bin); pass --allow-pickle to load them (weights_only=True)"
            )
        if not has_pickle:
            raise ModelNotFoundError(f"{path} has no weights (*.safetensors or *.bin)")
    try:
        # transformers loads .bin files with torch.load(weights_only=True).
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype), use_safetensors=has_safetensors)
    except ValueError as exc:
        raise ModelNotFoundError(f"transformers cannot load {path}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read the weights in {path}: {str(exc).splitlines()[0]}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        raise ModelNotFoundError(f"{path} has no usable tokenizer files") from None
    return model, tokenizer


def _load_hub(spec: str, dtype: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    try:
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=_torch_dtype(dtype), local_files_only=offline)
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
) -> LoadedModel:
    """Load ``spec``: a built-in alias, a local HF folder, a ``.gguf`` file, or a hub id.

    ``down_proj`` (a glob over module names) registers an ad-hoc adapter for this model's class, so
    that every later step (detection, conditions, quantization, the guard) finds its down-projections.

    Example:
        >>> lm = load_model("smollm2-135m")
        >>> lm.model, lm.tokenizer
    """
    resolved = resolve_spec(spec)
    _quiet_transformers()
    torch_device = _resolve_device(device)
    start = time.perf_counter()
    dequantized = cache_path = None
    path = resolved.path
    if resolved.kind in ("alias", "gguf"):
        model, tokenizer, cache_path = _load_gguf(path, dtype, use_cache)
        dequantized = "GGUF"
    elif resolved.kind == "safetensors":
        raise ModelNotFoundError(f"{path} is one weight file; give its folder (with config.json and the tokenizer)")
    elif resolved.kind == "folder":
        model, tokenizer = _load_folder(path, dtype, allow_pickle)
    else:
        model, tokenizer = _load_hub(resolved.spec, dtype)
    model.eval()
    model.requires_grad_(False)
    if torch_device != "cpu":
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
    )
