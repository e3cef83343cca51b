"""Drawing a page's figures (each from the typed result alone) and rendering them to PNG and SVG.

Figures are built from saved results only (never from a live model), so ``superweight report`` can
redraw them from ``results.json`` later. A figure whose data is absent raises
:class:`~superweight.report.style.MissingData`, and the report says in a sentence why it was skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from superweight.report.pages import FigureSpec, Page
from superweight.report.style import MissingData, style

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class DrawnFigure:
    """A figure of a run: drawn (``figure``, with its ``caption``), or skipped with the reason."""

    spec: FigureSpec
    figure: Figure | None = None
    caption: str = ""
    skipped: str | None = None


def draw_all(page: Page, result: Any) -> list[DrawnFigure]:
    """Every figure of ``page``; absent data or a drawing bug skips that figure, never the run."""
    out: list[DrawnFigure] = []
    with style():
        for spec in page.figures:
            try:
                out.append(DrawnFigure(spec, figure=spec.draw(result), caption=spec.caption(result)))
            except MissingData as exc:
                out.append(DrawnFigure(spec, skipped=str(exc)))
            except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as exc:
                out.append(DrawnFigure(spec, skipped=f"it could not be drawn ({type(exc).__name__}: {exc})"))
    return out


def render(fig: Figure, fmt: str) -> bytes:
    """The figure as PNG or SVG bytes (in the house style)."""
    import io

    buf = io.BytesIO()
    with style():
        fig.savefig(buf, format=fmt, metadata={"Software": "superweight"} if fmt == "png" else {"Date": None})
    return buf.getvalue()
