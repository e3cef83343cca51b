"""The options commands share, defined once, with defaults and choices taken from the library.

A command adds only the groups it uses (a command that reads files never offers ``--dtype``), so no
option is accepted and then ignored. Each ``*_from`` function turns parsed options into the library's
own objects; the library validates them and names a bad one by its parameter name, which
:data:`FLAGS` turns back into the flag the user typed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.dtypes import MODEL_DTYPES

if TYPE_CHECKING:
    from superweight.detect.result import ScanResult
    from superweight.measure.settings import EvalSettings
    from superweight.model.loading import LoadedModel

# library parameter name -> the flag (or argument) a user gives it; the rest are "--" + dashes
FLAGS = {
    "model": "MODEL",
    "sources": "--data",
    "budget_bytes": "--budget",
    "probe_text": "--probe-text",
    "blocks": "--block",
    "activation": "--act",
    "kl": "--no-kl",
    "checkpoint": "--load",
    "manifest": "--manifest",
    "keygen": "--keygen",
    "sign": "--sign",
    "pubkey": "--pubkey",
    "trusted": "--trusted",
    "ossf_key": "--model-signing",
    "ossf_signature": "--model-signature",
    "train_source": "--train-data",
    "eval_source": "--eval-data",
    "probe": "--probe-windows",
}


def flag(option: str) -> str:
    return FLAGS.get(option, "--" + option.replace("_", "-"))


def add_model(parser: argparse.ArgumentParser, *, load: bool = True, required: bool = False) -> None:
    """MODEL, and with ``load`` the options that say how to load it into memory."""
    from superweight.model.spec import ALIASES, DEFAULT_MODEL

    parser.add_argument(
        "model",
        nargs=None if required else "?",
        default=None,
        help=f"a built-in alias ({', '.join(ALIASES)}), a local HF folder, a .gguf file, or a hub id"
        + ("" if required else f" (default: {DEFAULT_MODEL})"),
    )
    if load:
        add_load(parser)


def add_load(parser: argparse.ArgumentParser) -> None:
    from superweight.model.loading import DEVICES

    g = parser.add_argument_group("loading")
    g.add_argument("--dtype", default="float32", choices=MODEL_DTYPES)
    g.add_argument("--device", default="cpu", choices=DEVICES)
    g.add_argument(
        "--allow-pickle", action="store_true", help="allow .bin (pickle) weights, loaded with weights_only=True"
    )
    g.add_argument(
        "--down-proj",
        metavar="PATTERN",
        default=None,
        help="glob over module names for an unsupported architecture, e.g. 'model.layers.*.mlp.down_proj'",
    )
    g.add_argument(
        "--device-map",
        metavar="MAP",
        default=None,
        help="spread the model with accelerate: auto, balanced, sequential, or a JSON {module: device} map",
    )
    g.add_argument("--max-memory", metavar="CAPS", default=None,
                   help="memory cap per device for --device-map, e.g. '0=20GiB,cpu=8GiB'")  # fmt: skip
    g.add_argument("--offload-folder", metavar="DIR", default=None, help="where accelerate offloads to disk")


def add_device(parser: argparse.ArgumentParser) -> None:
    """Only ``--dtype`` and ``--device``: for commands that load a model they never scan or patch."""
    from superweight.model.loading import DEVICES

    g = parser.add_argument_group("loading")
    g.add_argument("--dtype", default="float32", choices=MODEL_DTYPES)
    g.add_argument("--device", default="cpu", choices=DEVICES)


def add_output(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    g.add_argument("--out", metavar="DIR", type=Path, default=None, help="write a run folder (results.json, ...)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def add_scan(parser: argparse.ArgumentParser, what: str = "instead of scanning again") -> None:
    parser.add_argument(
        "--scan", type=Path, default=None, metavar="FILE", help=f"a saved scan (`scan --json` or a run folder) {what}"
    )


def add_eval(parser: argparse.ArgumentParser, *, conditions: bool = True, **defaults: Any) -> None:
    """The evaluation settings (:class:`~superweight.measure.settings.EvalSettings`); ``defaults`` override.

    ``conditions=False`` leaves out --no-cache and --no-reuse, which only the condition runner uses.
    """
    from superweight.measure.corpus import SPLITS
    from superweight.measure.settings import EvalSettings
    from superweight.measure.zeroshot import ALL_TASKS

    base = {f.name: f.default for f in fields(EvalSettings)}
    base.update(defaults)
    g = parser.add_argument_group("evaluation")
    g.add_argument("--data-dir", metavar="DIR", default=None, help="local data sets (default: $SUPERWEIGHT_DATA)")
    g.add_argument(
        "--data",
        metavar="SOURCES",
        default=",".join(base["sources"]),
        help=f"perplexity sources, comma-separated: wikitext2, c4 or a text file (default {','.join(base['sources'])})",
    )
    g.add_argument("--split", default=base["split"], choices=SPLITS)
    g.add_argument("--seq-len", type=int, default=base["seq_len"], help=f"window length (default {base['seq_len']})")
    g.add_argument("--max-tokens", type=int, default=base["max_tokens"], metavar="N",
                   help=f"use only the first N tokens (default: {base['max_tokens'] or 'all'})")  # fmt: skip
    g.add_argument(
        "--tasks",
        default=",".join(base["tasks"]),
        help=f"zero-shot tasks, comma-separated ({', '.join(ALL_TASKS)}), or 'paper' for the paper's seven",
    )
    g.add_argument("--limit", type=int, default=base["limit"], metavar="N", help="first N examples of each task")
    g.add_argument("--batch-size", type=int, default=base["batch_size"], help="zero-shot batch size")
    if conditions:
        g.add_argument("--no-cache", action="store_true", help="recompute the original model's baseline")
        g.add_argument("--no-reuse", action="store_true", help="full passes for every condition (no reuse)")


def add_perplexity(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """Only the perplexity part of the evaluation settings (no zero-shot tasks): for a before/after check."""
    from superweight.measure.corpus import SPLITS
    from superweight.measure.settings import EvalSettings

    base = {f.name: f.default for f in fields(EvalSettings)}
    base.update(defaults)
    g = parser.add_argument_group("evaluation")
    g.add_argument("--data-dir", metavar="DIR", default=None, help="local data sets (default: $SUPERWEIGHT_DATA)")
    g.add_argument("--data", metavar="SOURCE", default=base["sources"][0],
                   help=f"perplexity source: wikitext2, c4 or a text file (default {base['sources'][0]})")  # fmt: skip
    g.add_argument("--split", default=base["split"], choices=SPLITS)
    g.add_argument("--seq-len", type=int, default=base["seq_len"], help=f"window length (default {base['seq_len']})")
    g.add_argument("--max-tokens", type=int, default=base["max_tokens"], metavar="N",
                   help=f"use only the first N tokens (default: {base['max_tokens'] or 'all'})")  # fmt: skip


def perplexity_settings_from(args: argparse.Namespace) -> EvalSettings:
    """The settings of :func:`add_perplexity`'s options (data checked when the verb evaluates)."""
    from superweight.measure.settings import EvalSettings

    return EvalSettings(sources=(args.data,), data_dir=args.data_dir, max_tokens=args.max_tokens,
                        seq_len=args.seq_len, split=args.split)  # fmt: skip


def add_measuring(parser: argparse.ArgumentParser) -> None:
    """Everything a command that evaluates a model around its super weights takes (ablate, scale, ...)."""
    add_model(parser)
    add_output(parser)
    add_eval(parser)
    add_scan(parser)


def split_list(text: str) -> list[str]:
    return [t for t in (s.strip() for s in text.split(",")) if t]


def settings_from(args: argparse.Namespace) -> EvalSettings:
    """The evaluation settings, checked against the data before any model is loaded."""
    from superweight.measure.settings import EvalSettings
    from superweight.measure.zeroshot import parse_tasks

    settings = EvalSettings(
        sources=tuple(split_list(args.data)),
        tasks=tuple(parse_tasks(args.tasks)),
        data_dir=args.data_dir,
        max_tokens=args.max_tokens,
        seq_len=args.seq_len,
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        reuse=not getattr(args, "no_reuse", False),
        use_cache=not getattr(args, "no_cache", False),
    )
    settings.check_data()
    return settings


def load_from(args: argparse.Namespace) -> LoadedModel:
    """Load MODEL as the loading options say (``--down-proj`` registers its adapter here, once)."""
    from superweight.model.loading import load_model
    from superweight.progress import log

    lm = load_model(
        args.model,
        dtype=args.dtype,
        device=args.device,
        allow_pickle=args.allow_pickle,
        down_proj=args.down_proj,
        device_map=args.device_map,
        max_memory=args.max_memory,
        offload_folder=args.offload_folder,
    )
    log(lm.describe())
    return lm


def scan_from(args: argparse.Namespace, lm: LoadedModel) -> ScanResult:
    """The super weights: from ``--scan FILE`` when given (checked against the model), else detected now."""
    from superweight.errors import ResultFileError
    from superweight.progress import log, step

    if args.scan is not None:
        from superweight.detect.result import read_scan

        scan = read_scan(args.scan)
        if scan.architecture != lm.architecture:
            raise ResultFileError(f"{args.scan} is a scan of a {scan.architecture}, not this {lm.architecture}", "scan")
        log(f"super weights from {args.scan}: {len(scan.super_weights)}")
        return scan
    from superweight.detect.detection import scan_model

    with step("scanning for super weights"):
        return scan_model(lm)


def emit(args: argparse.Namespace, command: str, result: Any, render: Callable[[Any], str]) -> None:
    """Write results where they were asked for: a run folder, JSON on stdout, and/or a table."""
    from superweight.io import to_json
    from superweight.results import document

    if args.out is not None:
        from superweight.report.runs import write_run

        run_dir = write_run(args.out, command, result)
        print(f"wrote {run_dir / 'results.json'}", file=sys.stderr)
    if args.json:
        sys.stdout.write(to_json(document(command, result)))
    else:
        sys.stdout.write(render(result))


class Payload(dict):
    """TRANSITIONAL (issue 9): the results of a verb that still returns a dict; delete once it is typed."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self)
