"""Checkpoints a study can resume from: tensors in safetensors, everything else in one JSON state.

A checkpoint is ``DIR/step-<n>.safetensors`` (model tensors under ``model.``, optimizer tensors under
``optim.<param>.<key>``) plus ``DIR/state.json`` naming it. Both are written atomically and the JSON
last, so an interrupted write leaves the previous checkpoint whole: the JSON is the commit point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.errors import ResultFileError
from superweight.io import atomic_write, from_json, write_json

if TYPE_CHECKING:
    import torch

STATE = "state.json"


@dataclass
class Checkpoint:
    """What was saved: the JSON state, and the tensors (model and optimizer) it names."""

    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's state dict split into flat tensors (for safetensors) and the JSON-able rest."""
    import torch

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(
    folder: str | Path,
    step: int,
    state: dict[str, Any],
    model_tensors: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    keep: int = 1,
) -> Path:
    """Write the tensors, then ``state.json`` (with ``step``); drop all but the ``keep`` newest tensor files."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model_tensors.items()}
    meta: dict[str, Any] = {}
    if optimizer is not None:
        optim_tensors, meta = _optimizer_tensors(optimizer)
        tensors.update(optim_tensors)
    name = f"step-{step:07d}.safetensors"
    atomic_write(folder / name, lambda p: save_file(tensors, str(p)))
    write_json(folder / STATE, {**state, "step": step, "tensors": name, "optimizer": meta or None})
    for old in sorted(folder.glob("step-*.safetensors"))[:-keep]:
        if old.name != name:
            old.unlink(missing_ok=True)
    return folder / STATE


def load_checkpoint(folder: str | Path) -> Checkpoint | None:
    """The last checkpoint written in ``folder``, or None when there is none."""
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / STATE
    if not path.is_file():
        return None
    try:
        state = from_json(path.read_text(encoding="utf-8"))
        tensors = load_file(str(folder / state["tensors"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ResultFileError(f"cannot resume from {folder}: the checkpoint is unreadable ({exc})", "out") from None
    model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    meta = state.get("optimizer")
    optim = None
    if meta:
        per_param: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                per_param.setdefault(int(index), {})[name] = value
        for index, scalars in meta.get("scalars", {}).items():
            per_param.setdefault(int(index), {}).update(scalars)
        optim = {"state": per_param, "param_groups": meta["param_groups"]}
    return Checkpoint(state, model, optim)
