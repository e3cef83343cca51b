"""The evaluation settings every measuring command shares (ablate, scale, quantize, attack, the studies).

One object, validated here, so that a command cannot accept a setting and then drop it, and the CLI
takes its defaults from these fields instead of typing them again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from superweight.errors import DataError, SuperweightError
from superweight.measure.conditions import DEFAULT_BUDGET


@dataclass
class EvalSettings:
    """What to evaluate on and how much: perplexity sources, zero-shot tasks, token caps."""

    sources: tuple[str, ...] = ("wikitext2",)  # perplexity sources: wikitext2, c4, or a text file
    tasks: tuple[str, ...] = ()  # lm-eval zero-shot tasks (none by default: they cost minutes)
    data_dir: str | None = None  # local data sets (None: $SUPERWEIGHT_DATA, else the hub)
    max_tokens: int | None = None  # evaluate only the first N tokens of each source
    seq_len: int = 2048  # window length (capped at the model's context)
    split: str = "test"
    limit: int | None = None  # first N examples of each task
    batch_size: int = 8  # zero-shot batch size
    reuse: bool = True  # hidden-state reuse across conditions (equal to full passes, faster)
    budget_bytes: int = DEFAULT_BUDGET
    use_cache: bool = True  # reuse the original model's baseline when weights, data and settings match
    extra: dict[str, Any] = field(default_factory=dict)  # reserved for wings that add a setting

    def __post_init__(self) -> None:
        from superweight.measure.corpus import SPLITS

        self.sources = tuple(self.sources)
        self.tasks = tuple(self.tasks)
        if not self.sources:
            raise SuperweightError("names no source; give e.g. wikitext2", option="sources")
        for name in ("seq_len", "max_tokens", "limit", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < (2 if name in ("seq_len", "max_tokens") else 1):
                raise SuperweightError(f"must be a positive number (got {value})", option=name)
        if self.split not in SPLITS:
            raise SuperweightError(f"unknown split {self.split!r}; choose one of {', '.join(SPLITS)}", option="split")

    def check_data(self) -> None:
        """Fail on missing or malformed data now, not after minutes of loading and evaluating."""
        from superweight.measure.corpus import SOURCES, load_text, resolve_data_dir
        from superweight.measure.zeroshot import ALL_TASKS

        resolve_data_dir(self.data_dir)
        for source in self.sources:
            if source not in SOURCES and not Path(source).expanduser().is_file():
                raise DataError(f"unknown data source {source!r}: not {' or '.join(SOURCES)}, and no such file",
                                option="sources")  # fmt: skip
            load_text(source, self.data_dir, self.split)  # readable and well-formed (cheap next to evaluating)
        unknown = [t for t in self.tasks if t not in ALL_TASKS]
        if unknown:
            raise DataError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(ALL_TASKS)}", option="tasks")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalSettings:
        from superweight.results import build

        return build(cls, data)
