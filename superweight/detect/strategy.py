"""How a scan holds the model: all in memory, dispatched/offloaded by accelerate, or streamed by layer.

``auto`` (the default) scans in memory when the weights, at the compute dtype, fit comfortably in the
memory available now (below half of ``MemAvailable``), and otherwise streams layer by layer when the
architecture allows it (:mod:`superweight.detect.streamed`), else offloads with accelerate. Streaming
is the fallback of choice because it reads each layer once per sweep for all prompts and replays an
intervention from the candidate's layer only, while an offloaded model re-reads every offloaded layer
on every forward pass of every prompt (see docs/scale.md for the measured difference). A device map
given explicitly means the user wants accelerate: ``auto`` then offloads.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.errors import SuperweightError

if TYPE_CHECKING:
    from superweight.detect.result import DetectionConfig, ScanResult

STRATEGIES = ("auto", "memory", "offload", "stream")


def available_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (None where there is no /proc)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def choose_strategy(spec: str | None, dtype: str = "float32", device_map: Any = None) -> str:
    """The strategy ``auto`` stands for, for this model on this machine now."""
    from superweight.dtypes import MODEL_DTYPES
    from superweight.model.spec import resolve_spec

    if device_map is not None:
        return "offload"
    resolved = resolve_spec(spec)
    if resolved.kind != "folder":
        return "memory"  # GGUF files, aliases and hub ids are loaded whole
    from superweight.errors import ModelNotFoundError
    from superweight.model.files import resolve_model_files

    try:
        files = resolve_model_files(spec)
    except ModelNotFoundError:
        return "memory"  # loading says what is wrong with it, as it always did
    if files.format != "safetensors":
        return "memory"
    itemsize = {"float32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 4) if dtype in MODEL_DTYPES else 4
    need = sum(s.nbytes // max(s.itemsize or 1, 1) * itemsize for s in files.spans)
    free = available_bytes()
    if free is None or need < free / 2:
        return "memory"
    from superweight.model.architectures import layerwise_classes

    classes = files.identity.get("classes") or []
    return "stream" if any(c in layerwise_classes() for c in classes) else "offload"


def scan_with_strategy(
    spec: str | None,
    strategy: str = "auto",
    prompts: list[str] | None = None,
    config: DetectionConfig | None = None,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    allow_pickle: bool = False,
    down_proj: str | None = None,
    device_map: Any = None,
    max_memory: Any = None,
    offload_folder: str | Path | None = None,
) -> ScanResult:
    """Scan ``spec`` the way ``strategy`` says; the result's ``source.placement`` says where layers lived."""
    from superweight.model.placement import parse_device_map

    if strategy not in STRATEGIES:
        raise SuperweightError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}", "strategy")
    device_map = parse_device_map(device_map)
    if strategy == "auto":
        strategy = choose_strategy(spec, dtype, device_map)
    if strategy == "stream":
        from superweight.detect.streamed import stream_scan

        if device != "cpu" or device_map is not None:
            raise SuperweightError("streaming runs on the CPU; drop the device options or scan offloaded", "strategy")
        result = stream_scan(spec, prompts, config, dtype)
        result.source["method"] = "activations (streamed)"
        return result
    return _scan_loaded(
        spec, strategy, prompts, config, dtype, device, allow_pickle, down_proj, device_map, max_memory, offload_folder
    )


def _scan_loaded(spec, strategy, prompts, config, dtype, device, allow_pickle, down_proj, device_map, max_memory,
                 offload_folder) -> ScanResult:  # fmt: skip
    from superweight.detect.detection import scan_model
    from superweight.model.loading import cache_root, load_model
    from superweight.model.placement import placement_of
    from superweight.progress import log

    temporary = None
    if strategy == "offload":
        device_map = device_map or "auto"
        if offload_folder is None:
            temporary = offload_folder = cache_root() / "offload" / str(os.getpid())
    try:
        lm = load_model(
            spec,
            dtype=dtype,
            device=device,
            allow_pickle=allow_pickle,
            down_proj=down_proj,
            device_map=device_map,
            max_memory=max_memory,
            offload_folder=offload_folder,
            resident_down_proj=strategy == "offload",
        )
        log(lm.describe())
        result = scan_model(lm, prompts, config)
        placement = placement_of(lm.model, strategy)
        log(placement.summary())
        result.source["placement"] = placement.to_dict()
        result.source["method"] = "activations"
        return result
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
