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
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from superweight.errors import SuperweightError
from superweight.guard.manifest import SuperWeightEntry

if TYPE_CHECKING:
    import torch

    from superweight.detect.result import ScanResult
    from superweight.guard.manifest import Manifest
    from superweight.model.interventions import WeightRef
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
            raise SuperweightError(f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}", option="kind")
        if self.target not in TARGETS:
            raise SuperweightError(f"unknown {self.target!r}; choose one of {', '.join(TARGETS)}", option="target")
        if self.bit not in BITS:
            raise SuperweightError(f"unknown bit {self.bit!r}; choose one of {', '.join(BITS)}", option="bit")
        if self.n < 1:
            raise SuperweightError(f"must be at least 1 (got {self.n})", option="n")

    @property
    def label(self) -> str:
        what = {"bitflip": f"flip {self.bit} bit", "scale": f"scale x{self.alpha:g}"}.get(self.kind, self.kind)
        return f"{what} of {self.n} {self.target} weight{'s' if self.n > 1 else ''}"


@dataclass
class AttackResult:
    attack: str
    spec: AttackSpec
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
    super_weights: list[SuperWeightEntry]
    results: list[AttackResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["super_weights"] = [e.to_dict() for e in self.super_weights]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackReport:
        from superweight.results import build

        report = build(cls, data)
        report.super_weights = [SuperWeightEntry.from_dict(e) for e in data["super_weights"]]
        report.results = [build(AttackResult, r) for r in data["results"]]
        for r in report.results:
            r.spec = build(AttackSpec, r.spec) if isinstance(r.spec, dict) else r.spec
        return report


# ------------------------------------------------------------------------------------------ targets


def select_targets(lm: LoadedModel, spec: AttackSpec, scan: ScanResult) -> list[WeightRef]:
    """The weights an attack changes: super weights, the largest other weights, or random ones
    (any decoder Linear; the interventions' selectors, which refuse more than there are)."""
    from superweight.model.interventions import random_k_refs, refs_for, top_k_refs

    protected = refs_for(lm.model, scan.super_weights)
    if spec.target == "sw":
        if not protected:
            raise SuperweightError("the scan found no super weight to attack; target the largest or random weights",
                                   option="target")  # fmt: skip
        return protected[: spec.n]
    try:
        if spec.target == "topk":
            return top_k_refs(lm.model, spec.n, exclude=protected, scope="all")
        return random_k_refs(lm.model, spec.n, exclude=protected, scope="all", seed=spec.seed)
    except SuperweightError as exc:
        raise SuperweightError(exc.message, option="n") from None


# ------------------------------------------------------------------------------------------ editing


def _bit_index(dtype: str, bit: str, gen: Any) -> int:
    if dtype not in _LAYOUT:
        raise SuperweightError(f"bit flips need a float32/bfloat16/float16 model, not {dtype}", option="dtype")
    _, total, mantissa = _LAYOUT[dtype]
    if bit == "random":
        import torch

        return int(torch.randint(total, (1,), generator=gen))
    return {"sign": total - 1, "exponent": total - 2, "mantissa": mantissa - 1}[bit]


def flip_bit(value: torch.Tensor, bit: int) -> torch.Tensor:
    """``value`` (a float scalar) with bit ``bit`` of its IEEE layout flipped."""
    import torch

    dtype = str(value.dtype).removeprefix("torch.")
    ints = value.clone().view(getattr(torch, _LAYOUT[dtype][0]))
    nbits = _LAYOUT[dtype][1]
    mask = (1 << bit) - (1 << nbits if bit == nbits - 1 else 0)  # as a signed integer
    return (ints ^ mask).view(value.dtype)


def attacked(refs: list[WeightRef], spec: AttackSpec):
    """``with attacked(refs, spec):`` the attack is applied inside the block, undone bit-exactly on exit."""
    import torch

    from superweight.model.interventions import edited

    gen = torch.Generator().manual_seed(spec.seed + 1)

    def edit(w: torch.Tensor) -> torch.Tensor:
        if spec.kind == "zero":
            return torch.zeros_like(w)
        if spec.kind == "sign":
            return -w
        if spec.kind == "scale":
            return w * spec.alpha
        return flip_bit(w, _bit_index(str(w.dtype).removeprefix("torch."), spec.bit, gen))

    return edited(refs, edit)


def _bits(value: torch.Tensor) -> bytes:
    import torch

    return value.detach().reshape(1).view(torch.uint8).cpu().numpy().tobytes()


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
    manifest: Manifest | None = None,
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
    from superweight.guard.fingerprint import fingerprint_memory
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
    report = AttackReport(lm.spec, int(windows.ids.numel()), clean, clean_text, list(manifest.super_weights))
    for spec in attacks:
        start = time.perf_counter()
        targets = select_targets(lm, spec, scan)
        saved = [_bits(ref.get()) for ref in targets]
        log(f"attack: {spec.label}")
        with attacked(targets, spec):
            ppl = _perplexity(lm, windows)
            texts = [greedy(lm, p, new_tokens) for p in prompts]
            verdict = verify_memory(lm, manifest, checks)
        caught = {k: v == "FAIL" for k, v in verdict.checks.items()}
        report.results.append(AttackResult(
            spec.label, spec, len(targets), ppl, ppl / clean if clean else math.nan, texts,
            texts != clean_text, caught, [_bits(r.get()) for r in targets] == saved, time.perf_counter() - start,
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
