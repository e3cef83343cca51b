"""`superweight scan [MODEL]`: find the super weights and super activations of a model."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from superweight.cli.options import add_model, add_output, emit, load_from

if TYPE_CHECKING:
    from superweight.detect.result import ScanResult

EXAMPLES = """examples:
  superweight scan                                  the built-in default model (smollm2-135m)
  superweight scan gemma3-270m --json > scan.json   JSON on stdout
  superweight scan ./my-model --prompt "Hello" --prompt "Summer is hot. Winter is" --out runs/my-model
"""


def register(sub: Any) -> None:
    from superweight.detect.result import DetectionConfig

    cfg = DetectionConfig()
    p = sub.add_parser(
        "scan",
        help="find super weights and super activations",
        description="Find super weights (Yu et al. 2024): spikes in the down-projection input and output, "
        "zeroed and re-run until none is left, each confirmed by the loss it costs.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model(p)
    add_output(p)
    d = p.add_argument_group("detection")
    d.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt to scan with (repeat for several)")
    d.add_argument("--z-threshold", type=float, default=cfg.z_threshold,
                   help=f"robust z-score a layer must reach (default {cfg.z_threshold})")  # fmt: skip
    d.add_argument("--min-ratio", type=float, default=cfg.min_ratio,
                   help=f"and this many times the other layers' median (default {cfg.min_ratio})")  # fmt: skip
    d.add_argument("--max-iterations", type=int, default=cfg.max_iterations,
                   help=f"cap on zero-and-rerun rounds (default {cfg.max_iterations})")  # fmt: skip
    d.add_argument("--min-loss-increase", type=float, default=cfg.min_loss_increase,
                   help=f"probe loss (nats) zeroing must add to confirm (default {cfg.min_loss_increase})")  # fmt: skip
    d.add_argument("--probe-text", metavar="TEXT", default=None, help="text whose loss confirms each candidate")
    from superweight.detect.strategy import STRATEGIES

    d.add_argument("--strategy", default="auto", choices=STRATEGIES,
                   help="hold the model in memory, offloaded by accelerate, or streamed layer by layer from "
                   "the safetensors shards (default auto: memory if it fits, else stream)")  # fmt: skip
    d.add_argument("--weights-only", action="store_true",
                   help="rank candidates from the weight files alone: no model built, no forward pass")  # fmt: skip
    d.add_argument("--probe-windows", type=int, default=cfg.probe_windows,
                   help=f"WikiText-2 probe windows (default {cfg.probe_windows})")  # fmt: skip
    d.add_argument("--probe-tokens", type=int, default=cfg.probe_tokens,
                   help=f"tokens per probe window (default {cfg.probe_tokens})")  # fmt: skip
    d.add_argument("--null-draws", type=int, default=cfg.null_draws,
                   help=f"null draws per candidate layer (default {cfg.null_draws}; 0: none)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from superweight.detect.detection import check_prompts, scan_model
    from superweight.detect.result import DetectionConfig

    check_prompts(args.prompt)
    config = DetectionConfig(
        z_threshold=args.z_threshold,
        min_ratio=args.min_ratio,
        max_iterations=args.max_iterations,
        min_loss_increase=args.min_loss_increase,
        probe_windows=args.probe_windows,
        probe_tokens=args.probe_tokens,
        null_draws=args.null_draws,
        **({"probe_text": args.probe_text} if args.probe_text is not None else {}),
    )
    if args.weights_only:
        from superweight.detect.weights_only import weight_scan

        emit(args, "scan-weights", weight_scan(args.model), render_weights)
        return 0
    if args.strategy != "memory" or args.device_map is not None:
        from superweight.detect.strategy import scan_with_strategy

        result = scan_with_strategy(args.model, args.strategy, args.prompt, config, dtype=args.dtype,
                                    device=args.device, allow_pickle=args.allow_pickle, down_proj=args.down_proj,
                                    device_map=args.device_map, max_memory=args.max_memory,
                                    offload_folder=args.offload_folder)  # fmt: skip
        emit(args, "scan", result, render)
        return 0
    lm = load_from(args)
    emit(args, "scan", scan_model(lm, args.prompt, config), render)
    return 0


def render_weights(result: Any) -> str:
    from superweight.report.tables import format_table

    rows = [[i + 1, c.layer, c.module, c.row, c.col, c.value, c.score] for i, c in enumerate(result.candidates[:20])]
    title = f"{result.model}: weight-only candidates ({result.score}; not confirmed by any forward pass)"
    table = format_table(["rank", "layer", "module", "row", "col", "weight", "score"], rows, title=title)
    return table if table.endswith("\n") else table + "\n"


def render(scan: ScanResult) -> str:
    payload = scan.to_dict()
    from superweight.report.tables import format_table

    headers = [
        "layer",
        "module",
        "row",
        "col",
        "weight",
        "input act",
        "output act",
        "tokens",
        "group",
        "share",
        "alone +nats",
        "marginal",
        "leave-1-out",
        "agree",
        "bos agree",
    ]

    def rows(weights: list[dict[str, Any]]) -> list[list[Any]]:
        return [
            [w["layer"], w["module"], w["row"], w["col"], w["value"], w["input_activation"],
             w["output_activation"], ",".join(map(str, w["tokens"])), w.get("group"), w.get("share"),
             w["loss_increase"], w.get("loss_marginal"), w.get("loss_leave_one_out"), w.get("agreement"),
             w.get("bos_agreement")]
            for w in weights
        ]  # fmt: skip

    confirmed = [w for w in payload["super_weights"] if w["confirmed"]]
    unconfirmed = [w for w in payload["super_weights"] if not w["confirmed"]]
    head = f"{payload['model']} ({payload['architecture']}, {payload['num_parameters'] / 1e6:.1f} M parameters)\n"
    if confirmed:
        out = head + format_table(headers, rows(confirmed), title="super weights")
    else:
        out = head + "no super weight found.\n" + _evidence(payload)
    if unconfirmed:
        out += "\n" + format_table(
            headers, rows(unconfirmed), title="candidates not confirmed (loss increase too small)"
        )
    out += _groups(payload)
    labelled = [w for w in payload["super_weights"] if w.get("label")]
    out += "".join(f"layer {w['layer']} [{w['row']}, {w['col']}]: {w['label']}\n" for w in labelled)
    if payload["super_activations"]:
        acts = [
            [a["layer"], a["channel"], a["value"], ",".join(map(str, a["tokens"])), a["persists_until"]]
            for a in payload["super_activations"]
        ]
        out += "\n" + format_table(
            ["layer", "channel", "value", "tokens", "persists to layer"], acts, title="super activations"
        )
    out += _fp16(payload)
    # --- super experts and atlas agreement (detect/experts.py, detect/atlas.py)
    if payload.get("super_experts"):
        experts = [[e["layer"], e["expert"], e["max_output"], e["channel"], e["token"], e["share_of_largest"]]
                   for e in payload["super_experts"]]  # fmt: skip
        out += "\n" + format_table(
            ["layer", "expert", "max |output|", "channel", "token", "of largest"],
            experts,
            title="super experts (Su et al. 2025: > 99.5th percentile and > 0.1 x the largest expert maximum)",
        )
    if scan.atlas is not None:
        out += "\n" + scan.atlas.summary() + "\n"
    t = payload["timings"]
    passes = f" ({t['forward_passes']} forward passes)" if "forward_passes" in t else ""
    out += f"\nload {t.get('load_s', 0):.1f} s, detection {t['detect_s']:.1f} s{passes}\n"
    if payload["source"].get("placement"):
        from superweight.model.placement import Placement

        out += Placement.from_dict(payload["source"]["placement"]).summary() + "\n"
    return out


def _fp16(payload: dict[str, Any]) -> str:
    fp16 = payload.get("fp16") or {}
    if not fp16:
        return ""
    where = f"{fp16['where']} of layer {fp16['layer']}"
    if fp16["overflows_fp16"]:
        return (
            f"\nWARNING: float16 overflow: |{fp16['max_abs']:,.0f}| in the {where} exceeds float16's 65,504; "
            "run this model in bfloat16 or float32, not float16.\n"
        )
    return f"\nfloat16: largest |value| {fp16['max_abs']:,.0f} ({where}), {fp16['headroom']:.1f}x below 65,504\n"


def _massive(payload: dict[str, Any]) -> str:
    """Where a massive activation comes from when no single weight is behind it."""
    m = payload.get("massive") or {}
    if not m.get("builders"):
        return ""
    out = (
        f"largest residual value {m['value']:,.1f} (hidden channel {m['channel']}, token {m['token']}, after layer "
        f"{m['layer']}; {m['ratio_to_median']:,.0f}x its token's median) is built by:\n"
    )
    for b in m["builders"]:
        out += f"  layer {b['layer']}: adds {b['added']:,.1f} (MLP {b['mlp']:,.1f}, attention/other {b['other']:,.1f})"
        if "gain" in b:
            out += f" = down_proj {b['down_proj']:.3g} through {b['norm']} gain {b['gain']:.3g}"
        out += "\n"
    check = m.get("causal_check")
    if check:
        out += (
            f"causal check: {check['parameter']} {check['gain']:.3g} -> {check['set_to']:.3g} (the norm's median) "
            f"moves it {check['value_before']:,.1f} -> {check['value_after']:,.1f}, probe loss "
            f"{check['loss_increase']:+.3g} nats\n"
        )
    return out


def _groups(payload: dict[str, Any]) -> str:
    """Candidates feeding one super activation, judged together (issue 10)."""
    from superweight.report.tables import format_table

    groups = payload.get("groups") or []
    if not groups:
        return ""
    rows = [
        [g["group"], g["layer"], g["row"], ",".join(map(str, g["members"])),
         ",".join(f"{s:.2f}" for s in g["shares"]), g["joint_loss"], "yes" if g["confirmed"] else "no"]
        for g in groups
    ]  # fmt: skip
    title = f"groups (one per super activation); all candidates zeroed together: +{payload['set_loss']:.3g} nats"
    return "\n" + format_table(
        ["group", "layer", "row", "members", "shares", "joint +nats", "confirmed"], rows, title=title
    )


def _evidence(payload: dict[str, Any]) -> str:
    """Why nothing was found: the layers that came closest."""
    from superweight.report.tables import format_table

    top = sorted(payload["layers"], key=lambda s: -min(s["input_z"], s["output_z"]))[:5]
    stream = payload.get("residual_stream") or []
    note = _massive(payload)
    if stream and not note:
        peak = max(stream, key=lambda r: r["max"])
        grew = [r["layer"] for r in stream if r["channel"] == peak["channel"]]
        note = (
            f"largest residual-stream activation: {peak['max']:,.0f} in hidden channel {peak['channel']} "
            f"(token {peak['token']}) after layer {peak['layer']}; that channel leads in layers "
            f"{grew[0]}-{grew[-1]}, so a massive activation may exist without a single weight behind it.\n"
        )
    rows = [[s["layer"], s["max_input"], s["input_z"], s["max_output"], s["output_z"]] for s in top]
    cfg = payload["detection"]
    return note + format_table(
        ["layer", "max |input|", "z", "max |output|", "z"],
        rows,
        title=f"closest layers (a spike needs z >= {cfg['z_threshold']} and >= {cfg['min_ratio']}x the median, "
        "in both input and output)",
    )
