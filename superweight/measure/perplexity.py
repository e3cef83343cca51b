"""Perplexity by the GPTQ / Yu et al. protocol, and the token windows other modules evaluate on.

Protocol: join the WikiText-2 raw test rows with ``"\\n\\n"``, tokenize once, cut into non-overlapping
windows of ``seq_len`` tokens (the tail that does not fill a window is dropped), average the token loss
over every window, and take ``exp``. Tokenizing once and keeping the windows (:class:`TokenWindows`) lets
quantization and attack code evaluate many model variants on exactly the same tokens, cheaply.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.errors import DataError

if TYPE_CHECKING:
    import torch
    from torch import nn

SOURCES = ("wikitext2", "c4")
SPLITS = ("test", "validation")
_WIKITEXT_FILES = {"test": "wiki.test.raw", "validation": "wiki.valid.raw"}
_C4_DOCS = 1100  # GPTQ's "c4_new": the first 1100 validation documents joined by spaces


@dataclass(frozen=True)
class Corpus:
    """An evaluation text and where it came from (sha256 of the bytes read, before any joining)."""

    text: str
    source: str
    split: str
    sha256: str
    path: str


@dataclass
class TokenWindows:
    """A corpus tokenized once and cut into ``(windows, seq_len)`` non-overlapping token windows."""

    ids: torch.Tensor  # (windows, seq_len), int64
    seq_len: int
    source: str
    split: str
    sha256: str
    path: str
    corpus_tokens: int  # tokens in the whole corpus, before the cut

    @property
    def windows(self) -> int:
        return int(self.ids.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.ids.numel())

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "split": self.split,
            "sha256": self.sha256,
            "path": self.path,
            "seq_len": self.seq_len,
            "windows": self.windows,
            "tokens": self.tokens,
            "corpus_tokens": self.corpus_tokens,
        }


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float  # mean token loss (nats)
    tokens: int  # tokens predicted (each window predicts seq_len - 1)
    windows: int
    seq_len: int
    source: str
    sha256: str
    seconds: float
    split: str = "test"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class KLResult:
    """llama.cpp-style KL divergence of a model's next-token distribution from a reference's."""

    mean: float
    median: float
    p99: float
    max: float
    same_top_p: float  # share of positions where both pick the same most likely token
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- data


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir``, else ``$SUPERWEIGHT_DATA``, else None (then the hub is tried)."""
    chosen = data_dir if data_dir is not None else os.environ.get("SUPERWEIGHT_DATA")
    if chosen in (None, ""):
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"data folder {path} does not exist; pass --data-dir DIR (or set SUPERWEIGHT_DATA)")
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path} is not a valid gzip file ({exc})") from None
    return data


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"{path} is not UTF-8 text (byte {exc.start}); give a UTF-8 text or JSONL file"
        raise DataError(msg) from None


def wikitext_rows(raw: str) -> list[str]:
    """The Hugging Face rows of a ``wiki.*.raw`` file: one per line, a blank (" ") line becomes ""."""
    return [line if line.strip() else "" for line in raw.splitlines(keepends=True)]


def _jsonl_texts(path: Path, text: str) -> list[str]:
    texts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            msg = f"{path}:{number} is not valid JSON ({exc.msg}); expected one object per line"
            raise DataError(msg) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f'{path}:{number} has no "text" string field; expected {{"text": ...}} per line')
        texts.append(record["text"])
    return texts


def _local_file(path: Path, source: str, split: str) -> Corpus:
    if not path.is_file():
        raise DataError(f"no such data file: {path}")
    data = _read_bytes(path)
    text = _decode(path, data)
    stem = path.name.removesuffix(".gz")
    if stem.endswith((".jsonl", ".json")):
        joiner = " " if source == "c4" else "\n\n"
        texts = _jsonl_texts(path, text)
        text = joiner.join(texts[:_C4_DOCS] if source == "c4" else texts)
    elif stem.startswith("wiki.") and stem.endswith(".raw"):
        text = "\n\n".join(wikitext_rows(text))
    if not text.strip():
        raise DataError(f"{path} holds no text")
    return Corpus(text, source, split, _sha256(data), str(path))


def hub_reachable() -> bool:
    """False when told to stay offline, or when huggingface.co cannot be reached within 2 s."""
    import socket

    if any(os.environ.get(v, "0") not in ("0", "", "false") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return True
    except OSError:
        return False


def _hub_corpus(source: str, split: str) -> Corpus:
    """The hub copy (needs the network or a warm `datasets` cache)."""
    if not hub_reachable():
        raise DataError(
            f"no local copy of {source} and the hub is not reachable (offline); "
            "pass --data-dir DIR (or set SUPERWEIGHT_DATA) or a text file"
        )
    try:
        from datasets import load_dataset

        if source == "wikitext2":
            rows = load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split=split)["text"]
            text = "\n\n".join(rows)
        else:
            files = {"validation": "en/c4-validation.00000-of-00008.json.gz"}
            rows = load_dataset("allenai/c4", data_files=files, split="validation")["text"][:_C4_DOCS]
            text = " ".join(rows)
    except Exception as exc:  # offline, missing cache, hub errors: all mean "give a local copy"
        raise DataError(
            f"no local copy of {source} and the hub copy could not be loaded "
            f"({type(exc).__name__}); pass --data-dir DIR (or set SUPERWEIGHT_DATA) or a text file"
        ) from None
    return Corpus(text, source, split, _sha256(text.encode("utf-8")), f"hub:{source}/{split}")


def load_text(source: str = "wikitext2", data_dir: str | os.PathLike | None = None, split: str = "test") -> Corpus:
    """The evaluation text: ``wikitext2``, ``c4``, or a local ``.txt``/``.raw``/``.jsonl[.gz]`` file.

    ``wikitext2`` reads ``DATA/wikitext2/wiki.{test,valid}.raw`` when a data folder is known
    (``data_dir`` or ``$SUPERWEIGHT_DATA``), else the hub. ``c4`` reads ``DATA/c4/*validation*.json[l][.gz]``.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if source not in SOURCES:
        path = Path(source).expanduser()
        if path.is_dir():
            raise DataError(f"{path} is a folder; give a text file, or wikitext2 / c4 with --data-dir {path}")
        if not path.exists():
            raise DataError(f"unknown data source {source!r}: not {' or '.join(SOURCES)}, and no such file")
        return _local_file(path, "file", split)
    root = resolve_data_dir(data_dir)
    if root is not None:
        if source == "wikitext2":
            candidate = root / "wikitext2" / _WIKITEXT_FILES[split]
            if candidate.is_file():
                return _local_file(candidate, source, split)
        else:
            found = sorted((root / "c4").glob("*validation*.json*")) if (root / "c4").is_dir() else []
            if found:
                return _local_file(found[0], source, split)
    return _hub_corpus(source, split)


def model_context(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


_TOKEN_CACHE: dict[tuple[int, str], Any] = {}


def tokenize_corpus(
    tokenizer: Any,
    corpus: Corpus,
    *,
    seq_len: int = 2048,
    max_tokens: int | None = None,
    model: nn.Module | None = None,
) -> TokenWindows:
    """Tokenize once (memoised per tokenizer and text) and cut into full windows of ``seq_len``.

    ``seq_len`` is capped at the model's context; when ``max_tokens`` is smaller than one window,
    a single window of ``max_tokens`` tokens is used (and reported as the seq_len).
    """
    import torch

    if seq_len < 2:
        raise DataError(f"--seq-len must be at least 2 (got {seq_len})")
    if max_tokens is not None and max_tokens < 2:
        raise DataError(f"--max-tokens must be at least 2 (got {max_tokens})")
    context = model_context(model) if model is not None else None
    if context is not None:
        seq_len = min(seq_len, context)
    key = (id(tokenizer), corpus.sha256 + corpus.split + corpus.source)
    ids = _TOKEN_CACHE.get(key)
    if ids is None:
        ids = torch.tensor(tokenizer(corpus.text)["input_ids"], dtype=torch.long)
        _TOKEN_CACHE.clear()  # one corpus at a time is what callers reuse; do not grow without bound
        _TOKEN_CACHE[key] = ids
    usable = ids.numel() if max_tokens is None else min(ids.numel(), max_tokens)
    if usable < seq_len:
        seq_len = usable
    if seq_len < 2:
        raise DataError(f"{corpus.path} has fewer than 2 tokens")
    n = usable // seq_len
    return TokenWindows(
        ids=ids[: n * seq_len].view(n, seq_len).clone(),
        seq_len=seq_len,
        source=corpus.source,
        split=corpus.split,
        sha256=corpus.sha256,
        path=corpus.path,
        corpus_tokens=int(ids.numel()),
    )


# ----------------------------------------------------------------------------------------- computation


def as_windows(ids: torch.Tensor | TokenWindows, seq_len: int | None = None) -> torch.Tensor:
    """A 2-D ``(windows, seq_len)`` tensor from windows, a 2-D tensor, or a 1-D token stream."""
    if isinstance(ids, TokenWindows):
        return ids.ids
    if ids.dim() == 2:
        return ids
    if seq_len is None:
        raise DataError("a 1-D token tensor needs seq_len")
    n = ids.numel() // seq_len
    if n == 0:
        raise DataError(f"{ids.numel()} tokens do not fill one window of {seq_len}")
    return ids[: n * seq_len].view(n, seq_len)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def logits_of(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    """``(seq_len, vocab)`` float logits of one window (no KV cache built)."""
    out = model(input_ids=window.view(1, -1).to(model_device(model)), use_cache=False)
    return out.logits[0]


def token_losses(logits: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Per-token loss (nats) of predicting ``window[1:]`` from ``logits[:-1]``.

    Computed 64 positions at a time: the rows then stay in cache, which makes it ~1.5x faster on CPU.
    """
    import torch
    import torch.nn.functional as F

    targets = window[1:].to(logits.device)
    n = targets.numel()
    return torch.cat(
        [
            F.cross_entropy(logits[i : min(i + 64, n)].float(), targets[i : i + 64], reduction="none")
            for i in range(0, n, 64)
        ]
    )


def perplexity_on_ids(
    model: nn.Module,
    ids: torch.Tensor | TokenWindows,
    seq_len: int | None = None,
    *,
    desc: str = "perplexity",
) -> PerplexityResult:
    """Perplexity of ``model`` on token windows (see the module docstring for the protocol)."""
    import torch

    from superweight.progress import track

    windows = as_windows(ids, seq_len)
    start = time.perf_counter()
    total = 0.0
    count = 0
    with torch.no_grad():
        for window in track(windows, desc, total=windows.shape[0]):
            losses = token_losses(logits_of(model, window), window)
            total += float(losses.double().sum())
            count += losses.numel()
    return _result(total, count, windows, ids, time.perf_counter() - start)


def _result(total: float, count: int, windows: torch.Tensor, ids: Any, seconds: float) -> PerplexityResult:
    nll = total / count
    return PerplexityResult(
        perplexity=math.exp(nll) if nll < 700 else math.inf,
        nll=nll,
        tokens=count,
        windows=int(windows.shape[0]),
        seq_len=int(windows.shape[1]),
        source=ids.source if isinstance(ids, TokenWindows) else "ids",
        sha256=ids.sha256 if isinstance(ids, TokenWindows) else "",
        seconds=seconds,
        split=ids.split if isinstance(ids, TokenWindows) else "",
    )


def perplexity(
    model: nn.Module,
    tokenizer: Any,
    source: str = "wikitext2",
    *,
    data_dir: str | os.PathLike | None = None,
    max_tokens: int | None = None,
    seq_len: int = 2048,
    split: str = "test",
) -> PerplexityResult:
    """WikiText-2 (or c4, or a text file) perplexity of an in-memory model.

    Example:
        >>> perplexity(lm.model, lm.tokenizer, data_dir="../shared/data", max_tokens=4096).perplexity
    """
    corpus = load_text(source, data_dir, split)
    windows = tokenize_corpus(tokenizer, corpus, seq_len=seq_len, max_tokens=max_tokens, model=model)
    return perplexity_on_ids(model, windows, desc=f"perplexity {source}")


def next_token_logprobs(
    model: nn.Module, ids: torch.Tensor | TokenWindows, seq_len: int | None = None, *, dtype: Any = None
) -> list[torch.Tensor]:
    """Per-window ``(seq_len, vocab)`` log-softmax of the model: the reference for :func:`kl_divergence`.

    Memory is windows x seq_len x vocab x bytes (float16 halves it: pass ``dtype=torch.float16``).
    """
    import torch

    out = []
    with torch.no_grad():
        for window in as_windows(ids, seq_len):
            logp = torch.log_softmax(logits_of(model, window).float(), dim=-1)
            out.append(logp if dtype is None else logp.to(dtype))
    return out


def kl_divergence(
    base_logprobs: list[torch.Tensor],
    model: nn.Module,
    ids: torch.Tensor | TokenWindows,
    seq_len: int | None = None,
) -> KLResult:
    """KL(base || model) per token position, summarised as llama.cpp's ``--kl-divergence`` does."""
    import torch

    windows = as_windows(ids, seq_len)
    if len(base_logprobs) != windows.shape[0]:
        raise DataError(f"{len(base_logprobs)} reference windows for {windows.shape[0]} token windows")
    kls, same = [], 0
    with torch.no_grad():
        for base, window in zip(base_logprobs, windows, strict=True):
            logq = torch.log_softmax(logits_of(model, window).float(), dim=-1)
            logp = base.float().to(logq.device)
            kls.append((logp.exp() * (logp - logq)).sum(-1).clamp_min(0).cpu())
            same += int((logp.argmax(-1) == logq.argmax(-1)).sum())
    kl = torch.cat(kls).double()
    return KLResult(
        mean=float(kl.mean()),
        median=float(kl.median()),
        p99=float(torch.quantile(kl, 0.99)),
        max=float(kl.max()),
        same_top_p=same / kl.numel(),
        tokens=int(kl.numel()),
    )
