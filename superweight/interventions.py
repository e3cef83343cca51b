"""Weight edits that are always undone: every context manager here restores bit-exactly on exit.

A coordinate is a :class:`WeightRef`: a down-projection (or any Linear) plus ``(row, col)`` in the
``torch.nn.Linear`` convention. Originals are saved as cloned scalars before any write, and put back
in ``finally``, so an exception inside the block (or a nested context) cannot leave a model damaged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from superweight.architectures import DownProj


@dataclass(frozen=True)
class WeightRef:
    """One scalar weight: ``site.weight[row, col]``."""

    site: DownProj
    row: int
    col: int

    def get(self) -> torch.Tensor:
        return self.site.weight[self.row, self.col]


@contextmanager
def edited(refs: Iterable[WeightRef], edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[list[WeightRef]]:
    """Replace each referenced weight ``w`` by ``edit(w)`` inside the block; restore on exit."""
    import torch

    refs = list(refs)
    saved = [ref.get().clone() for ref in refs]
    try:
        with torch.no_grad():
            for ref, original in zip(refs, saved):
                ref.site.weight[ref.row, ref.col] = edit(original)
        yield refs
    finally:
        with torch.no_grad():
            # reversed: if a coordinate is listed twice, the first saved (true) original wins
            for ref, original in reversed(list(zip(refs, saved))):
                ref.site.weight[ref.row, ref.col] = original


def zeroed(refs: Iterable[WeightRef]):
    """``with zeroed(refs):`` the weights are 0 inside the block."""
    return edited(refs, lambda w: w * 0)


def scaled(refs: Iterable[WeightRef], alpha: float):
    """``with scaled(refs, alpha):`` each weight is multiplied by alpha inside the block."""
    return edited(refs, lambda w: w * alpha)
