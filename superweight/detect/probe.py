"""The probe that confirms candidates: real text windows, one batched forward per zeroed set, a bootstrap.

By default the probe is ``windows`` windows of ``tokens`` tokens of WikiText-2 (validation split, so
that the test split stays unseen by detection), read from the local data folder
(``$SUPERWEIGHT_DATA``) when it is there, else the built-in paragraph. Windows are spread evenly
over the first part of the text, so they come from different articles. A candidate's effect is the
mean over windows of the loss increase, with a bootstrap interval over windows: an effect that only
one window shows has a wide interval.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from superweight.detect.result import PROBE_TEXT
from superweight.errors import SuperweightError

if TYPE_CHECKING:
    import torch
    from torch import nn

_SPAN_CHARS = 60_000  # how much of the corpus the default windows are spread over (~15 k tokens)


@dataclass
class Probe:
    """The token windows and where they came from."""

    ids: torch.Tensor  # (windows, tokens)
    source: str  # "wikitext2:validation", "built-in", or "text"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "windows": int(self.ids.shape[0]), "tokens": int(self.ids.numel())}


def default_text() -> tuple[str, str]:
    """WikiText-2 validation from the local data folder when it is there, else the built-in paragraph."""
    from superweight.errors import DataError
    from superweight.measure.corpus import load_text, resolve_data_dir

    try:
        root = resolve_data_dir(None)
    except DataError:
        root = None
    if root is not None and (root / "wikitext2" / "wiki.valid.raw").is_file():
        corpus = load_text("wikitext2", data_dir=root, split="validation")
        return corpus.text[:_SPAN_CHARS], "wikitext2:validation"
    return PROBE_TEXT, "built-in"


def _bos(tokenizer: Any) -> list[int]:
    """The tokenizer's own leading special token(s), if it adds any (so windows look like its inputs)."""
    ids = tokenizer("a").input_ids
    plain = tokenizer("a", add_special_tokens=False).input_ids
    return list(ids[: len(ids) - len(plain)]) if ids[-len(plain) :] == plain else []


def probe_windows(
    tokenizer: Any, text: str | None = None, model: nn.Module | None = None, windows: int = 4, tokens: int = 64
) -> Probe:
    """Cut ``text`` (default: :func:`default_text`) into ``windows`` evenly spread windows of ``tokens``.

    A text too short for two windows becomes one window holding all of it.
    """
    import torch

    if windows < 1 or tokens < 2:
        raise SuperweightError(f"needs >= 1 window of >= 2 tokens (got {windows} x {tokens})", option="probe")
    source = "text"
    if text is None:
        text, source = default_text()
    if not text.strip():
        raise SuperweightError("the probe text is empty", option="probe_text")
    head = _bos(tokenizer)
    stream = tokenizer(text, add_special_tokens=False).input_ids
    body = tokens - len(head)
    count = len(stream) // body
    if count < 2:
        rows = [head + stream]
    else:
        step = count / min(windows, count)
        starts = [int(i * step) * body for i in range(min(windows, count))]
        rows = [head + stream[s : s + body] for s in starts]
    if len(rows[0]) < 2:
        raise SuperweightError(f"the probe text {text[:40]!r} has fewer than 2 tokens", option="probe_text")
    ids = torch.tensor(rows, dtype=torch.long)
    if model is not None:
        ids = ids.to(next(model.parameters()).device)
    return Probe(ids, source)


def window_losses(model: nn.Module, probe: Probe) -> list[float]:
    """Mean next-token loss (nats) of each window, from one batched forward pass."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        logits = model(input_ids=probe.ids, use_cache=False).logits
        targets = probe.ids[:, 1:]
        losses = [
            float(F.cross_entropy(logits[i, :-1].float(), targets[i], reduction="mean")) for i in range(len(targets))
        ]
    return losses


def bootstrap_interval(values: list[float], draws: int = 2000, level: float = 0.95, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval of the mean over windows ([v, v] for a single window)."""
    if len(values) < 2:
        return [values[0], values[0]] if values else []
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(draws))
    lo = means[int((1 - level) / 2 * (draws - 1))]
    hi = means[int((1 + level) / 2 * (draws - 1))]
    return [lo, hi]


def bos_toggled(tokenizer: Any, prompt_ids: list[torch.Tensor]) -> list[torch.Tensor]:
    """The prompts with the tokenizer's BOS token prepended, or dropped where it is there (none: [])."""
    import torch

    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    out = []
    for ids in prompt_ids:
        if int(ids[0, 0]) == bos:
            if ids.shape[1] > 1:
                out.append(ids[:, 1:])
        else:
            out.append(torch.cat([ids.new_tensor([[bos]]), ids], dim=1))
    return out
