"""What a command's report page holds: how to read its results, its sentences and its figures.

Each command's page lives in the module of its wing (``report/scan.py``, ``report/measure.py``, ...),
which defines ``PAGES``; this registry maps a command to that module and imports it only when its page
is wanted. A page reads its results once, with the result type's ``from_dict``, and every sentence and
figure works on that typed result: there is one key per value, and no guessing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from superweight.errors import SuperweightError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class FigureSpec:
    """A figure of a page: ``draw(result)`` (or MissingData) and its caption, saved as ``name``.png/.svg."""

    name: str
    title: str
    draw: Callable[[Any], Figure]
    caption: Callable[[Any], str]


@dataclass(frozen=True)
class Page:
    command: str
    read: Callable[[dict[str, Any]], Any]  # a results document -> the typed result
    summary: Callable[[Any], list[str]]  # sentences that say what the result shows
    heading: Callable[[Any], str]  # what the page is about (the model)
    figures: tuple[FigureSpec, ...] = ()


# command -> module whose PAGES defines its page
PAGE_MODULES = {
    "scan": "superweight.report.scan",
    "ablate": "superweight.report.measure",
    "scale": "superweight.report.measure",
    "quantize": "superweight.report.quant",
    "attack": "superweight.report.guard",
    "diff": "superweight.report.guard",
    "verify": "superweight.report.guard",
    "fingerprint": "superweight.report.guard",
    "repair": "superweight.report.guard",
    "quantized-attack": "superweight.report.guard",
    "compare": "superweight.report.compare",
    "atlas": "superweight.report.atlas",
    "atlas-check": "superweight.report.atlas",
    "study-recovery": "superweight.report.study",
    "study-prevention": "superweight.report.study",
    "watch": "superweight.report.watch",
}


def page_for(command: str) -> Page:
    module = PAGE_MODULES.get(command)
    if module is None:
        raise SuperweightError(f"no report page for {command!r} results; known: {', '.join(PAGE_MODULES)}")
    return importlib.import_module(module).PAGES[command]


def read_result(page: Page, doc: dict[str, Any]) -> Any:
    """The typed result of a results document, or one line that says it is not a valid one."""
    from superweight.errors import ResultFileError

    try:
        return page.read(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ResultFileError(
            f"not a valid {page.command} result ({type(exc).__name__}: {exc}); rerun the command to rewrite it"
        ) from None
