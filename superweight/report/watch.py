"""The report page of a ``watch --once --out`` run: which checkpoints verified, which did not, and why."""

from __future__ import annotations

from collections import Counter

from superweight.guard.watch import WatchSummary
from superweight.report.pages import Page


def _summary(s: WatchSummary) -> list[str]:
    counts = Counter(v.status for v in s.verdicts)
    if not s.verdicts:
        return [f"No checkpoint (a folder with .safetensors or .gguf files) was found in {s.directory}."]
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    out = [f"{len(s.verdicts)} checkpoint(s) in {s.directory} checked against {s.manifest or 'the manifest'}: "
           f"{tally}."]  # fmt: skip
    for v in s.verdicts:
        if not v.ok:
            out.append(f"{v.checkpoint}: {v.status.upper()}" + (f" ({v.detail})" if v.detail else "") + ".")
    return out


PAGES = {
    "watch": Page("watch", read=WatchSummary.from_dict, summary=_summary, heading=lambda s: s.directory),
}
