"""Where a model's layers live (GPUs, CPU, disk) and how much memory each device used at its peak.

A device map is accelerate's: ``auto``, ``balanced``, ``balanced_low_0``, ``sequential``, or an explicit
``{module: device}`` map; ``max_memory`` caps each device (``{"0": "20GiB", "cpu": "8GiB"}``). They are
passed through to ``transformers.from_pretrained`` unchanged: accelerate decides, this module only
parses what the user typed and reports what was decided.
"""

from __future__ import annotations

import json
import re
import resource
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from superweight.errors import SuperweightError

if TYPE_CHECKING:
    from torch import nn

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_device_map(text: str | dict | None) -> str | dict[str, Any] | None:
    """``auto|balanced|balanced_low_0|sequential``, a JSON object ``{"module": device}``, or None."""
    if text is None or isinstance(text, dict):
        return text
    text = text.strip()
    if text in DEVICE_MAPS:
        return text
    if text.startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SuperweightError(f"is not valid JSON ({exc.msg})", option="device_map") from None
        if not isinstance(mapping, dict) or not all(isinstance(k, str) for k in mapping):
            raise SuperweightError("must map module names to devices", option="device_map")
        for module, device in mapping.items():
            if not (isinstance(device, int) or device in ("cpu", "disk", "meta") or str(device).startswith("cuda")):
                raise SuperweightError(
                    f"module {module!r} is mapped to {device!r}; use a GPU index, 'cuda:N', 'cpu' or 'disk'",
                    option="device_map",
                )
        return mapping
    raise SuperweightError(
        f"unknown device map {text!r}; choose one of {', '.join(DEVICE_MAPS)} or give a JSON object",
        option="device_map",
    )


def parse_size(text: str | int, option: str = "max_memory") -> int:
    """``"20GiB"``, ``"512MB"`` or a number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise SuperweightError(f"{text!r} is not a size such as 20GiB or 512MB", option=option)
    number, unit = float(match.group(1)), (match.group(2) or "B").lower()
    return int(number * _UNITS[unit])


def parse_max_memory(text: str | dict | None) -> dict[Any, int] | None:
    """``"0=20GiB,cpu=8GiB"`` or a JSON object -> ``{0: bytes, "cpu": bytes}`` (GPU keys as ints)."""
    if text is None:
        return None
    if isinstance(text, dict):
        items = list(text.items())
    elif text.strip().startswith("{"):
        try:
            items = list(json.loads(text).items())
        except (json.JSONDecodeError, AttributeError):
            raise SuperweightError("is not a JSON object of device -> size", option="max_memory") from None
    else:
        items = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if "=" not in part:
                raise SuperweightError(f"{part!r}: write DEVICE=SIZE, e.g. cpu=8GiB", option="max_memory")
            key, _, value = part.partition("=")
            items.append((key.strip(), value.strip()))
    out: dict[Any, int] = {}
    for key, value in items:
        key = str(key)
        if key.isdigit():
            out[int(key)] = parse_size(value)
        elif key.startswith("cuda:") and key[5:].isdigit():
            out[int(key[5:])] = parse_size(value)
        elif key in ("cpu", "disk", "mps"):
            out[key] = parse_size(value)
        else:
            raise SuperweightError(f"unknown device {key!r}; use a GPU index, 'cpu' or 'disk'", option="max_memory")
    if not out:
        raise SuperweightError("is empty", option="max_memory")
    return out


def peak_rss_bytes() -> int:
    """This process's peak resident set size (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def peak_memory() -> dict[str, int]:
    """Peak bytes per device: ``cpu`` (peak RSS) and each CUDA device (``max_memory_allocated``)."""
    out = {"cpu": peak_rss_bytes()}
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                out[f"cuda:{i}"] = int(torch.cuda.max_memory_allocated(i))
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return out


def _device_name(device: Any) -> str:
    if isinstance(device, int):
        return f"cuda:{device}"
    return str(device)


def device_of(device_map: dict[str, Any], name: str) -> str | None:
    """The device an (expanded) accelerate map gives module ``name``: its longest mapped prefix."""
    best: tuple[int, Any] | None = None
    for prefix, device in device_map.items():
        inside = prefix == "" or name == prefix or name.startswith(prefix + ".")
        if inside and (best is None or len(prefix) > best[0]):
            best = (len(prefix), device)
    return None if best is None else _device_name(best[1])


@dataclass
class Placement:
    """Where each decoder layer lived and the peak memory per device (reported in the scan's JSON)."""

    strategy: str  # "memory", "offload" or "stream"
    layers: list[str] = field(default_factory=list)  # device of each decoder layer: cuda:0, cpu, disk, "streamed"
    device_map: dict[str, str] = field(default_factory=dict)  # accelerate's map, as decided (empty: one device)
    peak_bytes: dict[str, int] = field(default_factory=dict)  # peak memory per device

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "layers": list(self.layers),
            "device_map": dict(self.device_map),
            "peak_bytes": dict(self.peak_bytes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Placement:
        return cls(data["strategy"], list(data["layers"]), dict(data["device_map"]), dict(data["peak_bytes"]))

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for device in self.layers:
            counts[device] = counts.get(device, 0) + 1
        where = ", ".join(f"{n} on {d}" for d, n in counts.items()) or "none"
        peaks = ", ".join(f"{d} {b / 2**30:.2f} GiB" for d, b in self.peak_bytes.items())
        return f"{self.strategy}: decoder layers {where}; peak memory {peaks}"


def placement_of(model: nn.Module, strategy: str = "memory") -> Placement:
    """Read where each decoder layer of a loaded (possibly dispatched) model lives, and the peaks so far."""
    from superweight.errors import UnsupportedArchitectureError
    from superweight.model.architectures import adapter_for, decoder_layers

    device_map = {k: _device_name(v) for k, v in (getattr(model, "hf_device_map", None) or {}).items()}
    layers: list[str] = []
    try:
        prefix = adapter_for(model).layers
        count = len(decoder_layers(model))
    except UnsupportedArchitectureError:
        prefix, count = None, 0
    for i in range(count):
        devices = set()
        for pname, param in decoder_layers(model)[i].named_parameters():
            device = device_of(device_map, f"{prefix}.{i}.{pname}") if device_map else None
            devices.add(device or str(param.device))
        layers.append("+".join(sorted(devices)) or "none")  # "cpu+disk": split (down-projection resident)
    return Placement(strategy, layers, device_map, peak_memory())


def resident_down_projections(device_map: dict[str, Any], model: nn.Module, device: Any = "cpu") -> dict[str, Any]:
    """``device_map`` with every down-projection (and the input embeddings) moved onto ``device``.

    Detection reads the down-projection weights between forward passes (the contributing input
    channel of a spike), and puts its inputs where the first parameter is; offloaded parameters are
    only materialised during a forward, so the offload strategy keeps these resident and everything
    else where accelerate put it.
    """
    from superweight.model.architectures import down_projections

    modules = dict(model.named_modules())
    embeddings = model.get_input_embeddings()
    keep = [site.name for site in down_projections(model)]
    keep += [name for name, module in modules.items() if module is embeddings and name]
    out = dict(device_map)
    for name in keep:
        out = _moved(out, modules, model, name, device)
    return out


def _moved(out: dict[str, Any], modules: dict, model: nn.Module, name: str, device: Any) -> dict[str, Any]:
    owners = [p for p in out if p == "" or name == p or name.startswith(p + ".")]
    owner = max(owners, key=len, default=None)
    if owner is None or out[owner] == device or str(out[owner]) not in ("disk", "cpu"):
        return out
    offload = out.pop(owner)
    if owner == name:
        out[name] = device
        return out
    # split the owner down the path to the module: its other children keep the owner's device
    path = name[len(owner) + 1 :].split(".") if owner else name.split(".")
    current = owner
    for part in path:
        parent = modules[current] if current else model
        for child, _ in parent.named_children():
            if child != part:
                out[f"{current}.{child}" if current else child] = offload
        for pname, _ in parent.named_parameters(recurse=False):
            out[f"{current}.{pname}" if current else pname] = offload
        current = f"{current}.{part}" if current else part
    out[current] = device
    return out
