"""Perplexity (and KL divergence from a reference) of a model on token windows, in one pass.

Average the token loss over every window of a :class:`~superweight.measure.corpus.TokenWindows` and
take ``exp``. When a reference's next-token log-probabilities are given, the same forward pass also
gives llama.cpp's ``--kl-divergence`` statistics, so a quantized variant costs one pass, not two.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from superweight.errors import DataError
from superweight.measure.corpus import TokenWindows, load_text, tokenize_corpus

if TYPE_CHECKING:
    import torch
    from torch import nn

# exp() of a mean token loss above this overflows a float: such a model's perplexity is reported as inf
OVERFLOW_NLL = 700.0


def perplexity_of(nll: float) -> float:
    """``exp(nll)``, or inf for a loss so large that it would overflow."""
    return math.exp(nll) if nll < OVERFLOW_NLL else math.inf


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


@dataclass
class WindowScore:
    """What one pass over the windows measured: perplexity, and KL when a reference was given."""

    perplexity: PerplexityResult
    kl: KLResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"perplexity": self.perplexity.to_dict(), "kl": None if self.kl is None else self.kl.to_dict()}


def score_windows(
    model: nn.Module,
    ids: torch.Tensor | TokenWindows,
    reference: list[torch.Tensor] | None = None,
    *,
    seq_len: int | None = None,
    desc: str = "perplexity",
) -> WindowScore:
    """Perplexity of ``model`` on the windows and, given ``reference`` log-probs, KL(reference || model)."""
    import torch

    from superweight.progress import track

    windows = as_windows(ids, seq_len)
    if reference is not None and len(reference) != windows.shape[0]:
        raise DataError(f"{len(reference)} reference windows for {windows.shape[0]} token windows")
    start = time.perf_counter()
    total, count, kls, same = 0.0, 0, [], 0
    with torch.no_grad():
        for i, window in enumerate(track(windows, desc, total=windows.shape[0])):
            logits = logits_of(model, window).float()
            losses = token_losses(logits, window)
            total += float(losses.double().sum())
            count += losses.numel()
            if reference is not None:
                logq = torch.log_softmax(logits, dim=-1)
                logp = reference[i].float().to(logq.device)
                kls.append((logp.exp() * (logp - logq)).sum(-1).clamp_min(0).cpu())
                same += int((logp.argmax(-1) == logq.argmax(-1)).sum())
    nll = total / count
    ppl = PerplexityResult(
        perplexity=perplexity_of(nll),
        nll=nll,
        tokens=count,
        windows=int(windows.shape[0]),
        seq_len=int(windows.shape[1]),
        source=ids.source if isinstance(ids, TokenWindows) else "ids",
        sha256=ids.sha256 if isinstance(ids, TokenWindows) else "",
        seconds=time.perf_counter() - start,
        split=ids.split if isinstance(ids, TokenWindows) else "",
    )
    if not kls:
        return WindowScore(ppl)
    kl = torch.cat(kls).double()
    summary = KLResult(
        mean=float(kl.mean()),
        median=float(kl.median()),
        p99=float(torch.quantile(kl, 0.99)),
        max=float(kl.max()),
        same_top_p=same / kl.numel(),
        tokens=int(kl.numel()),
    )
    return WindowScore(ppl, summary)


def perplexity_on_ids(
    model: nn.Module,
    ids: torch.Tensor | TokenWindows,
    seq_len: int | None = None,
    *,
    desc: str = "perplexity",
) -> PerplexityResult:
    """Perplexity of ``model`` on token windows (see the module docstring for the protocol)."""
    return score_windows(model, ids, seq_len=seq_len, desc=desc).perplexity


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
    kl = score_windows(model, ids, base_logprobs, seq_len=seq_len, desc="KL divergence").kl
    assert kl is not None  # a reference was given
    return kl
