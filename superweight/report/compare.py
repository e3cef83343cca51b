"""The compare page: several scans side by side (which models have super weights, where, how strong)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from superweight.detect.result import ScanResult
from superweight.errors import ResultFileError
from superweight.report.explain import g, where
from superweight.report.pages import FigureSpec, Page
from superweight.report.style import MARK_GID, PALETTE, MissingData, maybe_log, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class ComparedRun:
    label: str
    scan: ScanResult

    @property
    def depth(self) -> float | None:
        """Relative depth (0 first layer, 1 last) of the strongest super weight."""
        top = max(self.scan.super_weights, key=lambda w: abs(w.value), default=None)
        return None if top is None else top.layer / max(len(self.scan.layers) - 1, 1)


@dataclass
class Comparison:
    runs: list[ComparedRun]

    @property
    def models(self) -> list[dict[str, Any]]:
        """The one-row-per-run table the page shows first."""
        rows = []
        for run in self.runs:
            s = run.scan
            top = max(s.super_weights, key=lambda w: abs(w.value), default=None)
            rows.append({
                "run": run.label, "model": s.model, "architecture": s.architecture,
                "parameters (M)": round(s.num_parameters / 1e6, 1), "layers": len(s.layers),
                "super weights": len(s.super_weights),
                "where": "; ".join(f"layer {w.layer} [{w.row}, {w.col}]" for w in s.super_weights),
                "depth": None if run.depth is None else round(run.depth, 2),
                "value": None if top is None else top.value,
                "super activation": max((abs(a.value) for a in s.super_activations), default=None),
            })  # fmt: skip
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"models": self.models, "runs": [{"label": r.label, "scan": r.scan.to_dict()} for r in self.runs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        return cls([ComparedRun(r["label"], ScanResult.from_dict(r["scan"])) for r in data["runs"]])


def compare_runs(runs: list[tuple[str, dict[str, Any]]]) -> Comparison:
    """A comparison of ``(label, results document)`` pairs; each must be a scan."""
    out = []
    for label, doc in runs:
        if doc["command"] != "scan":
            raise ResultFileError(f"{label} holds a {doc['command']} result; only scan runs can be compared")
        out.append(ComparedRun(label, ScanResult.from_dict(doc)))
    return Comparison(out)


def max_output(comparison: Comparison) -> Figure:
    """Several models on one axis: max |down_proj output| per layer against relative depth."""
    runs = [r for r in comparison.runs if r.scan.layers]
    if not runs:
        raise MissingData("none of the compared scans has per-layer maxima")
    fig = new_figure(7.0, 4.0)
    ax = fig.subplots()
    values: list[float] = []
    for i, run in enumerate(runs):
        n = max(len(run.scan.layers) - 1, 1)
        ys = [abs(s.max_output) for s in run.scan.layers]
        values += ys
        color = PALETTE[i % len(PALETTE)]
        name = run.scan.model if run.scan.model == run.label else f"{run.scan.model} ({run.label})"
        ax.plot([s.layer / n for s in run.scan.layers], ys, marker="o", markersize=3, color=color, label=name)
        for layer in sorted({w.layer for w in run.scan.super_weights}):
            ax.axvline(layer / n, color=color, linestyle="--", linewidth=1).set_gid(MARK_GID)
    maybe_log(ax, values)
    ax.set_xlabel("relative depth (layer / last layer)")
    ax.set_ylabel("max |down_proj output|")
    ax.set_title("Down-projection output maxima across models (dashed: super weight layers)")
    ax.legend(loc="best")
    return fig


def summary(comparison: Comparison) -> list[str]:
    out = []
    for run in comparison.runs:
        s = run.scan
        if not s.super_weights:
            out.append(f"{s.model}: no super weight confirmed (run {run.label}).")
            continue
        n = max(len(s.layers) - 1, 1)
        listed = "; ".join(f"{where(w)} = {g(w.value)} (depth {w.layer / n:.0%})" for w in s.super_weights)
        out.append(f"{s.model}: {len(s.super_weights)} super weight(s): {listed}.")
    return out


PAGES = {
    "compare": Page(
        "compare",
        read=Comparison.from_dict,
        summary=summary,
        heading=lambda c: ", ".join(r.scan.model for r in c.runs),
        figures=(
            FigureSpec(
                "compare_max_output",
                "Models side by side",
                max_output,
                lambda _c: (
                    "Max |down-projection output| per layer for each model, at relative depth; dashed lines "
                    "mark each model's super weight layers."
                ),
            ),
        ),
    )
}
