"""The layout's rules, read from every import (docs/architecture.md): wings import only downward,
nothing imports a private name from another module or library, scripts and benches skip the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "superweight"
BASE = {"errors", "io", "progress", "dtypes", "results", "coordinates"}
# rank of each wing: a module may import its own wing, the base, and wings of a lower rank
RANKS = {"model": 1, "measure": 2, "detect": 3, "quant": 4, "guard": 5, "study": 6, "report": 7, "cli": 8}


def wing_of(module: str) -> str | None:
    """'superweight.detect.detection' -> 'detect'; base modules -> 'base'; the package itself -> None."""
    parts = module.split(".")
    if parts[0] != "superweight" or len(parts) == 1:
        return None
    return "base" if parts[1] in BASE else parts[1]


def rank(wing: str) -> int:
    return 0 if wing == "base" else RANKS[wing]


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) of every import in ``path``, TYPE_CHECKING ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
    return out


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def test_every_subpackage_is_a_known_wing():
    wings = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert wings <= set(RANKS), wings - set(RANKS)
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules <= BASE, f"top-level modules outside the base: {modules - BASE}"


def test_wings_import_only_downward():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        own = wing_of(module_name(path))
        if own is None:
            continue
        for line, module, _ in imports(path):
            target = wing_of(module)
            if target is None or target == own:
                continue
            if rank(target) >= rank(own):
                upward.append(f"{path.relative_to(REPO)}:{line} ({own}) imports {module} ({target})")
    assert not upward, "\n".join(upward)


def test_no_private_name_is_imported_from_elsewhere():
    found = []
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "scripts").glob("*.py"), *(REPO / "bench").glob("*.py")]:
        for line, module, names in imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private += [p for p in module.split(".") if p.startswith("_") and not p.startswith("__")]
            if private:
                found.append(f"{path.relative_to(REPO)}:{line} from {module} import {', '.join(private)}")
    assert not found, "\n".join(found)


def test_scripts_and_benches_use_the_library_not_the_cli():
    found = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in [*(REPO / "scripts").glob("*.py"), *(REPO / "bench").glob("*.py")]
        for line, module, _ in imports(path)
        if module == "superweight.cli" or module.startswith("superweight.cli.")
    ]
    assert not found, "\n".join(found)


def test_the_checks_can_fail(tmp_path):
    """The rules above read real imports: a planted upward import and a private import are seen."""
    bad = tmp_path / "bad.py"
    bad.write_text("from superweight.report.html import build_report\nfrom torch._C import _x\n")
    found = imports(bad)
    assert (1, "superweight.report.html", ["build_report"]) in found
    assert rank(wing_of("superweight.report.html")) > rank(wing_of("superweight.detect.detection"))
    assert any(n.startswith("_") for _, _, names in found for n in names)
