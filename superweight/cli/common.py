"""Options and output shared by every command, so that each behaves the same way."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from superweight.model.loading import LoadedModel


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help="a built-in alias (smollm2-135m, gemma3-270m), a local HF folder, a .gguf file, or a hub id "
        "(default: smollm2-135m)",
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument(
        "--allow-pickle", action="store_true", help="allow .bin (pickle) weights, loaded with weights_only=True"
    )
    parser.add_argument(
        "--down-proj",
        metavar="PATTERN",
        default=None,
        help="glob over module names for an unsupported architecture, e.g. 'model.layers.*.mlp.down_proj'",
    )


def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--out", metavar="DIR", type=Path, default=None, help="write a run folder (results.json, ...)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def load_from_args(args: argparse.Namespace) -> LoadedModel:
    from superweight.model.loading import load_model
    from superweight.progress import log

    lm = load_model(args.model, dtype=args.dtype, device=args.device, allow_pickle=args.allow_pickle)
    log(lm.describe())
    return lm


def emit(
    args: argparse.Namespace,
    command: str,
    payload: dict[str, Any],
    render: Callable[[dict[str, Any]], str],
) -> None:
    """Write results where they were asked for: JSON on stdout, a run folder, and/or a table."""
    from superweight.io import to_json

    if args.out is not None:
        from superweight.report.runs import write_run

        run_dir = write_run(args.out, command, payload)
        print(f"wrote {run_dir / 'results.json'}", file=sys.stderr)
    if args.json:
        sys.stdout.write(to_json(payload))
    else:
        sys.stdout.write(render(payload))
