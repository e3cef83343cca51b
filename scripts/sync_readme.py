"""Copy the script-generated results blocks of docs/*.md into README.md's results sections.

Each results script writes its own docs page; this puts the same text in the README, so that
nothing there is typed by hand. Run after any results script:

    python scripts/sync_readme.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from readme_section import replace_section

DOCS = Path(__file__).resolve().parents[1] / "docs"

# README section -> (docs page, start marker, end marker)
BLOCKS = {
    "figures": ("show.md", "<!-- readme-figures:start -->", "<!-- readme-figures:end -->"),
    "measure": ("measure.md", "<!-- results:measure:start -->", "<!-- results:measure:end -->"),
    "quantize": ("quantize.md", "<!-- results:start -->", "<!-- results:end -->"),
    "guard": ("guard.md", "<!-- results:guard:start -->", "<!-- results:guard:end -->"),
    "scan": ("detect.md", "<!-- results:scan:start -->", "<!-- results:scan:end -->"),
    "guard-repair": ("guard.md", "<!-- results:guard-repair:start -->", "<!-- results:guard-repair:end -->"),
    "guard-quantized": ("guard.md", "<!-- results:guard-quantized:start -->", "<!-- results:guard-quantized:end -->"),
    "live": ("live.md", "<!-- results:live:start -->", "<!-- results:live:end -->"),
    "scale": ("scale.md", "<!-- results:scale:start -->", "<!-- results:scale:end -->"),
    "weights-only": ("scale.md", "<!-- results:weights-only:start -->", "<!-- results:weights-only:end -->"),
    "atlas": ("atlas.md", "<!-- results:atlas:start -->", "<!-- results:atlas:end -->"),
    "study": ("study.md", "<!-- results:study:start -->", "<!-- results:study:end -->"),
}


def block(page: str, start: str, end: str) -> str:
    text = (DOCS / page).read_text(encoding="utf-8")
    match = re.search(re.escape(start) + r"(.*?)" + re.escape(end), text, re.S)
    body = match.group(1).strip() if match else ""
    if not body:
        return f"_Not generated yet: run the script named in [docs/{page}](docs/{page})._"
    # links and images in docs/ are relative to docs/; in the README they need the prefix
    return re.sub(r"(!?\[[^\]]*\]\()(?!https?:|/|docs/)([^)]+\))", r"\1docs/\2", body)


def main() -> None:
    for name, (page, start, end) in BLOCKS.items():
        replace_section(name, block(page, start, end) + f"\n\n(From [docs/{page}](docs/{page}).)")
        print(f"README section {name!r} <- docs/{page}")


if __name__ == "__main__":
    main()
