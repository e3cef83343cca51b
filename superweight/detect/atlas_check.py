"""``superweight atlas check``: do an atlas entry's coordinates name real weights of this model?

Only tensor *shapes* are read, from safetensors or GGUF headers (``superweight.model.files``): no weight
is loaded and nothing runs, so a 30B checkpoint is checked in milliseconds. A coordinate fits when its
layer exists, its row is below the down-projection's hidden size, its column below its intermediate
size, and (for an expert) its expert index below the number of experts. Down-projections are found by
the tensor names the registry's families use (``mlp.down_proj``, GPT-2's transposed ``mlp.c_proj``,
``fc2``, per-expert and fused expert tensors, GGUF's ``ffn_down``/``ffn_down_exps``).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.detect.atlas import Atlas, AtlasError, AtlasWeight, coordinate_text, load_atlas, shape_problems

if TYPE_CHECKING:
    from superweight.model.files import ModelFiles


@dataclass(frozen=True)
class DownProjTensor:
    """One down-projection tensor as its file header describes it (no weight read)."""

    layer: int
    name: str
    hidden: int
    intermediate: int
    experts: int | None = None  # a fused (experts, hidden, intermediate) tensor, or one expert's matrix


_LINEAR = re.compile(
    r"(?:^|\.)(\d+)\.(?:mlp\.(?:down_proj|dense_4h_to_h|fc_out|shared_expert\.down_proj)|fc2)\.weight$"
)
_CONV1D = re.compile(r"(?:^|\.)(\d+)\.mlp\.c_proj\.weight$")  # GPT-2 stores (intermediate, hidden)
_EXPERT = re.compile(r"(?:^|\.)(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(?:down_proj|w2)\.weight$")
_FUSED = re.compile(r"(?:^|\.)(\d+)\.mlp\.experts\.down_proj$")
_GGUF_LINEAR = re.compile(r"^blk\.(\d+)\.ffn_down(?:_shexp)?\.weight$")
_GGUF_FUSED = re.compile(r"^blk\.(\d+)\.ffn_down_exps\.weight$")


def down_proj_tensors(files: ModelFiles) -> list[DownProjTensor]:
    """Every down-projection of a model as files, with its geometry (per-expert matrices folded into one)."""
    out: list[DownProjTensor] = []
    experts: dict[int, list[tuple[int, tuple[int, ...], str]]] = {}
    for span in files.spans:
        name, shape = span.name, span.shape
        if (m := _LINEAR.search(name) or _GGUF_LINEAR.search(name)) and len(shape) == 2:
            out.append(DownProjTensor(int(m.group(1)), name, shape[0], shape[1]))
        elif (m := _CONV1D.search(name)) and len(shape) == 2:
            out.append(DownProjTensor(int(m.group(1)), name, shape[1], shape[0]))
        elif (m := _FUSED.search(name) or _GGUF_FUSED.search(name)) and len(shape) == 3:
            out.append(DownProjTensor(int(m.group(1)), name, shape[1], shape[2], shape[0]))
        elif (m := _EXPERT.search(name)) and len(shape) == 2:
            experts.setdefault(int(m.group(1)), []).append((int(m.group(2)), shape, name))
    for layer, members in experts.items():
        _, shape, name = max(members)
        out.append(DownProjTensor(layer, re.sub(r"experts\.\d+\.", "experts.*.", name), shape[0], shape[1],
                                  max(e for e, _, _ in members) + 1))  # fmt: skip
    return sorted(out, key=lambda t: (t.layer, t.experts is not None, t.name))


def weight_problems(w: AtlasWeight, tensors: Sequence[DownProjTensor]) -> list[str]:
    """What is out of range for ``w`` in these tensors (empty: it names a real weight)."""
    layers = 1 + max((t.layer for t in tensors), default=-1)
    if w.layer >= layers:
        return [f"layer {w.layer} >= {layers} layers"]
    here = [t for t in tensors if t.layer == w.layer and (t.experts is None) == (w.expert is None)]
    if not here:
        kind = "routed-expert" if w.expert is not None else "dense"
        return [f"layer {w.layer} has no {kind} down-projection"]
    t = here[0]
    return shape_problems(w, layers, t.hidden, t.intermediate, t.experts)


@dataclass
class EntryCheck:
    """One atlas entry applied to one model's tensor shapes."""

    entry: str
    model: str
    status: str
    weights: list[dict[str, Any]]  # {"coordinate", "problems"} per super weight
    experts: list[dict[str, Any]]  # {"coordinate", "problems"} per super expert

    @property
    def fits(self) -> bool:
        return not any(item["problems"] for item in self.weights + self.experts)


@dataclass
class AtlasCheck:
    """``superweight atlas check``: whether the entries name real weights of this model (shapes only)."""

    model: str
    format: str
    names: list[str]
    layers: int
    tensors: list[DownProjTensor]
    checks: list[EntryCheck]
    atlas_version: str = ""

    @property
    def ok(self) -> bool:
        return all(c.fits for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        for check, item in zip(self.checks, out["checks"], strict=True):
            item["fits"] = check.fits
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AtlasCheck:
        from superweight.results import build

        return cls(
            model=data["model"],
            format=data["format"],
            names=list(data["names"]),
            layers=int(data["layers"]),
            tensors=[build(DownProjTensor, t) for t in data["tensors"]],
            checks=[build(EntryCheck, c) for c in data["checks"]],
            atlas_version=data.get("atlas_version", ""),
        )


def model_names(spec: str, files: ModelFiles | None = None) -> list[str]:
    """What a model answers to: the spec, its file or folder name, the config's or GGUF's own name."""
    names = [spec, Path(spec).name, Path(spec).stem]
    if files is not None:
        names.append(str(files.identity.get("name") or ""))
        config = files.root / "config.json"
        if files.format == "safetensors" and config.is_file():
            with contextlib.suppress(OSError, ValueError, AttributeError):
                names.append(str(json.loads(config.read_text()).get("_name_or_path") or ""))
    return list(dict.fromkeys(n for n in names if n))


def check_shapes(spec: str, atlas: Atlas | None = None, entry_id: str | None = None) -> AtlasCheck:
    """Apply the atlas entries matching ``spec`` (or entry ``entry_id``) to its tensor shapes; no forward pass."""
    from superweight.model.files import resolve_model_files

    atlas = atlas or load_atlas()
    chosen = atlas.entry(entry_id) if entry_id is not None else None  # a bad id fails before any file is read
    files = resolve_model_files(spec)
    names = model_names(spec, files)
    entries = [chosen] if chosen is not None else atlas.find(names)
    if not entries:
        raise AtlasError(
            f"no atlas entry matches {spec} (it answers to {', '.join(names)}); apply one with {{option}} ID",
            option="entry",
        )
    tensors = down_proj_tensors(files)
    if not tensors:
        raise AtlasError(f"{spec} has no tensor named like a down-projection; cannot check coordinates against it")
    checks = []
    for e in entries:
        weights = [{"coordinate": coordinate_text(w), "problems": weight_problems(w, tensors)} for w in e.super_weights]
        experts = [
            {"coordinate": f"layer {x.layer} expert {x.expert}",
             "problems": weight_problems(AtlasWeight(x.layer, 0, 0, x.expert), tensors)}
            for x in e.super_experts
        ]  # fmt: skip
        checks.append(EntryCheck(e.id, e.model, e.status, weights, experts))
    layers = 1 + max(t.layer for t in tensors)
    return AtlasCheck(spec, files.format, names, layers, tensors, checks, atlas.atlas_version)


def names_for(spec: str, atlas: Atlas | None = None) -> list[str]:
    """:func:`model_names` of ``spec``; its files' identity (config, GGUF name) is read only when needed.

    When the spec itself (an alias, a folder named like the model) already matches an entry of ``atlas``,
    no header is parsed, so a scan pays nothing for it; a hub id has no files to read.
    """
    from superweight.errors import SuperweightError
    from superweight.model.files import resolve_model_files

    names = model_names(spec)
    if (atlas or load_atlas()).find(names):
        return names
    try:
        files = resolve_model_files(spec)
    except SuperweightError:
        return names
    return model_names(spec, files)
