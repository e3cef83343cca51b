"""Replace the text between `<!-- results:NAME -->` and `<!-- /results:NAME -->` in README.md.

Results in the README are written by scripts, never typed: each results script ends with
``replace_section("name", markdown)``.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def replace_section(name: str, markdown: str, readme: Path = README) -> None:
    text = readme.read_text(encoding="utf-8")
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    if start not in text or end not in text:
        raise SystemExit(f"README.md has no markers {start} ... {end}")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    readme.write_text(pattern.sub(lambda _: f"{start}\n{markdown.strip()}\n{end}", text), encoding="utf-8")
