"""Progress on stderr for anything that takes seconds; silent when asked or when nobody is watching.

One switch for the whole process (``set_quiet``) so that library code never takes a ``quiet`` argument.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def track(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A tqdm bar on stderr, or the bare iterable when quiet."""
    if _quiet:
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True)


def log(message: str) -> None:
    """A one-line status message on stderr (never stdout: stdout carries data such as --json)."""
    if not _quiet:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning on stderr, shown even when quiet: something the user must know went wrong."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def step(message: str) -> Iterator[None]:
    """Announce a step that has no natural count (a model load), and how long it took."""
    import time

    log(f"{message} ...")
    start = time.perf_counter()
    yield
    log(f"{message}: done in {time.perf_counter() - start:.1f} s")
