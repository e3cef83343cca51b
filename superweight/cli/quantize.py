"""``superweight quantize``: RTN methods around super weights, judged by perplexity and KL at equal bits."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

from superweight.cli.options import Payload, add_model, add_output, emit, load_from
from superweight.errors import QuantizationError

if TYPE_CHECKING:
    from superweight.model.loading import LoadedModel

EXAMPLE = """examples:
  superweight quantize --bits 4 --block 128,channel --methods naive,sw,sw+clip,row,sparse:0.005
  superweight quantize --bits 4,3 --block channel --methods naive,hqq,hqq+sw --max-tokens 4096 --json
  superweight quantize --act w8a8 --methods naive --block tensor --bits 8
  superweight quantize --bits 4 --block 128 --methods sw --save ckpt/sw4   (then: --load ckpt/sw4)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="quantize around super weights; perplexity, KL and bits per weight per method",
        description="Round-to-nearest quantization of every decoder linear (or --modules), per method "
        "and block, evaluated on WikiText-2 test windows against the unquantized model.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model(p)
    p.add_argument("--bits", default="4", help="comma-separated bit widths, 2..8 (default 4)")
    p.add_argument("--block", default="128,channel", help="comma-separated: group sizes (32..2048), channel, tensor")
    p.add_argument(
        "--methods",
        default="naive,sw,sw+clip,row,sparse:0.005",
        help="comma-separated: naive, sw, sw+clip, row, sparse:F, hqq, hqq+sw",
    )
    p.add_argument("--modules", default=None, help="only linears matching these globs, e.g. '*.mlp.down_proj'")
    p.add_argument("--act", choices=("w8a8",), default=None, help="also run simulated W8A8: naive, sa, smoothquant")
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant migration strength (default 0.5)")
    p.add_argument("--scan", metavar="FILE", default=None, help="a scan results.json instead of scanning again")
    p.add_argument("--data-dir", default=None, help="folder with wikitext2/ (default $SUPERWEIGHT_DATA or the hub)")
    p.add_argument("--max-tokens", type=int, default=8192, help="test tokens evaluated (default 8192)")
    p.add_argument("--seq-len", type=int, default=2048, help="window length (default 2048)")
    p.add_argument("--calib-tokens", type=int, default=1024, help="validation tokens for sw+clip / SmoothQuant")
    p.add_argument("--no-kl", action="store_true", help="skip the KL divergence (saves the reference logits' memory)")
    p.add_argument("--save", metavar="DIR", default=None, help="write the (single) quantized model as a checkpoint")
    p.add_argument("--load", metavar="DIR", default=None, help="evaluate a checkpoint written by --save")
    p.add_argument(
        "--tasks",
        default="",
        help="zero-shot tasks for every variant, comma-separated (e.g. piqa,lambada_openai), or 'paper'",
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N examples of each task")
    p.add_argument("--batch-size", type=int, default=8, help="zero-shot batch size (default 8)")
    add_output(p)
    p.set_defaults(func=run)


def _split(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def plan(args: argparse.Namespace) -> list[tuple[Any, Any]]:
    """Every (method, config) asked for, validated before the model is loaded."""
    from superweight.quant.methods import check_combination, parse_method
    from superweight.quant.rtn import QuantConfig, parse_block

    try:
        bits = [int(b) for b in _split(args.bits)]
    except ValueError:
        raise QuantizationError(f"--bits takes integers such as 4 or 4,3 (got {args.bits!r})") from None
    blocks = [parse_block(b) for b in _split(args.block)]
    methods = [parse_method(m) for m in _split(args.methods)]
    if not bits or not blocks or not methods:
        raise QuantizationError("--bits, --block and --methods each need at least one value")
    runs = [(m, QuantConfig(b, blk)) for b in bits for blk in blocks for m in methods]
    for method, config in runs:
        check_combination(method, config)
    if _task_names(args):  # unknown task names fail now, not after the model is loaded
        from superweight.measure.zeroshot import plan_tasks

        plan_tasks(_task_names(args), args.data_dir)
    if args.save and len(runs) != 1:
        raise QuantizationError(
            f"--save writes one model; give one bits, block and method (got {len(runs)} combinations)"
        )
    return runs


def _scan(lm: LoadedModel, args: argparse.Namespace) -> Any:
    from superweight.detect.detection import find_super_weights
    from superweight.detect.result import read_scan
    from superweight.progress import step

    if args.scan:
        return read_scan(args.scan)
    with step("scanning for super weights"):
        return find_super_weights(lm.model, lm.tokenizer, model_name=lm.spec)


def _evaluate(model: Any, windows: Any, reference: Any) -> dict[str, Any]:
    """Perplexity and (with a reference) llama.cpp-style KL from one forward pass per window."""
    import torch

    from superweight.measure.perplexity import logits_of, token_losses
    from superweight.progress import track

    total, count, kls, same = 0.0, 0, [], 0
    ids = windows.ids
    with torch.no_grad():
        for i, window in enumerate(track(ids, "evaluating", total=ids.shape[0])):
            logits = logits_of(model, window).float()
            losses = token_losses(logits, window)
            total, count = total + float(losses.double().sum()), count + losses.numel()
            if reference is not None:
                logq = torch.log_softmax(logits, dim=-1)
                logp = reference[i].float()
                kls.append((logp.exp() * (logp - logq)).sum(-1).clamp_min(0))
                same += int((logp.argmax(-1) == logq.argmax(-1)).sum())
    nll = total / count
    row: dict[str, Any] = {"perplexity": {"wikitext2": math.exp(nll) if nll < 700 else math.inf}, "kl": None}
    if kls:
        kl = torch.cat(kls).double()
        row["kl"] = float(kl.mean())
        row["kl_detail"] = {
            "median": float(kl.median()),
            "p99": float(torch.quantile(kl, 0.99)),
            "max": float(kl.max()),
            "same_top_p": same / kl.numel(),
        }
    return row


def _windows(lm: LoadedModel, args: argparse.Namespace, split: str, tokens: int) -> Any:
    from superweight.measure.corpus import load_text, tokenize_corpus

    corpus = load_text("wikitext2", args.data_dir, split)
    return tokenize_corpus(lm.tokenizer, corpus, seq_len=args.seq_len, max_tokens=tokens, model=lm.model)


def _task_names(args: argparse.Namespace) -> list[str]:
    from superweight.measure.zeroshot import parse_tasks

    return parse_tasks(args.tasks)


def _accuracy(suite: Any, limit: int | None, desc: str) -> dict[str, float | None]:
    """lm-eval ``acc`` per task for the model as it is now (None: skipped, e.g. no local copy offline)."""
    return {task: r.accuracy for task, r in suite.evaluate(limit, desc).items()}


def sweep(lm: LoadedModel, args: argparse.Namespace, runs: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Baseline, then every (method, config), then W8A8 if asked; weights restored after each."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        suite = None
        if _task_names(args):
            from superweight.measure.zeroshot import TaskSuite

            suite = stack.enter_context(
                TaskSuite(lm.model, lm.tokenizer, _task_names(args), data_dir=args.data_dir, batch_size=args.batch_size)
            )
        return _sweep(lm, args, runs, suite)


def _sweep(lm: LoadedModel, args: argparse.Namespace, runs: list[tuple[Any, Any]], suite: Any) -> dict[str, Any]:
    import torch

    from superweight.measure.perplexity import next_token_logprobs
    from superweight.progress import log
    from superweight.quant.methods import (
        Protection,
        WeightSnapshot,
        apply_quantization,
        collect_inputs,
        linear_weight,
        select_linears,
    )
    from superweight.quant.rtn import group_size

    linears = select_linears(lm.model, args.modules)
    for _, config in runs:  # a block longer than a row fails now, before minutes of work
        for _, module in linears:
            group_size(tuple(linear_weight(module).shape), config.block)
    scan = _scan(lm, args)
    protection = Protection.from_scan(lm.model, scan)
    windows = _windows(lm, args, "test", args.max_tokens)
    reference = None if args.no_kl else next_token_logprobs(lm.model, windows, dtype=torch.float16)
    baseline = _evaluate(lm.model, windows, None)
    log(f"unquantized perplexity {baseline['perplexity']['wikitext2']:.3f}")
    if suite is not None:
        baseline["accuracy"] = _accuracy(suite, args.limit, "unquantized")
    needs_calib = any(m.name == "sw+clip" for m, _ in runs) or args.act
    calib_windows = _windows(lm, args, "validation", args.calib_tokens).ids if needs_calib else None
    calibration = None
    if any(m.name == "sw+clip" for m, _ in runs):
        calibration = collect_inputs(lm.model, linears, calib_windows)
    results, saved = [], None
    with WeightSnapshot(linears) as snapshot:
        for method, config in runs:
            report = apply_quantization(snapshot, method, config, protection, calibration, keep=bool(args.save))
            row = {"method": method.label, "bits": config.bits, "block": config.label}
            row.update(_evaluate(lm.model, windows, reference))
            if suite is not None:
                row["accuracy"] = _accuracy(suite, args.limit, f"{method.label} {config.label}")
            row["bits_per_weight"] = report.bits_per_weight
            row["quantization"] = report.to_dict()
            log(f"{method.label} {config.bits}-bit {config.label}: ppl {row['perplexity']['wikitext2']:.3f}")
            results.append(row)
            if args.save:
                from superweight.quant.checkpoint import save_checkpoint

                saved = save_checkpoint(args.save, lm, report)
                row["checkpoint"] = {"path": str(args.save), "bytes": saved["bytes"]}
            snapshot.restore()
        if args.act:
            results.extend(_w8a8(lm, linears, scan, windows, reference, calib_windows, args.alpha, suite, args.limit))
    return {
        "model": lm.spec,
        "architecture": lm.architecture,
        "baseline": baseline,
        "results": results,
        "data": windows.describe(),
        "modules": len(linears),
        "super_weights": [list(w.coordinate) for w in scan.super_weights],
        "protection": protection.to_dict(),
    }


def _w8a8(lm, linears, scan, windows, reference, calib_windows, alpha, suite, limit) -> list[dict[str, Any]]:
    from superweight.quant.w8a8 import held_channels, smoothing_factors, w8a8

    held = held_channels(linears, scan, int(lm.model.config.hidden_size))
    smoothing = smoothing_factors(lm.model, linears, calib_windows, alpha)
    weights = sum(m.weight.numel() for _, m in linears)
    bpw = 8 + 16 * len(linears) / weights  # one fp16 scale per tensor
    rows = []
    for method in ("naive", "sa", "smoothquant"):
        with w8a8(linears, method, held=held, smoothing=smoothing) as report:
            row = {"method": f"w8a8:{method}", "bits": 8, "block": "tensor"}
            row.update(_evaluate(lm.model, windows, reference))
            if suite is not None:
                row["accuracy"] = _accuracy(suite, limit, f"w8a8:{method}")
            row["bits_per_weight"] = bpw
            row["activation"] = report.to_dict() | {"alpha": alpha if method == "smoothquant" else None}
        rows.append(row)
    return rows


def _load(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from superweight.measure.perplexity import next_token_logprobs
    from superweight.model.loading import load_model
    from superweight.quant.checkpoint import load_quantized_model

    qlm = load_quantized_model(args.load)
    manifest = qlm.extra["manifest"]
    base = load_model(args.model or manifest["model"], dtype=manifest.get("dtype", "float32"))
    windows = _windows(base, args, "test", args.max_tokens)
    reference = None if args.no_kl else next_token_logprobs(base.model, windows, dtype=torch.float16)
    baseline = _evaluate(base.model, windows, None)
    row = {"method": manifest["method"], "bits": manifest["bits"], "block": str(manifest["block"])}
    row.update(_evaluate(qlm.model, windows, reference))
    row["bits_per_weight"] = manifest["bits_per_weight"]
    row["checkpoint"] = {"path": str(args.load), "bytes": manifest["bytes"]}
    return {"model": base.spec, "baseline": baseline, "results": [row], "data": windows.describe()}


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def render(payload: dict[str, Any]) -> str:
    base = payload["baseline"]["perplexity"]["wikitext2"]
    tasks = list(payload["baseline"].get("accuracy", {}))
    accuracy = "".join(f" {_fmt(payload['baseline']['accuracy'][t], '.3f')} {t}" for t in tasks)
    lines = [
        f"{payload['model']}: unquantized WikiText-2 perplexity {base:.3f}{' ;' + accuracy if tasks else ''}",
        f"{'method':<16}{'bits':>5}{'block':>9}{'bits/w':>9}{'ppl':>12}{'KL':>10}" + "".join(f"{t:>16}" for t in tasks),
    ]
    for r in payload["results"]:
        acc = r.get("accuracy", {})
        lines.append(
            f"{r['method']:<16}{r['bits']:>5}{r['block']:>9}{r['bits_per_weight']:>9.3f}"
            f"{_fmt(r['perplexity']['wikitext2'], '12.3f'):>12}{_fmt(r.get('kl'), '10.4f'):>10}"
            + "".join(f"{_fmt(acc.get(t), '16.3f'):>16}" for t in tasks)
        )
        if "checkpoint" in r:
            lines.append(f"  checkpoint {r['checkpoint']['path']}: {r['checkpoint']['bytes']['total']:,} bytes")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.load:
        payload = _load(args)
    else:
        runs = plan(args)
        lm = load_from(args)
        payload = sweep(lm, args, runs)
    emit(args, "quantize", Payload(payload), render)
    return 0
