"""What both studies share about training: settings, a seeded batch order that resumes exactly, optimizers.

The batch of step ``s`` is a pure function of (seed, s): windows are drawn from one seeded permutation
per epoch. A run resumed at step ``s`` therefore sees exactly the batches the uninterrupted run would
have seen, with no random state to save.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from superweight.errors import DataError, SuperweightError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from superweight.measure.corpus import TokenWindows

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainSettings:
    """How to train: steps, how often to evaluate (and checkpoint), the optimizer and the batches."""

    steps: int = 20
    eval_every: int = 5
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 2
    seq_len: int = 256
    seed: int = 0
    source: str = "wikitext2"  # training text: wikitext2 (its split below), c4 or a text file
    split: str = "validation"
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        from superweight.measure.corpus import SPLITS

        for name, option in (("steps", "steps"), ("eval_every", "eval_every"), ("batch_size", "train_batch")):
            if getattr(self, name) < 1:
                raise SuperweightError(f"must be at least 1 (got {getattr(self, name)})", option=option)
        if self.seq_len < 2:
            raise SuperweightError(f"must be at least 2 (got {self.seq_len})", option="seq_len")
        if not self.lr > 0:
            raise SuperweightError(f"must be > 0 (got {self.lr})", option="lr")
        if self.optimizer not in OPTIMIZERS:
            raise SuperweightError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}", option="optimizer"
            )
        if self.split not in SPLITS:
            raise SuperweightError(f"unknown split {self.split!r}; choose one of {', '.join(SPLITS)}", "train_split")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSettings:
        from superweight.results import build

        return build(cls, data)


def training_windows(
    tokenizer: Any, settings: TrainSettings, data_dir: str | None, model: nn.Module | None = None
) -> TokenWindows:
    """The training text cut into windows of ``seq_len`` (fails now, before any training, if it is missing)."""
    from superweight.measure.corpus import load_text, tokenize_corpus

    corpus = load_text(settings.source, data_dir, settings.split)  # a DataError names the file or data folder
    windows = tokenize_corpus(tokenizer, corpus, seq_len=settings.seq_len, model=model)
    if windows.windows < settings.batch_size:
        raise DataError(
            f"{corpus.path} gives {windows.windows} training window(s) of {windows.seq_len} tokens, fewer than "
            f"one batch of {settings.batch_size}; give more text or a smaller batch",
            option="train_batch",
        )
    return windows


def batch_at(ids: torch.Tensor, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """The ``(batch_size, seq_len)`` batch of step ``step`` (0-based): seeded, resumable, no state."""
    import torch

    n = ids.shape[0]
    start = step * batch_size
    rows = []
    for position in range(start, start + batch_size):
        epoch, index = divmod(position, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        rows.append(int(order[index]))
    return ids[rows]


def make_optimizer(params: list[torch.nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    import torch

    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    settings: TrainSettings,
    extra_loss: Any = None,
) -> float:
    """One optimizer step on the next-token loss (plus ``extra_loss(outputs)`` when given); the LM loss."""
    import torch

    model.train()
    device = next(model.parameters()).device
    batch = batch.to(device)
    out = model(input_ids=batch, labels=batch, use_cache=False, output_hidden_states=extra_loss is not None)
    loss = out.loss if extra_loss is None else out.loss + extra_loss(out)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if settings.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
    optimizer.step()
    model.eval()
    return float(out.loss.detach())


def tensor_digest(ids: torch.Tensor) -> str:
    """sha256 of a token tensor: which tokens a run trained or evaluated on, in the results."""
    return hashlib.sha256(ids.cpu().numpy().tobytes()).hexdigest()
