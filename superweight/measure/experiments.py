"""Ablation and scaling runs: build the conditions, measure them with cached baselines, assemble results.

The measuring itself (hidden-state reuse across conditions) is :mod:`superweight.measure.conditions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from superweight.measure.conditions import DEFAULT_BUDGET, Condition, Probe, measure_conditions

if TYPE_CHECKING:
    import torch
    from torch import nn


# --------------------------------------------------------------------------------------- runners


@dataclass
class Settings:
    """What every evaluating command shares (``--data-dir``, ``--max-tokens``, ``--limit``, ``--seq-len``)."""

    sources: tuple[str, ...] = ("wikitext2",)
    tasks: tuple[str, ...] = ()
    data_dir: str | None = None
    max_tokens: int | None = None
    seq_len: int = 2048
    split: str = "test"
    limit: int | None = None
    batch_size: int = 8
    reuse: bool = True
    budget_bytes: int = DEFAULT_BUDGET
    use_cache: bool = True

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class Measured:
    """Per condition: perplexity per source, accuracy per task, super activation; plus provenance."""

    rows: dict[str, dict[str, Any]]
    data: dict[str, Any]
    token_probs: dict[str, torch.Tensor]  # condition -> mean next-token probability (first source)
    cache_hits: list[str]
    passes: dict[str, dict[str, int]]


def _sa_probe(model: nn.Module, scan: Any) -> Probe | None:
    from superweight.model.architectures import down_projections, find_down_proj

    if not scan.super_activations:
        return None
    sa = scan.super_activations[0]
    sw = next((w for w in scan.super_weights if w.layer == sa.layer and w.row == sa.channel), None)
    sites = down_projections(model)
    if sw is not None:
        site = find_down_proj(sites, sw.module)
    else:
        site = next(s for s in sites if s.layer == sa.layer and s.expert is None)
    return Probe(site, sa.channel)


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

    def _path(self, key: dict[str, Any]) -> Any:
        import hashlib
        import json

        name = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
        return self.root / f"{name}.json"

    def get(self, key: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor | None] | None:
        import json

        path = self._path(key)
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

        path = self._path(key)
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
    lm: Any,
    conditions: Sequence[Condition],
    settings: Settings,
    *,
    probe: Probe | None = None,
    token_stats: Sequence[str] = (),
) -> Measured:
    """Every condition on every source and task; the original's numbers come from the cache when they can."""
    import math

    from superweight.measure.perplexity import PerplexityResult, load_text, tokenize_corpus
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
            log(f"baseline {source}: from the cache ({cache._path(key).name})")
        stats = measure_conditions(
            model, windows, todo, probe=probe, reuse=settings.reuse, budget_bytes=settings.budget_bytes,
            token_stats=tracked, desc=f"{source}: {len(todo)} condition(s) x window",
        )  # fmt: skip
        for c in todo:
            st = stats[c.name]
            result = PerplexityResult(
                perplexity=math.exp(st.nll) if st.nll < 700 else math.inf,
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
    lm: Any,
    conditions: Sequence[Condition],
    settings: Settings,
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


# --------------------------------------------------------------------------------------- ablate / scale

CONDITIONS = ("original", "no-sw", "no-sw+sa", "top-k", "random-k")
PROMPTS = ("Summer is hot. Winter is", "The capital of France is", "My favourite colour is")


def build_conditions(
    model: nn.Module,
    scan: Any,
    names: Sequence[str] = CONDITIONS,
    *,
    k: int = 7000,
    scope: str = "down_proj",
    seed: int = 0,
) -> list[Condition]:
    """The paper's Table 1 conditions for the super weights in ``scan`` (a ScanResult)."""
    from superweight.detect.detection import weight_refs
    from superweight.errors import SuperweightError
    from superweight.model.interventions import random_k_refs, top_k_refs

    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise SuperweightError(f"unknown condition(s) {', '.join(unknown)}; choose from {','.join(CONDITIONS)}")
    refs = weight_refs(model, scan.super_weights)
    probe = _sa_probe(model, scan)
    out = []
    for name in names:
        if name == "original":
            out.append(Condition(name))
        elif name == "no-sw":
            out.append(Condition(name, refs))
        elif name == "no-sw+sa":
            if probe is None:
                raise SuperweightError("no super activation was found to restore; drop no-sw+sa from --conditions")
            tokens = scan.super_activations[0].tokens or None
            out.append(Condition(name, refs, restores=[(probe.site, probe.channel, tokens)]))
        elif name == "top-k":
            out.append(Condition(name, top_k_refs(model, k, refs, scope)))
        else:
            out.append(Condition(name, random_k_refs(model, k, refs, scope, seed)))
    return out


def _recovery(rows: dict[str, dict[str, Any]], source: str) -> float | None:
    """Share of the loss that zeroing added which restoring the super activation takes back (in nats)."""
    try:
        orig, no_sw, restored = (rows[n]["details"][source]["nll"] for n in ("original", "no-sw", "no-sw+sa"))
    except KeyError:
        return None
    damage = no_sw - orig
    return (no_sw - restored) / damage if damage > 0 else None


def token_shift(tokenizer: Any, base: torch.Tensor, edited_probs: torch.Tensor, top: int = 15) -> list[dict]:
    """Tokens whose mean next-token probability grew most (Figure 5: mostly stopwords in the paper)."""
    import torch

    growth = edited_probs - base
    index = torch.topk(growth, top).indices.tolist()
    rows = []
    for i in index:
        p0, p1 = float(base[i]), float(edited_probs[i])
        rows.append({"token": i, "text": tokenizer.decode([i]), "p_original": p0, "p_edited": p1,
                     "ratio": p1 / p0 if p0 > 0 else None})  # fmt: skip
    return rows


def continuations(
    lm: Any, condition: Condition, prompts: Sequence[str] = PROMPTS, max_new_tokens: int = 8
) -> list[dict[str, str]]:
    """Greedy continuations of fixed prompts, with the model as loaded and under ``condition``."""
    import torch

    device = next(lm.model.parameters()).device
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = lm.tokenizer(prompt, return_tensors="pt").to(device)
            texts = []
            for cond in (None, condition):
                with cond.apply() if cond is not None else ExitStack():
                    gen = lm.model.generate(
                        **ids,
                        max_new_tokens=max_new_tokens,
                        do_sample=False,
                        pad_token_id=lm.tokenizer.pad_token_id,
                    )
                texts.append(lm.tokenizer.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
            out.append({"prompt": prompt, "original": texts[0], condition.name: texts[1]})
    return out


def _provenance(lm: Any, settings: Settings, measured: Measured, seconds: float) -> dict[str, Any]:
    return {
        "model": {"spec": lm.spec, "path": lm.path, "architecture": lm.architecture, "dtype": lm.dtype,
                  "device": lm.device, "dequantized_from": lm.dequantized_from},
        "data": measured.data,
        "settings": settings.to_dict(),
        "versions": versions(),
        "baseline_cache_hits": measured.cache_hits,
        "passes": measured.passes,
        "seconds": seconds,
    }  # fmt: skip


def run_ablation(
    lm: Any, scan: Any, settings: Settings, names: Sequence[str] = CONDITIONS, *, k: int = 7000,
    scope: str = "down_proj", seed: int = 0, shift: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Table 1 and Figures 4-5 of Yu et al.: every condition x every metric, as a JSON-ready dict."""
    import time
    from dataclasses import asdict

    from superweight.errors import SuperweightError

    if not scan.super_weights:
        raise SuperweightError(f"no super weight was found in {lm.spec}; nothing to ablate (see `superweight scan`)")
    start = time.perf_counter()
    conditions = build_conditions(lm.model, scan, names, k=k, scope=scope, seed=seed)
    tracked = [n for n in ("original", "no-sw") if n in names] if shift else []
    measured = measure(lm, conditions, settings, probe=_sa_probe(lm.model, scan), token_stats=tracked)
    first = settings.sources[0]
    payload: dict[str, Any] = {
        "model": lm.spec,
        "architecture": lm.architecture,
        "super_weights": [asdict(w) for w in scan.super_weights],
        "super_activations": [asdict(a) for a in scan.super_activations],
        "conditions": [{"name": c.name, "edited_weights": len(c.refs), **measured.rows[c.name]} for c in conditions],
        "recovery": _recovery(measured.rows, first),
        "recovery_metric": f"nll:{first}",
        "k": k,
        "scope": scope,
    }
    if len(tracked) == 2:
        no_sw = next(c for c in conditions if c.name == "no-sw")
        payload["token_shift"] = token_shift(lm.tokenizer, measured.token_probs["original"],
                                             measured.token_probs["no-sw"])  # fmt: skip
        payload["continuations"] = continuations(lm, no_sw)
    payload["provenance"] = _provenance(lm, settings, measured, time.perf_counter() - start)
    return payload


def run_scaling(
    lm: Any, scan: Any, settings: Settings, alphas: Sequence[float] = (0, 0.2, 0.5, 1, 1.5, 2, 3)
) -> dict[str, Any]:
    """Figure 6 of Yu et al.: every metric per super-weight scale factor, the best alpha and its gain."""
    import time
    from dataclasses import asdict

    from superweight.detect.detection import weight_refs
    from superweight.errors import SuperweightError

    if not scan.super_weights:
        raise SuperweightError(f"no super weight was found in {lm.spec}; nothing to scale (see `superweight scan`)")
    if 1.0 not in [float(a) for a in alphas]:
        alphas = [*alphas, 1.0]  # the baseline every gain is measured against
    start = time.perf_counter()
    refs = weight_refs(lm.model, scan.super_weights)
    conditions = [Condition(f"alpha={float(a):g}", refs, alpha=float(a)) for a in alphas]
    measured = measure(lm, conditions, settings, probe=_sa_probe(lm.model, scan))
    points = [{"alpha": float(a), **measured.rows[c.name]} for a, c in zip(alphas, conditions, strict=True)]
    points.sort(key=lambda p: p["alpha"])
    if settings.tasks and all(p["accuracy"] for p in points):
        metric, better = "accuracy:mean", max
        for p in points:
            p["value"] = sum(p["accuracy"].values()) / len(p["accuracy"])
    else:
        metric, better = f"perplexity:{settings.sources[0]}", min
        for p in points:
            p["value"] = p["perplexity"][settings.sources[0]]
    best = better(points, key=lambda p: p["value"])
    base = next(p for p in points if p["alpha"] == 1.0)
    gain = best["value"] - base["value"] if metric.startswith("accuracy") else base["value"] / best["value"] - 1
    return {
        "model": lm.spec,
        "architecture": lm.architecture,
        "super_weights": [asdict(w) for w in scan.super_weights],
        "metric": metric,
        "points": points,
        "best_alpha": best["alpha"],
        "best_value": best["value"],
        "baseline_value": base["value"],
        "gain": gain,
        "gain_meaning": "accuracy points over alpha=1" if metric.startswith("accuracy")
        else "relative perplexity reduction over alpha=1",
        "provenance": _provenance(lm, settings, measured, time.perf_counter() - start),
    }  # fmt: skip
