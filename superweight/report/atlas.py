"""Report pages of `superweight atlas` (the entries) and `superweight atlas check` (coordinates vs shapes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from superweight.report.pages import Page

if TYPE_CHECKING:
    from superweight.detect.atlas import AtlasListing
    from superweight.detect.atlas_check import AtlasCheck


def _read_listing(doc: dict) -> AtlasListing:
    from superweight.detect.atlas import AtlasListing

    return AtlasListing.from_dict(doc)


def _read_check(doc: dict) -> AtlasCheck:
    from superweight.detect.atlas_check import AtlasCheck

    return AtlasCheck.from_dict(doc)


def listing_summary(listing: AtlasListing) -> list[str]:
    which = "entries" if listing.query is None else f"entries matching {listing.query!r}"
    out = [f"The super-weight atlas {listing.atlas_version} holds {len(listing.entries)} {which}."]
    for e in listing.entries:
        out.append(
            f"{e.id} ({e.model}): {e.status}; {len(e.super_weights)} super weight(s), "
            f"{len(e.super_experts)} super expert(s); source: {e.source}."
        )
    return out


def check_summary(result: AtlasCheck) -> list[str]:
    out = []
    for c in result.checks:
        items = c.weights + c.experts
        bad = [i for i in items if i["problems"]]
        if not bad:
            out.append(f"Every coordinate of {c.entry} ({len(items)}) names a weight of {result.model}.")
        else:
            first = bad[0]
            out.append(
                f"{len(bad)} of {len(items)} coordinates of {c.entry} name no weight of {result.model}: "
                f"{first['coordinate']} ({'; '.join(first['problems'])})."
            )
    return out


PAGES = {
    "atlas": Page("atlas", read=_read_listing, summary=listing_summary, heading=lambda r: "super-weight atlas"),
    "atlas-check": Page("atlas-check", read=_read_check, summary=check_summary, heading=lambda r: r.model),
}
