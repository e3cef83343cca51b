"""The atlas: published super weights and super experts (and this project's own), as versioned data.

The coordinates live in ``superweight/data/atlas.json`` (data, not code: a correction is a one-line
diff with its source beside it). Each entry names its model (hub id, aliases, revision where known),
its source, a status (``published``, ``measured here``, ``disputed``, ``unverified``) and how it was
checked. :func:`load_atlas` validates the file into typed :class:`AtlasEntry` records.

Two uses: :func:`agreement` says whether a scan found what the atlas lists for that model, and
``superweight.detect.atlas_check`` applies entries to a model's tensor *shapes*, read from file
headers without loading a weight (the field has applied Llama coordinates to GPT-2 unchecked).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.errors import SuperweightError

if TYPE_CHECKING:
    from superweight.coordinates import SuperWeight

SCHEMA_VERSION = 1
STATUSES = ("published", "measured here", "disputed", "unverified")


class AtlasError(SuperweightError):
    """An atlas file that is missing, not JSON, of another schema version, or with an invalid entry."""


@dataclass(frozen=True)
class AtlasWeight:
    """``layers[layer]`` down-projection ``[row, col]`` (inside expert ``expert`` for an MoE)."""

    layer: int
    row: int
    col: int
    expert: int | None = None
    status: str | None = None  # None: the entry's status
    note: str = ""
    alternative: str | None = None  # readings sharing a label are alternatives: finding one suffices


@dataclass(frozen=True)
class AtlasExpert:
    layer: int
    expert: int
    note: str = ""


@dataclass(frozen=True)
class AtlasShape:
    """The down-projection geometry of the model's published config (hidden x intermediate)."""

    layers: int
    hidden: int
    intermediate: int
    experts: int | None = None


@dataclass(frozen=True)
class AtlasEntry:
    id: str
    model: str  # hub id
    aliases: tuple[str, ...]
    revision: str | None
    architecture: str
    status: str
    source: str
    verification: str
    shape: AtlasShape
    super_weights: tuple[AtlasWeight, ...]
    super_experts: tuple[AtlasExpert, ...]
    note: str = ""

    def names(self) -> set[str]:
        """Every normalised name this entry answers to."""
        names = {self.id, self.model, self.model.rsplit("/", 1)[-1], *self.aliases}
        return {normalise(n) for n in names}

    def matches(self, name: str) -> bool:
        key = normalise(name)
        return bool(key) and (key in self.names() or normalise(name.rsplit("/", 1)[-1]) in self.names())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Atlas:
    schema_version: int
    atlas_version: str
    entries: tuple[AtlasEntry, ...]
    path: str = ""

    def find(self, names: str | Sequence[str]) -> list[AtlasEntry]:
        """Entries matching any of ``names`` (a model id, alias, folder name or GGUF name), in file order."""
        names = [names] if isinstance(names, str) else list(names)
        return [e for e in self.entries if any(e.matches(n) for n in names if n)]

    def entry(self, entry_id: str) -> AtlasEntry:
        for e in self.entries:
            if e.id == entry_id:
                return e
        raise AtlasError(
            f"no atlas entry {entry_id!r}; entries: {', '.join(e.id for e in self.entries)}", option="entry"
        )


def normalise(name: str) -> str:
    """Case, spaces, dashes, dots and underscores do not tell models apart: ``Llama-2-7B`` = ``llama2 7b``."""
    return re.sub(r"[^0-9a-z/]", "", name.strip().lower())


# ------------------------------------------------------------------------------------------ loading


def default_path() -> Path:
    from importlib.resources import files

    return Path(str(files("superweight").joinpath("data/atlas.json")))


def load_atlas(path: str | Path | None = None) -> Atlas:
    """The atlas shipped with superweight (or the one at ``path``), validated."""
    file = Path(path).expanduser() if path is not None else default_path()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AtlasError(f"{file} does not exist", option="atlas") from None
    except OSError as exc:
        raise AtlasError(f"cannot read {file}: {exc.strerror}", option="atlas") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AtlasError(f"{file} is not JSON ({exc})", option="atlas") from None
    return parse_atlas(data, str(file))


def _int(value: Any, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum} (got {value!r})")
    return value


def _str(value: Any, what: str, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise ValueError(f"{what} must be a{'' if empty else ' non-empty'} string (got {value!r})")
    return value


def _status(value: Any, what: str) -> str:
    if value not in STATUSES:
        raise ValueError(f"{what} must be one of {', '.join(STATUSES)} (got {value!r})")
    return value


def _weight(d: dict[str, Any], shape: AtlasShape) -> AtlasWeight:
    w = AtlasWeight(
        layer=_int(d["layer"], "layer"),
        row=_int(d["row"], "row"),
        col=_int(d["col"], "col"),
        expert=None if d.get("expert") is None else _int(d["expert"], "expert"),
        status=None if d.get("status") is None else _status(d["status"], "status"),
        note=_str(d.get("note", ""), "note", empty=True),
        alternative=None if d.get("alternative") is None else _str(d["alternative"], "alternative"),
    )
    problems = shape_problems(w, shape.layers, shape.hidden, shape.intermediate, shape.experts)
    if problems:
        raise ValueError(f"super weight {coordinate_text(w)} does not fit the entry's own shape: {problems[0]}")
    return w


def _entry(d: dict[str, Any]) -> AtlasEntry:
    s = d["shape"]
    experts = s.get("experts")
    shape = AtlasShape(_int(s["layers"], "shape.layers", 1), _int(s["hidden"], "shape.hidden", 1),
                       _int(s["intermediate"], "shape.intermediate", 1),
                       None if experts is None else _int(experts, "shape.experts", 1))  # fmt: skip
    aliases = d.get("aliases", [])
    if not isinstance(aliases, (list, tuple)):
        raise ValueError("aliases must be a list")
    experts_list = []
    for e in d.get("super_experts", []):
        note = _str(e.get("note", ""), "note", empty=True)
        expert = AtlasExpert(_int(e["layer"], "layer"), _int(e["expert"], "expert"), note)
        if expert.layer >= shape.layers or shape.experts is None or expert.expert >= shape.experts:
            raise ValueError(f"super expert (layer {expert.layer}, expert {expert.expert}) does not fit the shape")
        experts_list.append(expert)
    revision = d.get("revision")
    return AtlasEntry(
        id=_str(d["id"], "id"),
        model=_str(d["model"], "model"),
        aliases=tuple(_str(a, "alias") for a in aliases),
        revision=None if revision is None else _str(revision, "revision"),
        architecture=_str(d["architecture"], "architecture"),
        status=_status(d["status"], "status"),
        source=_str(d["source"], "source"),
        verification=_str(d.get("verification", ""), "verification", empty=True),
        shape=shape,
        super_weights=tuple(_weight(w, shape) for w in d.get("super_weights", [])),
        super_experts=tuple(experts_list),
        note=_str(d.get("note", ""), "note", empty=True),
    )


def parse_atlas(data: Any, where: str = "the atlas") -> Atlas:
    """Validate an atlas document: schema version, then every entry (the first problem is the error)."""
    if not isinstance(data, dict):
        raise AtlasError(f"{where} is not an atlas (not a JSON object)", option="atlas")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise AtlasError(
            f"{where} has atlas schema version {version!r}; this superweight reads version {SCHEMA_VERSION}",
            option="atlas",
        )
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise AtlasError(f"{where} has no 'entries' list", option="atlas")
    out: list[AtlasEntry] = []
    for i, raw in enumerate(entries):
        label = raw.get("id", f"#{i}") if isinstance(raw, dict) else f"#{i}"
        try:
            if not isinstance(raw, dict):
                raise TypeError("not a JSON object")
            out.append(_entry(raw))
        except KeyError as exc:
            raise AtlasError(f"{where}: entry {label} lacks the field {exc}", option="atlas") from None
        except (TypeError, ValueError) as exc:
            raise AtlasError(f"{where}: entry {label}: {exc}", option="atlas") from None
    ids = [e.id for e in out]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise AtlasError(f"{where}: entry id {dup!r} is used twice", option="atlas")
    return Atlas(SCHEMA_VERSION, _str(data.get("atlas_version", ""), "atlas_version", True), tuple(out), where)


# ------------------------------------------------------------------------------------ shape checks


def coordinate_text(w: AtlasWeight) -> str:
    where = f"layer {w.layer}" + (f" expert {w.expert}" if w.expert is not None else "")
    return f"{where} [{w.row}, {w.col}]"


def shape_problems(w: AtlasWeight, layers: int, hidden: int, intermediate: int, experts: int | None) -> list[str]:
    """What is out of range for ``w`` in a model of this geometry (empty: it fits)."""
    problems = []
    if w.layer >= layers:
        problems.append(f"layer {w.layer} >= {layers} layers")
    if w.row >= hidden:
        problems.append(f"row {w.row} >= hidden size {hidden}")
    if w.col >= intermediate:
        problems.append(f"col {w.col} >= intermediate size {intermediate}")
    if w.expert is not None and (experts is None or w.expert >= experts):
        problems.append(f"expert {w.expert} >= {experts or 0} experts")
    return problems


@dataclass
class AtlasListing:
    """``superweight atlas [MODEL]``: the entries (all, or those matching a model)."""

    atlas_version: str
    path: str
    query: str | None
    entries: list[AtlasEntry]

    def to_dict(self) -> dict[str, Any]:
        return {"atlas_version": self.atlas_version, "path": self.path, "query": self.query,
                "schema_version_atlas": SCHEMA_VERSION, "entries": [e.to_dict() for e in self.entries]}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AtlasListing:
        entries = parse_atlas({"schema_version": data["schema_version_atlas"], "entries": data["entries"]}).entries
        return cls(data["atlas_version"], data["path"], data["query"], list(entries))


def list_entries(model: str | None = None, atlas: Atlas | None = None) -> AtlasListing:
    """Every entry, or those whose model id or alias matches ``model`` (a typed error when none does)."""
    atlas = atlas or load_atlas()
    entries = list(atlas.entries) if model is None else atlas.find(model)
    if not entries:
        raise AtlasError(
            f"no atlas entry matches {model!r}; entries: {', '.join(e.id for e in atlas.entries)}", option="model"
        )
    return AtlasListing(atlas.atlas_version, atlas.path, model, entries)


# ----------------------------------------------------------------------------------- scan agreement


@dataclass
class AtlasAgreement:
    """Whether a scan found what the atlas lists for its model."""

    entry: str
    model: str
    status: str
    source: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # listed, not found ("a or b" for disputed readings)
    extra: list[str] = field(default_factory=list)  # found, not listed
    experts_matched: list[str] = field(default_factory=list)
    experts_missing: list[str] = field(default_factory=list)
    experts_extra: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not (self.missing or self.extra or self.experts_missing or self.experts_extra)

    def summary(self) -> str:
        head = f"atlas ({self.entry}, {self.status}; {self.source}): "
        if self.agrees:
            found = len(self.matched) + len(self.experts_matched)
            return head + (f"agrees ({found} found as listed)" if found else "agrees (none listed, none found)")
        parts = []
        for label, items in (("not found", self.missing + self.experts_missing),
                             ("not listed", self.extra + self.experts_extra)):  # fmt: skip
            if items:
                parts.append(f"{label}: {'; '.join(items)}")
        return head + "disagrees; " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agrees": self.agrees}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AtlasAgreement:
        from superweight.results import build

        return build(cls, data)


def agreement(
    names: Sequence[str],
    super_weights: Sequence[SuperWeight],
    super_experts: Sequence[Any] = (),
    atlas: Atlas | None = None,
) -> AtlasAgreement | None:
    """Compare confirmed super weights (and super experts: ``.layer``, ``.expert``) with the first matching entry."""
    atlas = atlas or load_atlas()
    entries = atlas.find(names)
    if not entries:
        return None
    e = entries[0]

    def key(w: Any) -> tuple[int, int | None, int, int]:
        return (w.layer, w.expert, w.row, w.col)

    found = {key(w): w for w in super_weights}
    listed = {key(w): w for w in e.super_weights}
    out = AtlasAgreement(e.id, e.model, e.status, e.source)
    groups: dict[str, list[AtlasWeight]] = {}
    for w in e.super_weights:
        if w.alternative is not None:
            groups.setdefault(w.alternative, []).append(w)
        elif key(w) in found:
            out.matched.append(coordinate_text(w))
        else:
            out.missing.append(coordinate_text(w))
    for readings in groups.values():
        hit = [w for w in readings if key(w) in found]
        if hit:
            out.matched.extend(coordinate_text(w) for w in hit)
        else:
            out.missing.append(" or ".join(coordinate_text(w) for w in readings))
    out.extra = [
        coordinate_text(AtlasWeight(w.layer, w.row, w.col, w.expert)) for k, w in found.items() if k not in listed
    ]
    found_experts = {(x.layer, x.expert) for x in super_experts}
    listed_experts = {(x.layer, x.expert) for x in e.super_experts}
    out.experts_matched = [f"layer {a} expert {b}" for a, b in sorted(listed_experts & found_experts)]
    out.experts_missing = [f"layer {a} expert {b}" for a, b in sorted(listed_experts - found_experts)]
    out.experts_extra = [f"layer {a} expert {b}" for a, b in sorted(found_experts - listed_experts)]
    return out
