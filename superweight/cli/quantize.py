"""``superweight quantize``: RTN methods around super weights, judged by perplexity and KL at equal bits."""

from __future__ import annotations

import argparse
from typing import Any

from superweight.cli.options import (
    add_eval,
    add_model,
    add_output,
    add_scan,
    emit,
    load_from,
    scan_from,
    settings_from,
    split_list,
)

EXAMPLES = """examples:
  superweight quantize --bits 4 --block 128,channel --methods naive,sw,sw+clip,row,sparse:0.005
  superweight quantize --bits 4,3 --block channel --methods naive,hqq,hqq+sw --max-tokens 4096 --json
  superweight quantize --act w8a8 --methods naive --block tensor --bits 8
  superweight quantize --bits 4 --block 128 --methods sw --save ckpt/sw4   (then: --load ckpt/sw4)
"""


def register(sub: Any) -> None:
    from superweight.quant.methods import BASE_METHODS
    from superweight.quant.result import CALIBRATION_TOKENS, DEFAULT_BLOCKS, DEFAULT_METHODS, SMOOTHQUANT_ALPHA
    from superweight.quant.rtn import BLOCK_WORDS, MIN_BLOCK

    p = sub.add_parser(
        "quantize",
        help="quantize around super weights; perplexity, KL and bits per weight per method",
        description="Round-to-nearest quantization of every decoder linear (or --modules), per method "
        "and block, evaluated against the unquantized model (perplexity, KL, zero-shot accuracy).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model(p)
    add_output(p)
    add_eval(p, conditions=False, max_tokens=8192)
    add_scan(p)
    q = p.add_argument_group("quantization")
    q.add_argument("--bits", default="4", help="comma-separated bit widths, 2..8 (default 4)")
    words = ", ".join(BLOCK_WORDS)
    q.add_argument("--block", default=",".join(map(str, DEFAULT_BLOCKS)),
                   help=f"comma-separated: group sizes (>= {MIN_BLOCK}, at most a row), {words}")  # fmt: skip
    choices = ", ".join(m if m != "sparse" else "sparse:F" for m in BASE_METHODS)
    q.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated: {choices}")
    q.add_argument("--modules", default=None, help="only linears matching these globs, e.g. '*.mlp.down_proj'")
    q.add_argument("--act", choices=("w8a8",), default=None, help="also run simulated W8A8: naive, sa, smoothquant")
    q.add_argument("--smoothquant-alpha", type=float, default=SMOOTHQUANT_ALPHA,
                   help=f"SmoothQuant migration strength in [0, 1] (default {SMOOTHQUANT_ALPHA})")  # fmt: skip
    q.add_argument("--calib-tokens", type=int, default=CALIBRATION_TOKENS,
                   help=f"calibration tokens for sw+clip, SmoothQuant (default {CALIBRATION_TOKENS})")  # fmt: skip
    q.add_argument("--no-kl", action="store_true", help="skip the KL divergence (saves the reference logits' memory)")
    q.add_argument("--save", metavar="DIR", default=None, help="write the (single) quantized model as a checkpoint")
    q.add_argument("--load", metavar="DIR", default=None, help="evaluate a checkpoint written by --save")
    p.set_defaults(func=run)


def parse_bits(text: str) -> list[int]:
    from superweight.errors import QuantizationError

    try:
        return [int(b) for b in split_list(text)]
    except ValueError:
        raise QuantizationError(f"{{option}} takes integers such as 4 or 4,3 (got {text!r})", option="bits") from None


def plan_from(args: argparse.Namespace) -> Any:
    """The quantization plan, validated before any model is loaded."""
    from superweight.quant.result import QuantPlan

    return QuantPlan(
        bits=tuple(parse_bits(args.bits)),
        blocks=tuple(split_list(args.block)),
        methods=tuple(split_list(args.methods)),
        modules=args.modules,
        activation=args.act == "w8a8",
        smoothquant_alpha=args.smoothquant_alpha,
        calib_tokens=args.calib_tokens,
        kl=not args.no_kl,
        save=args.save,
    )


def _load_checkpoint(args: argparse.Namespace, settings: Any) -> Any:
    from superweight.model.loading import load_model
    from superweight.quant.checkpoint import read_manifest
    from superweight.quant.sweep import evaluate_checkpoint

    manifest = read_manifest(args.load)
    base = load_model(args.model or manifest.model, dtype=manifest.dtype, device=args.device,
                      allow_pickle=args.allow_pickle, down_proj=args.down_proj)  # fmt: skip
    return evaluate_checkpoint(base, args.load, settings, kl=not args.no_kl)


def run(args: argparse.Namespace) -> int:
    from superweight.detect.result import read_scan
    from superweight.errors import QuantizationError
    from superweight.quant.sweep import run_quantization
    from superweight.report.quant import quantization_text

    if args.load and (args.save or args.scan or args.act):
        raise QuantizationError("evaluates a saved checkpoint as it is; drop --save, --scan and --act", "checkpoint")
    settings = settings_from(args)
    if args.load:
        result = _load_checkpoint(args, settings)
    else:
        plan = plan_from(args)
        if args.scan is not None:
            read_scan(args.scan)  # a missing or damaged scan fails now, not after loading the model
        lm = load_from(args)
        result = run_quantization(lm, scan_from(args, lm), settings, plan)
    emit(args, "quantize", result, quantization_text)
    return 0
