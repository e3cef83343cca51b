"""Result documents: every command's typed result, written as ``to_dict()`` plus a schema, read back once.

A results.json is ``{"command": ..., "schema_version": ..., **result.to_dict()}``. Whoever reads one
(``--scan FILE``, ``superweight report``, the studies) goes through :func:`read_document`, which says
in one line what is wrong with a file that is missing, not JSON, of another command, or newer than
this tool; and rebuilds the result with the type's ``from_dict``. Nothing else parses these files.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from superweight.errors import ResultFileError
from superweight.io import from_json

SCHEMA_VERSION = 2  # 1: the first wave's untyped payloads (no schema_version field)

T = TypeVar("T")


def document(command: str, result: Any) -> dict[str, Any]:
    """What a run folder's results.json holds for ``result`` (a typed result with ``to_dict``)."""
    return {"command": command, "schema_version": SCHEMA_VERSION, **result.to_dict()}


def read_document(path: str | Path, command: str | None = None, option: str | None = None) -> dict[str, Any]:
    """A results.json (or a run folder holding one) as a dict, checked; ``command`` if it must be one kind.

    ``option`` names the setting the path came from, so the CLI can name its flag in the error.
    """
    path = Path(path).expanduser()
    file = path / "results.json" if path.is_dir() else path
    if not path.exists():
        raise ResultFileError(f"{path} does not exist", option=option)
    if not file.is_file():
        raise ResultFileError(f"{path} has no results.json; give a run folder written with an output folder", option)
    try:
        data = from_json(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultFileError(f"cannot read {file}: {exc.strerror}", option=option) from None
    except (UnicodeDecodeError, ValueError):
        raise ResultFileError(f"{file} is not JSON; give a superweight results file", option=option) from None
    if not isinstance(data, dict) or not isinstance(data.get("command"), str):
        raise ResultFileError(f"{file} is not a superweight results file (no 'command' field)", option=option)
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ResultFileError(
            f"{file} has schema version {version}, newer than this superweight's {SCHEMA_VERSION}; upgrade superweight",
            option=option,
        )
    if command is not None and data["command"] != command:
        raise ResultFileError(f"{file} holds a {data['command']} result, not a {command} result", option=option)
    return data


def build(kind: type[T], data: dict[str, Any]) -> T:
    """A dataclass from a dict, ignoring keys it does not have (a newer writer's extra fields)."""
    if not is_dataclass(kind):
        raise TypeError(f"{kind} is not a dataclass")
    names = {f.name for f in fields(kind) if f.init}
    return kind(**{k: v for k, v in data.items() if k in names})
