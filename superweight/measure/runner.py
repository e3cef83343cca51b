"""Measure model conditions on every source and task, reusing the original model's cached baseline.

The conditions themselves (and hidden-state reuse across them) are :mod:`superweight.measure.conditions`;
this module runs them over the settings' sources and tasks, caches what the unedited model scored (keyed
by its weights' digest, the data's hash, the settings and the library versions) and records provenance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from superweight.measure.conditions import Condition, Probe, measure_conditions
from superweight.measure.settings import EvalSettings

if TYPE_CHECKING:
    import torch
    from torch import nn

    from superweight.model.loading import LoadedModel


@dataclass
class Measured:
    """Per condition: perplexity per source, accuracy per task, super activation; plus provenance."""

    rows: dict[str, dict[str, Any]]
    data: dict[str, Any]
    token_probs: dict[str, torch.Tensor]  # condition -> mean next-token probability (first source)
    cache_hits: list[str]
    passes: dict[str, dict[str, int]]


def model_digest(model: nn.Module) -> str:
    """sha256 over every parameter's bytes: a cached baseline is only ever reused for these exact weights."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        data = param.detach().cpu().contiguous()
        if data.dtype in (torch.bfloat16, torch.float16):
            data = data.view(torch.int16)
        digest.update(f"{name}:{tuple(data.shape)}:{param.dtype}".encode())
        digest.update(memoryview(data.numpy()).cast("B"))
    return digest.hexdigest()


class BaselineCache:
    """The original model's results, per model weights + data + settings, under ``~/.cache/superweight``."""

    def __init__(self, enabled: bool = True) -> None:
        from superweight.model.loading import cache_root

        self.enabled = enabled
        self.root = cache_root() / "baselines"

    def path(self, key: dict[str, Any]) -> Any:
        import hashlib
        import json

        name = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
        return self.root / f"{name}.json"

    def get(self, key: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor | None] | None:
        import json

        path = self.path(key)
        if not self.enabled or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            probs = None
            if entry.get("probs"):
                from safetensors.torch import load_file

                probs = load_file(str(path.with_suffix(".safetensors")))["probs"]
        except (OSError, ValueError, KeyError):
            return None  # a damaged cache entry is a miss, never an error
        return entry["value"], probs

    def put(self, key: dict[str, Any], value: dict[str, Any], probs: torch.Tensor | None = None) -> None:
        if not self.enabled:
            return
        from superweight.io import atomic_write, write_json

        path = self.path(key)
        try:
            if probs is not None:
                from safetensors.torch import save_file

                atomic_write(path.with_suffix(".safetensors"), lambda p: save_file({"probs": probs}, str(p)))
            write_json(path, {"key": key, "value": value, "probs": probs is not None})
        except OSError:
            pass  # a cache we cannot write is only slower


def versions() -> dict[str, str]:
    import platform
    import sys
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("superweight", "torch", "transformers", "lm_eval", "datasets"):
        try:
            out[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            if name in sys.modules:
                out[name] = str(getattr(sys.modules[name], "__version__", "?"))
    return out


def measure(
    lm: LoadedModel,
    conditions: Sequence[Condition],
    settings: EvalSettings,
    *,
    probe: Probe | None = None,
    token_stats: Sequence[str] = (),
) -> Measured:
    """Every condition on every source and task; the original's numbers come from the cache when they can."""
    from superweight.measure.corpus import load_text, tokenize_corpus
    from superweight.measure.perplexity import PerplexityResult, perplexity_of
    from superweight.progress import log

    model = lm.model
    cache = BaselineCache(settings.use_cache)
    digest = model_digest(model) if settings.use_cache else ""
    base_key = {"weights": digest, "dtype": lm.dtype, "device": lm.device, "versions": versions()}
    probe_key = None if probe is None else [probe.site.label, probe.channel]
    rows: dict[str, dict[str, Any]] = {c.name: {"perplexity": {}, "accuracy": {}, "details": {}} for c in conditions}
    data: dict[str, Any] = {}
    token_probs: dict[str, torch.Tensor] = {}
    hits: list[str] = []
    passes: dict[str, dict[str, int]] = {}
    for n, source in enumerate(settings.sources):
        windows = tokenize_corpus(
            lm.tokenizer,
            load_text(source, settings.data_dir, settings.split),
            seq_len=settings.seq_len,
            max_tokens=settings.max_tokens,
            model=model,
        )
        data[source] = windows.describe()
        tracked = list(token_stats) if n == 0 else []
        key = {**base_key, "kind": "perplexity", "data": windows.describe(), "probe": probe_key}
        todo = list(conditions)
        original = next((c for c in conditions if c.is_original), None)
        cached = cache.get(key) if original is not None else None
        if cached is not None and (original.name not in tracked or cached[1] is not None):
            value, probs = cached
            rows[original.name]["perplexity"][source] = value["perplexity"]["perplexity"]
            rows[original.name]["details"][source] = value["perplexity"]
            rows[original.name]["super_activation"] = value["super_activation"]
            if probs is not None and original.name in tracked:
                token_probs[original.name] = probs
            todo = [c for c in conditions if c is not original]
            hits.append(f"perplexity:{source}")
            log(f"baseline {source}: from the cache ({cache.path(key).name})")
        stats = measure_conditions(
            model, windows, todo, probe=probe, reuse=settings.reuse, budget_bytes=settings.budget_bytes,
            token_stats=tracked, desc=f"{source}: {len(todo)} condition(s) x window",
        )  # fmt: skip
        for c in todo:
            st = stats[c.name]
            result = PerplexityResult(
                perplexity=perplexity_of(st.nll),
                nll=st.nll,
                tokens=st.count,
                windows=windows.windows,
                seq_len=windows.seq_len,
                source=source,
                sha256=windows.sha256,
                seconds=st.seconds,
                split=windows.split,
            )
            rows[c.name]["perplexity"][source] = result.perplexity
            rows[c.name]["details"][source] = result.to_dict()
            if n == 0 or "super_activation" not in rows[c.name]:
                rows[c.name]["super_activation"] = st.super_activation
            if st.prob_sum is not None:
                token_probs[c.name] = st.prob_sum / st.count
            passes[f"{c.name}:{source}"] = {"full": st.full_passes, "reused": st.reused_passes}
            if c is original:
                value = {"perplexity": result.to_dict(), "super_activation": st.super_activation}
                cache.put(key, value, token_probs.get(c.name))
    if settings.tasks:
        _measure_tasks(lm, conditions, settings, cache, base_key, rows, data, hits)
    return Measured(rows, data, token_probs, hits, passes)


def _measure_tasks(
    lm: LoadedModel,
    conditions: Sequence[Condition],
    settings: EvalSettings,
    cache: BaselineCache,
    base_key: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    data: dict[str, Any],
    hits: list[str],
) -> None:
    from superweight.measure.zeroshot import TaskSuite

    with TaskSuite(
        lm.model, lm.tokenizer, settings.tasks, data_dir=settings.data_dir, batch_size=settings.batch_size
    ) as suite:
        for task, result in suite.skipped.items():
            data[task] = {"skipped": result.skipped}
        for task, (kind, _, paths) in suite.runnable.items():
            data[task] = {
                "source": kind,
                "path": str(paths[0]) if paths else "hub",
                "sha256": suite.hashes[task],
            }
        key = {
            **base_key,
            "kind": "accuracy",
            "tasks": {t: data[t] for t in suite.runnable},
            "limit": settings.limit,
        }
        for c in conditions:
            cached = cache.get(key) if c.is_original else None
            if cached is not None:
                results = cached[0]
                hits.append("accuracy")
            else:
                with c.apply():
                    results = {t: r.to_dict() for t, r in suite.evaluate(settings.limit, desc=c.name).items()}
                if c.is_original:
                    cache.put(key, results)
            for task, r in results.items():
                if r.get("skipped") is None:
                    rows[c.name]["accuracy"][task] = r["accuracy"]
                    rows[c.name]["details"][task] = r


@dataclass
class Provenance:
    """Where a measurement's numbers come from: model, data hashes, settings, versions, cache, time."""

    model: dict[str, Any]
    data: dict[str, Any]
    settings: dict[str, Any]
    versions: dict[str, str]
    baseline_cache_hits: list[str]
    passes: dict[str, dict[str, int]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        from superweight.results import build

        return build(cls, data)


def provenance(lm: LoadedModel, settings: EvalSettings, measured: Measured, seconds: float) -> Provenance:
    model = {"spec": lm.spec, "path": lm.path, "architecture": lm.architecture, "dtype": lm.dtype,
             "device": lm.device, "dequantized_from": lm.dequantized_from}  # fmt: skip
    return Provenance(model, measured.data, settings.to_dict(), versions(), measured.cache_hits, measured.passes,
                      seconds)  # fmt: skip
