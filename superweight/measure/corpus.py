"""Evaluation text and the token windows every measurement runs on.

Protocol (GPTQ / Yu et al.): join the WikiText-2 raw rows with ``"\\n\\n"``, tokenize once, cut into
non-overlapping windows of ``seq_len`` tokens (the tail that does not fill a window is dropped).
Tokenizing once and keeping the windows (:class:`TokenWindows`) lets every model variant (conditions,
quantization methods, attacks, probes) be evaluated on exactly the same tokens, cheaply.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
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


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir``, else ``$SUPERWEIGHT_DATA``, else None (then the hub is tried)."""
    chosen = data_dir if data_dir is not None else os.environ.get("SUPERWEIGHT_DATA")
    if chosen in (None, ""):
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(
            f"data folder {path} does not exist; give the folder with the data sets (or set SUPERWEIGHT_DATA)",
            option="data_dir",
        )
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
            f"no local copy of {source} and the hub is not reachable (offline); give a data folder with "
            "{option} (or set SUPERWEIGHT_DATA), or a text file",
            option="data_dir",
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
            f"({type(exc).__name__}); give a data folder with {{option}} (or set SUPERWEIGHT_DATA), or a text file",
            option="data_dir",
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
            raise DataError(
                f"{path} is a folder; give a text file, or wikitext2 / c4 with {{option}} {path}", option="data_dir"
            )
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
        raise DataError(f"must be at least 2 (got {seq_len})", option="seq_len")
    if max_tokens is not None and max_tokens < 2:
        raise DataError(f"must be at least 2 (got {max_tokens})", option="max_tokens")
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
