"""Guard a model while it trains: check its super weights and super activation every N steps.

A fine-tuning run can wreck a super weight in one bad step (a learning-rate spike, a corrupted
gradient, a buggy optimizer) and the loss may not show it until much later. Every ``every`` steps,
and before each checkpoint is saved, the guard reads the super weights (for a LoRA model: the merged
value) and the canary (the down-projection output at the super activation's channel on one fixed
prompt, a forward pass cut short after that layer) and compares them with the reference.

Policies: ``warn`` logs the failure (stderr and the run's JSONL log); ``stop`` also ends training
with the reason (``Trainer``: ``control.should_training_stop``, and the damaged checkpoint is not
saved; a plain loop reads ``guard.should_stop``); ``protect`` masks the super weights' gradients
(tensor hooks) and puts their exact values back after every optimizer step, so they stay bit-exact.
With LoRA, ``protect`` freezes the adapter row ``B[row, :]`` and column ``A[:, col]`` that feed each
super weight's merged value.

Example (plain PyTorch)::

    guard = attach(model, scan, tokenizer=tok, every=10, policy="stop", log="run/guard.jsonl")
    for batch in data:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        guard.step()
        if guard.should_stop:
            break
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from superweight.errors import SuperweightError
from superweight.guard.canary import CANARY_PROMPT
from superweight.guard.journal import append_record
from superweight.guard.reference import Reference, as_reference, base_model, canary_site, locate

if TYPE_CHECKING:
    import torch
    from torch import nn

POLICIES = ("warn", "stop", "protect")


@dataclass(frozen=True)
class GuardTolerance:
    """How far a super weight and the canary may move before a check fails (ordinary fine-tuning
    moves them by far less than a percent; a wrecked super weight moves them by most of their size)."""

    weight_rel: float = 0.1
    activation_rel: float = 0.25

    def __post_init__(self) -> None:
        for name in ("weight_rel", "activation_rel"):
            if not getattr(self, name) > 0:
                raise SuperweightError(f"must be > 0 (got {getattr(self, name)})", option=name)


@dataclass
class WeightReading:
    layer: int
    module: str
    row: int
    col: int
    reference: float
    current: float
    change: float  # |current - reference| / |reference|
    bit_exact: bool
    ok: bool


@dataclass
class GuardCheck:
    """One check of a model in training against its reference."""

    step: int
    event: str  # "attach", "step" or "save"
    ok: bool
    policy: str
    weights: list[WeightReading]
    activation_reference: float | None
    activation_current: float | None
    activation_change: float | None
    reasons: list[str] = field(default_factory=list)
    action: str = "none"  # "none", "warned", "stopped"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuardCheck:
        weights = [WeightReading(**w) for w in data.get("weights", [])]
        names = {k for k in cls.__dataclass_fields__ if k != "weights"}
        return cls(weights=weights, **{k: v for k, v in data.items() if k in names})


def _relative(current: float, reference: float) -> float:
    if not math.isfinite(current):
        return math.inf
    return abs(current - reference) / max(abs(reference), 1e-12)


class _CanaryDone(Exception):
    """Raised by the canary hook once the super activation is read: the rest of the pass is skipped."""


class TrainingGuard:
    """The hook object :func:`attach` returns; :class:`SuperWeightCallback` drives one for ``Trainer``."""

    def __init__(
        self,
        model: nn.Module,
        reference: Any,
        *,
        tokenizer: Any = None,
        every: int = 50,
        policy: str = "warn",
        log: str | Path | None = None,
        tolerance: GuardTolerance | None = None,
        prompt: str = CANARY_PROMPT,
    ) -> None:
        if policy not in POLICIES:
            raise SuperweightError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}", option="policy")
        if every < 1:
            raise SuperweightError(f"must be at least 1 (got {every})", option="every")
        self.model, self.policy, self.every = model, policy, every
        self.log_path = Path(log) if log is not None else None
        self.tolerance = tolerance or GuardTolerance()
        self.reference: Reference = as_reference(reference, model)
        if not self.reference.weights:
            raise SuperweightError("the reference holds no super weights to guard", option="reference")
        self.weights = locate(model, self.reference)
        self.site = canary_site(model, self.reference)
        self.prompt_ids = None
        if tokenizer is not None and self.site is not None:
            self.prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        self.steps = 0
        self.checks: list[GuardCheck] = []
        self.should_stop = False
        self.reason = ""
        self._handles: list[Any] = []
        self._saved: list[tuple[torch.nn.Parameter, tuple[Any, ...], torch.Tensor]] = []
        import torch

        self.expected = [
            w.value() if w.spec.value is None else torch.tensor(w.spec.value, dtype=w.parameter.dtype)
            for w in self.weights
        ]
        self.token, self.activation_reference = self._canary_reading(None)
        if policy == "protect":
            self._protect()
        self.check(step=0, event="attach")

    # ------------------------------------------------------------------------------ reading

    def _canary_reading(self, token: int | None) -> tuple[int | None, float | None]:
        """(token, signed down-proj output at the canary channel): at ``token``, or at its largest."""
        if self.prompt_ids is None or self.site is None:
            return None, None
        import torch

        channel = self.reference.canary_channel
        module = self.site.output_module or self.site.module
        seen: dict[str, torch.Tensor] = {}

        def hook(mod: Any, inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            seen["y"] = out.detach()[0, :, channel].float()
            raise _CanaryDone

        net = base_model(self.model)
        was_training = net.training
        handle = module.register_forward_hook(hook)
        try:
            net.eval()
            with torch.no_grad():
                net(input_ids=self.prompt_ids.to(self.weights[0].parameter.device), use_cache=False)
        except _CanaryDone:
            pass
        finally:
            handle.remove()
            net.train(was_training)
        y = seen["y"]
        if token is None:
            token = int(y.abs().argmax())
        return token, float(y[token])

    def check(self, step: int | None = None, event: str = "step") -> GuardCheck:
        """Compare the model now with the reference; log it and apply the policy when it fails."""
        start = time.perf_counter()
        step = self.steps if step is None else step
        readings, reasons = [], []
        for live, expected in zip(self.weights, self.expected, strict=True):
            current = live.value()
            cur, ref = float(current), float(expected)
            change = _relative(cur, ref)
            ok = change <= self.tolerance.weight_rel
            s = live.spec
            readings.append(WeightReading(s.layer, s.module, s.row, s.col, ref, cur, change,
                                          bool(current.to(expected.dtype).equal(expected)), ok))  # fmt: skip
            if not ok:
                reasons.append(f"super weight {s.module}[{s.row}, {s.col}] moved {ref:.4g} -> {cur:.4g}")
        act_cur = act_change = None
        if self.activation_reference is not None:
            _, act_cur = self._canary_reading(self.token)
            act_change = _relative(act_cur, self.activation_reference)
            if act_change > self.tolerance.activation_rel:
                reasons.append(
                    f"super activation (layer {self.reference.canary_layer}, channel "
                    f"{self.reference.canary_channel}) moved {self.activation_reference:.4g} -> {act_cur:.4g}"
                )
        result = GuardCheck(step, event, not reasons, self.policy, readings, self.activation_reference, act_cur,
                            act_change, reasons, seconds=time.perf_counter() - start)  # fmt: skip
        self._apply(result)
        self.checks.append(result)
        return result

    def _apply(self, result: GuardCheck) -> None:
        from superweight.progress import log, warn

        if result.ok:
            log(f"superweight guard: step {result.step}: super weights intact")
        else:
            why = "; ".join(result.reasons)
            if self.policy == "stop":
                result.action = "stopped"
                self.should_stop = True
                self.reason = f"step {result.step}: {why}"
                warn(f"superweight guard: stopping training at step {result.step}: {why}")
            else:
                result.action = "warned"
                warn(f"superweight guard: step {result.step}: {why}")
        if self.log_path is not None:
            append_record(self.log_path, {"record": "training_check", **result.to_dict()})

    # ------------------------------------------------------------------------------ protect

    def _protect(self) -> None:
        """Mask the protected elements' gradients and remember their values, to put back after a step."""
        by_param: dict[int, tuple[torch.nn.Parameter, list[tuple[Any, ...]]]] = {}
        for live in self.weights:
            for param, index in live.protected():
                self._saved.append((param, index, param.data[index].clone()))
                by_param.setdefault(id(param), (param, []))[1].append(index)
        for param, indices in by_param.values():
            if param.requires_grad:
                self._handles.append(param.register_hook(_masking(indices)))

    def restore(self) -> None:
        """Put the protected values back (after an optimizer step); a no-op unless ``protect``."""
        if not self._saved:
            return
        import torch

        with torch.no_grad():
            for param, index, value in self._saved:
                param.data[index] = value

    # ------------------------------------------------------------------------------ plain loop

    def step(self) -> GuardCheck | None:
        """Call after each ``optimizer.step()``: restores (protect) and checks every ``every`` steps."""
        self.steps += 1
        self.restore()
        if self.steps % self.every == 0:
            return self.check(self.steps)
        return None

    def detach(self) -> None:
        """Remove the gradient hooks (the model is left as it is)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> TrainingGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


def _masking(indices: list[tuple[Any, ...]]):
    def mask(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        for index in indices:
            grad[index] = 0
        return grad

    return mask


def attach(model: nn.Module, reference: Any, **options: Any) -> TrainingGuard:
    """Guard ``model`` against ``reference`` (a ScanResult, a manifest or its path) in any training loop.

    Options: ``tokenizer`` (for the canary; without it only the weights are checked), ``every``,
    ``policy`` ("warn", "stop", "protect"), ``log`` (a JSONL file), ``tolerance``, ``prompt``.
    """
    return TrainingGuard(model, reference, **options)


class SuperWeightCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` that runs a :class:`TrainingGuard` inside ``Trainer``.

    Example:
        >>> trainer = Trainer(model, args, train_dataset=data, processing_class=tok,
        ...                   callbacks=[SuperWeightCallback(scan, every=50, policy="stop")])
    """

    def __init__(self, reference: Any, *, every: int = 50, policy: str = "warn", **options: Any) -> None:
        self.reference, self.every, self.policy, self.options = reference, every, policy, options
        self.guard: TrainingGuard | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        options = dict(self.options)
        options.setdefault("tokenizer", kwargs.get("processing_class"))
        self.guard = TrainingGuard(model, self.reference, every=self.every, policy=self.policy, **options)
        if self.guard.should_stop:
            control.should_training_stop = True

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.guard is not None:
            self.guard.restore()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        guard = self.guard
        if guard is None or not (state.global_step % self.every == 0 or control.should_save):
            return
        guard.steps = state.global_step
        guard.check(state.global_step, "save" if control.should_save else "step")
        if guard.should_stop:
            control.should_training_stop = True
            control.should_save = False  # never write a checkpoint with a damaged super weight

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.guard is not None:
            self.guard.detach()

    @property
    def should_stop(self) -> bool:
        return self.guard is not None and self.guard.should_stop

    @property
    def reason(self) -> str:
        return self.guard.reason if self.guard is not None else ""
