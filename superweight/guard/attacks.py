"""Red-team simulation in memory: change N weights, measure the damage, ask which check catches it.

The seed's warning made concrete: one flipped exponent bit in a super weight against thousands of
random flips elsewhere. Every attack edits raw parameter elements of the loaded model (files are never
touched), measures perplexity on a capped WikiText-2 slice and a greedy continuation of fixed prompts,
runs the three checks of :mod:`superweight.guard.verify` against a manifest of the clean model, and
restores every element bit-exactly (checked) before the next attack.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from superweight.errors import SuperweightError

if TYPE_CHECKING:
    import torch

    from superweight.detect.result import ScanResult
    from superweight.model.loading import LoadedModel

KINDS = ("zero", "sign", "bitflip", "scale")
TARGETS = ("sw", "topk", "random")
BITS = ("sign", "exponent", "mantissa", "random")
PROMPTS = ("The capital of France is", "Once upon a time, there was a")

# float dtype -> (integer view, total bits, mantissa bits)
_LAYOUT = {"float32": ("int32", 32, 23), "bfloat16": ("int16", 16, 7), "float16": ("int16", 16, 10)}


@dataclass
class AttackSpec:
    kind: str  # zero | sign | bitflip | scale
    target: str  # sw (the super weights) | topk (largest |w| elsewhere) | random (anywhere in the decoder)
    n: int = 1
    bit: str = "exponent"  # for bitflip: sign | exponent (MSB) | mantissa (MSB) | random
    alpha: float = 100.0  # for scale
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SuperweightError(f"unknown attack kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.target not in TARGETS:
            raise SuperweightError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if self.bit not in BITS:
            raise SuperweightError(f"unknown bit {self.bit!r}; choose one of {', '.join(BITS)}")
        if self.n < 1:
            raise SuperweightError(f"--n must be at least 1 (got {self.n})")

    @property
    def label(self) -> str:
        what = {"bitflip": f"flip {self.bit} bit", "scale": f"scale x{self.alpha:g}"}.get(self.kind, self.kind)
        return f"{what} of {self.n} {self.target} weight{'s' if self.n > 1 else ''}"


@dataclass(frozen=True)
class Target:
    param: str  # raw parameter name
    flat: int  # element index in the flattened parameter


@dataclass
class AttackResult:
    attack: str
    spec: dict[str, Any]
    n_changed: int
    perplexity: float
    ratio: float  # perplexity / clean perplexity
    continuations: list[str]
    continuation_changed: bool
    caught: dict[str, bool]  # check -> whether it failed (caught the attack)
    restored: bool  # every edited element is bit-exact again
    seconds: float


@dataclass
class AttackReport:
    model: str
    eval_tokens: int
    clean_perplexity: float
    clean_continuations: list[str]
    super_weights: list[dict[str, Any]]
    results: list[AttackResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ targets


def _sw_targets(lm: LoadedModel, scan: ScanResult) -> list[Target]:
    import numpy as np

    from superweight.model.architectures import down_projections, find_down_proj

    sites = down_projections(lm.model)
    out = []
    for sw in scan.super_weights:
        site = find_down_proj(sites, sw.module)
        idx = site.raw_index(sw.row, sw.col)
        out.append(Target(site.param_name, int(np.ravel_multi_index(idx, tuple(site.parameter.shape)))))
    return out


def select_targets(lm: LoadedModel, spec: AttackSpec, scan: ScanResult) -> list[Target]:
    """The elements an attack changes: super weights, the largest other weights, or random ones."""
    import torch

    from superweight.model.architectures import linear_layers

    protected = set(_sw_targets(lm, scan))
    if spec.target == "sw":
        if not protected:
            raise SuperweightError("the scan found no super weight to attack; use --target topk or random")
        return sorted(protected, key=lambda t: (t.param, t.flat))[: spec.n]
    params = [(f"{name}.weight", m.weight) for name, m in linear_layers(lm.model)]
    if spec.target == "topk":
        cands: list[tuple[float, Target]] = []
        for name, w in params:
            k = min(spec.n + len(protected), w.numel())
            values, idx = torch.topk(w.detach().abs().reshape(-1).float(), k)
            cands += [(float(v), Target(name, int(i))) for v, i in zip(values, idx, strict=True)]
        cands.sort(key=lambda c: -c[0])
        return [t for _, t in cands if t not in protected][: spec.n]
    sizes = torch.tensor([w.numel() for _, w in params])
    ends = torch.cumsum(sizes, 0)
    gen = torch.Generator().manual_seed(spec.seed)
    chosen: dict[Target, None] = {}
    while len(chosen) < spec.n:
        for g in torch.randint(int(ends[-1]), (spec.n,), generator=gen).tolist():
            i = int(torch.searchsorted(ends, g, right=True))
            t = Target(params[i][0], g - int(ends[i] - sizes[i]))
            if t not in protected:
                chosen.setdefault(t)
    return list(chosen)[: spec.n]


# ------------------------------------------------------------------------------------------ editing


def _bit_index(dtype: str, bit: str, gen: Any) -> int:
    if dtype not in _LAYOUT:
        raise SuperweightError(f"bit flips need a float32/bfloat16/float16 model, not {dtype}")
    _, total, mantissa = _LAYOUT[dtype]
    if bit == "random":
        import torch

        return int(torch.randint(total, (1,), generator=gen))
    return {"sign": total - 1, "exponent": total - 2, "mantissa": mantissa - 1}[bit]


@contextmanager
def attacked(lm: LoadedModel, targets: list[Target], spec: AttackSpec) -> Iterator[list[Target]]:
    """Apply ``spec`` to ``targets`` inside the block; restore every element bit-exactly on exit."""
    import torch

    params = dict(lm.model.named_parameters())
    flats = [params[t.param].data.view(-1) for t in targets]
    saved = [f[t.flat].clone() for f, t in zip(flats, targets, strict=True)]
    gen = torch.Generator().manual_seed(spec.seed + 1)
    try:
        with torch.no_grad():
            for f, t in zip(flats, targets, strict=True):
                if spec.kind == "zero":
                    f[t.flat] = 0
                elif spec.kind == "sign":
                    f[t.flat] = -f[t.flat]
                elif spec.kind == "scale":
                    f[t.flat] = f[t.flat] * spec.alpha
                else:
                    dtype = str(f.dtype).removeprefix("torch.")
                    b = _bit_index(dtype, spec.bit, gen)
                    ints = f.view(getattr(torch, _LAYOUT[dtype][0]))
                    nbits = _LAYOUT[dtype][1]
                    mask = (1 << b) - (1 << nbits if b == nbits - 1 else 0)  # as a signed integer
                    ints[t.flat] = ints[t.flat] ^ mask
        yield targets
    finally:
        with torch.no_grad():
            for f, t, v in reversed(list(zip(flats, targets, saved, strict=True))):
                f[t.flat] = v


def _restored(lm: LoadedModel, targets: list[Target], saved: list[torch.Tensor]) -> bool:
    import torch

    params = dict(lm.model.named_parameters())
    for t, v in zip(targets, saved, strict=True):
        now = params[t.param].data.view(-1)[t.flat]
        if not torch.equal(now.view(-1).view(torch.uint8), v.view(-1).view(torch.uint8)):
            return False
    return True


# ------------------------------------------------------------------------------------------ damage


def greedy(lm: LoadedModel, prompt: str, new_tokens: int) -> str:
    """Greedy continuation without generate()'s checks (a broken model may emit NaN logits)."""
    import torch

    device = next(lm.model.parameters()).device
    ids = lm.tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    start = ids.shape[1]
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = lm.model(input_ids=ids, use_cache=False).logits[0, -1].float()
            logits = torch.nan_to_num(logits, nan=-math.inf)
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    return lm.tokenizer.decode(ids[0, start:], skip_special_tokens=True)


def _eval_ids(lm: LoadedModel, max_tokens: int, seq_len: int, data_dir: str | None) -> Any:
    from superweight.measure.corpus import load_text, tokenize_corpus

    corpus = load_text("wikitext2", data_dir=data_dir, split="test")
    return tokenize_corpus(lm.tokenizer, corpus, seq_len=seq_len, max_tokens=max_tokens, model=lm.model)


def _perplexity(lm: LoadedModel, windows: Any) -> float:
    from superweight.measure.perplexity import perplexity_on_ids

    ppl = perplexity_on_ids(lm.model, windows, desc="perplexity").perplexity
    return ppl if math.isfinite(ppl) else math.inf


def simulate_attacks(
    lm: LoadedModel,
    attacks: list[AttackSpec],
    *,
    scan: ScanResult | None = None,
    manifest: dict[str, Any] | None = None,
    max_tokens: int = 2048,
    seq_len: int = 512,
    new_tokens: int = 12,
    prompts: tuple[str, ...] = PROMPTS,
    data_dir: str | None = None,
    checks: tuple[str, ...] = ("hash", "fast", "canary"),
) -> AttackReport:
    """Run each attack in memory and report damage and which checks catch it.

    Example:
        >>> lm = load_model("smollm2-135m")
        >>> report = simulate_attacks(lm, [AttackSpec("bitflip", "sw", 1, bit="exponent")])
    """
    from superweight.guard.manifest import fingerprint_memory
    from superweight.guard.verify import verify_memory
    from superweight.progress import log, step

    if scan is None:
        from superweight.detect.detection import find_super_weights

        with step("finding super weights"):
            scan = find_super_weights(lm.model, lm.tokenizer, model_name=lm.spec)
    if manifest is None:
        with step("fingerprinting the clean model in memory"):
            manifest = fingerprint_memory(lm, scan)
    windows = _eval_ids(lm, max_tokens, seq_len, data_dir)
    clean = _perplexity(lm, windows)
    clean_text = [greedy(lm, p, new_tokens) for p in prompts]
    report = AttackReport(lm.spec, int(windows.ids.numel()), clean, clean_text, manifest["super_weights"])
    for spec in attacks:
        start = time.perf_counter()
        targets = select_targets(lm, spec, scan)
        params = dict(lm.model.named_parameters())
        saved = [params[t.param].data.view(-1)[t.flat].clone() for t in targets]
        log(f"attack: {spec.label}")
        with attacked(lm, targets, spec):
            ppl = _perplexity(lm, windows)
            texts = [greedy(lm, p, new_tokens) for p in prompts]
            verdict = verify_memory(lm, manifest, checks)
        caught = {k: v == "FAIL" for k, v in verdict.checks.items()}
        report.results.append(AttackResult(
            spec.label, asdict(spec), len(targets), ppl, ppl / clean if clean else math.nan, texts,
            texts != clean_text, caught, _restored(lm, targets, saved), time.perf_counter() - start,
        ))  # fmt: skip
    return report


def contrast_attacks(seed: int = 0, random_n: int = 5000) -> list[AttackSpec]:
    """The seed's contrast: one flipped super weight vs thousands of random flips (and their neighbours)."""
    return [
        AttackSpec("bitflip", "sw", 1, bit="exponent", seed=seed),
        AttackSpec("bitflip", "sw", 1, bit="sign", seed=seed),
        AttackSpec("zero", "sw", 1, seed=seed),
        AttackSpec("bitflip", "random", 1, bit="mantissa", seed=seed),
        AttackSpec("bitflip", "random", 1, bit="sign", seed=seed),
        AttackSpec("bitflip", "random", random_n, bit="sign", seed=seed),
        AttackSpec("bitflip", "random", random_n, bit="mantissa", seed=seed),
        AttackSpec("zero", "topk", 1, seed=seed),
        AttackSpec("bitflip", "random", 1, bit="exponent", seed=seed),
    ]
