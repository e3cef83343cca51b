"""Weight edits that are always undone: every context manager here restores bit-exactly on exit.

A coordinate is a :class:`WeightRef`: a down-projection (or any Linear) plus ``(row, col)`` in the
``torch.nn.Linear`` convention. Originals are saved as cloned scalars before any write, and put back
in ``finally``, so an exception inside the block (or a nested context) cannot leave a model damaged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from superweight.model.architectures import DownProj


@dataclass(frozen=True)
class WeightRef:
    """One scalar weight: ``site.weight[row, col]``."""

    site: DownProj
    row: int
    col: int

    def get(self) -> torch.Tensor:
        return self.site.weight[self.row, self.col]


class Coordinate(Protocol):
    """Anything that names a weight the way results do: ``module`` (``name[e]`` for an expert), row, col."""

    module: str
    row: int
    col: int


def refs_for(model: torch.nn.Module, coordinates: Iterable[Coordinate]) -> list[WeightRef]:
    """Turn reported coordinates (super weights from a scan, a manifest, an atlas) into references."""
    from superweight.model.architectures import down_projections, find_down_proj

    sites = down_projections(model)
    return [WeightRef(find_down_proj(sites, c.module), c.row, c.col) for c in coordinates]


@contextmanager
def edited(refs: Iterable[WeightRef], edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[list[WeightRef]]:
    """Replace each referenced weight ``w`` by ``edit(w)`` inside the block; restore on exit.

    A weight accelerate has offloaded (its parameter is on ``meta`` between forward passes) is edited
    where it is used: a hook runs after accelerate has moved the weights in and swaps in an edited
    copy for that forward pass. The stored copy (which may be the user's own safetensors file) is
    never written, so nothing can be left edited there (see :func:`is_offloaded`).
    """
    import torch

    refs = list(refs)
    offloaded = [ref for ref in refs if is_offloaded(ref.site)]
    resident = [ref for ref in refs if not is_offloaded(ref.site)]
    saved = [ref.get().clone() for ref in resident]
    pushed: list[tuple[Any, list]] = []
    try:
        with torch.no_grad():
            for ref, original in zip(resident, saved, strict=True):
                ref.site.weight[ref.row, ref.col] = edit(original)
        pushed = _push_offloaded(offloaded, edit)
        yield refs
    finally:
        for hook, layer in pushed:
            hook.stack.remove(layer)
        with torch.no_grad():
            # reversed: if a coordinate is listed twice, the first saved (true) original wins
            for ref, original in reversed(list(zip(resident, saved, strict=True))):
                ref.site.weight[ref.row, ref.col] = original


def is_offloaded(site: DownProj) -> bool:
    """Whether accelerate keeps this weight elsewhere (CPU or disk) and moves it in per forward pass."""
    return site.parameter.device.type == "meta"


_EDIT_HOOKS: Any = None  # WeakKeyDictionary: module -> its edit hook, attached once and inert when empty


def _edit_hook(module: torch.nn.Module) -> Any:
    """The one edit hook of ``module``, appended after accelerate's own (public ``add_hook_to_module``)."""
    global _EDIT_HOOKS
    import weakref

    from accelerate.hooks import ModelHook, add_hook_to_module

    if _EDIT_HOOKS is None:
        _EDIT_HOOKS = weakref.WeakKeyDictionary()
    if module in _EDIT_HOOKS:
        return _EDIT_HOOKS[module]

    class EditOnload(ModelHook):
        """Swaps in an edited copy of the weights accelerate just moved in; they go back to meta after."""

        def __init__(self) -> None:
            self.stack: list[list[tuple[DownProj, int, int, Callable]]] = []

        def pre_forward(self, module: Any, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
            import torch

            if not self.stack:
                return args, kwargs
            with torch.no_grad():
                copies: set[str] = set()
                for layer in self.stack:  # in nesting order: an inner edit sees the outer one's value
                    for site, _, _, _ in layer:
                        name = "down_proj" if site.expert is not None else "weight"
                        if name not in copies:
                            current = getattr(module, name)
                            setattr(module, name, torch.nn.Parameter(current.detach().clone(), requires_grad=False))
                            copies.add(name)
                    values = [site.weight[row, col].clone() for site, row, col, _ in layer]
                    for (site, row, col, fn), value in zip(layer, values, strict=True):
                        site.weight[row, col] = fn(value)
            return args, kwargs

    hook = EditOnload()
    add_hook_to_module(module, hook, append=True)
    _EDIT_HOOKS[module] = hook
    return hook


def _push_offloaded(refs: list[WeightRef], edit: Callable) -> list[tuple[Any, list]]:
    by_module: dict[int, tuple[torch.nn.Module, list]] = {}
    for ref in refs:
        by_module.setdefault(id(ref.site.module), (ref.site.module, []))[1].append((ref.site, ref.row, ref.col, edit))
    pushed = []
    for module, layer in by_module.values():
        hook = _edit_hook(module)
        hook.stack.append(layer)
        pushed.append((hook, layer))
    return pushed


def zeroed(refs: Iterable[WeightRef]):
    """``with zeroed(refs):`` the weights are 0 inside the block."""
    import torch

    return edited(refs, torch.zeros_like)


def scaled(refs: Iterable[WeightRef], alpha: float):
    """``with scaled(refs, alpha):`` each weight is multiplied by alpha inside the block."""
    return edited(refs, lambda w: w * alpha)


# ------------------------------------------------------------------------------ activation restore


@contextmanager
def restored_activation(
    site: DownProj,
    channel: int,
    tokens: Iterable[int] | None = None,
    value: float | None = None,
) -> Iterator[None]:
    """Put the super activation back at ``site``'s output ``channel`` (and ``tokens``) inside the block.

    Enter this *before* zeroing the super weights: it keeps a copy of the weight at entry and, on each
    forward, writes back what that copy gives on the current input (the paper's "restore the super
    activation"), or the constant ``value`` when given. The copy equals the original model's
    activation as long as nothing upstream of ``site`` was edited. ``tokens=None`` restores every position.
    """
    import torch.nn.functional as F

    from superweight.errors import SuperweightError

    if site.expert is not None:
        raise SuperweightError(
            f"cannot hook one expert of the fused {site.name}; restore a dense down-projection instead"
        )
    if not 0 <= channel < site.weight.shape[0]:
        raise SuperweightError(f"channel {channel} is out of range for {site.label} ({site.weight.shape[0]} outputs)")
    weight = site.weight.detach().clone()
    bias = getattr(site.module, "bias", None)
    bias = None if bias is None else bias.detach().clone()
    positions = None if tokens is None else sorted(set(int(t) for t in tokens))

    def hook(_module: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        seq = output.shape[-2]
        where = slice(None) if positions is None else [p for p in positions if -seq <= p < seq]
        if value is not None:
            output[..., where, channel] = value
            return output
        x = inputs[0][..., where, :]
        original = F.linear(x.to(weight.dtype), weight, bias)[..., channel]
        output[..., where, channel] = original.to(output.dtype)
        return output

    handle = site.module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ------------------------------------------------------------------------------ controls: top-k / random-k

SCOPES = ("down_proj", "all")
# The paper's control: as many of the largest (or random) other weights as a 7B model has super-weight
# sized outliers, zeroed together (Yu et al. 2024, Table 1).
CONTROL_K = 7000


def scope_sites(model: torch.nn.Module, scope: str = "down_proj") -> list[DownProj]:
    """The matrices a control may touch: every down-projection, or every decoder Linear (``all``)."""
    from superweight.errors import SuperweightError
    from superweight.model.architectures import DownProj, down_projections, layer_index, linear_layers

    if scope == "down_proj":
        return down_projections(model)
    if scope == "all":
        return [DownProj(layer_index(name) or 0, name, module) for name, module in linear_layers(model)]
    raise SuperweightError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}", option="scope")


def _key(ref: WeightRef) -> tuple[str, int | None, int, int]:
    return (ref.site.name, ref.site.expert, ref.row, ref.col)


def top_k_refs(
    model: torch.nn.Module, k: int = CONTROL_K, exclude: Iterable[WeightRef] = (), scope: str = "down_proj"
) -> list[WeightRef]:
    """The ``k`` largest-magnitude weights in ``scope`` other than ``exclude`` (the paper's control)."""
    import torch

    skip = {_key(ref) for ref in exclude}
    sites = scope_sites(model, scope)
    total = sum(site.weight.numel() for site in sites)
    if k > total - len(skip):
        from superweight.errors import SuperweightError

        raise SuperweightError(f"{k} is more than the {total - len(skip)} other weights in scope {scope!r}", option="k")
    want = k + len(skip)
    candidates: list[tuple[float, int, int]] = []  # (|w|, site index, flat index)
    for s, site in enumerate(sites):
        flat = site.weight.detach().abs().reshape(-1)
        values, index = torch.topk(flat, min(want, flat.numel()))
        candidates.extend(zip(values.tolist(), [s] * len(index), index.tolist(), strict=True))
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    refs: list[WeightRef] = []
    for _, s, flat_index in candidates:
        site = sites[s]
        row, col = divmod(flat_index, site.weight.shape[1])
        ref = WeightRef(site, row, col)
        if _key(ref) in skip:
            continue
        refs.append(ref)
        if len(refs) == k:
            break
    return refs


def random_k_refs(
    model: torch.nn.Module,
    k: int = CONTROL_K,
    exclude: Iterable[WeightRef] = (),
    scope: str = "down_proj",
    seed: int = 0,
) -> list[WeightRef]:
    """``k`` distinct weights drawn uniformly (seeded) from all of ``scope``, ``exclude`` left out."""
    import torch

    skip = {_key(ref) for ref in exclude}
    sites = scope_sites(model, scope)
    sizes = torch.tensor([site.weight.numel() for site in sites], dtype=torch.long)
    ends = torch.cumsum(sizes, 0)
    total = int(ends[-1])
    if k > total - len(skip):
        from superweight.errors import SuperweightError

        raise SuperweightError(f"{k} is more than the {total - len(skip)} other weights in scope {scope!r}", option="k")
    generator = torch.Generator().manual_seed(seed)
    chosen: dict[tuple, WeightRef] = {}
    while len(chosen) < k:
        for flat in torch.randint(0, total, (2 * (k - len(chosen)) + 16,), generator=generator).tolist():
            s = int(torch.searchsorted(ends, flat, right=True))
            local = flat - (int(ends[s - 1]) if s else 0)
            row, col = divmod(local, sites[s].weight.shape[1])
            ref = WeightRef(sites[s], row, col)
            key = _key(ref)
            if key not in skip and key not in chosen:
                chosen[key] = ref
                if len(chosen) == k:
                    break
    return list(chosen.values())


def first_layer(refs: Iterable[WeightRef]) -> int | None:
    """The earliest decoder layer an edit touches (None for no edits): computation before it is unchanged."""
    layers = [ref.site.layer for ref in refs]
    return min(layers) if layers else None
