"""`superweight ablate [MODEL]`: Table 1 of Yu et al. (conditions x metrics), Figures 4 and 5."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superweight.cli.common import add_model_args, add_output_args, emit, load_from_args

if TYPE_CHECKING:
    from superweight.measure.experiments import Settings

EXAMPLES = """examples:
  superweight ablate --data-dir ../shared/data --max-tokens 16384
  superweight ablate --data-dir ../shared/data --tasks piqa,arc_easy --limit 200 --out runs/ablate
  superweight ablate gemma3-270m --conditions original,no-sw --scan scan.json --json
"""


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    """Options every evaluating command shares."""
    g = parser.add_argument_group("evaluation")
    g.add_argument("--data-dir", metavar="DIR", default=None, help="local data sets (default: $SUPERWEIGHT_DATA)")
    g.add_argument(
        "--data",
        metavar="SOURCES",
        default="wikitext2",
        help="perplexity sources, comma-separated: wikitext2, c4, or a text file (default: wikitext2)",
    )
    g.add_argument("--split", default="test", choices=("test", "validation"))
    g.add_argument("--seq-len", type=int, default=2048, help="window length (default 2048, capped at the context)")
    g.add_argument("--max-tokens", type=int, default=None, metavar="N", help="use only the first N tokens")
    g.add_argument(
        "--tasks",
        default="",
        help="zero-shot tasks, comma-separated (arc_challenge, arc_easy, hellaswag, lambada_openai, piqa, "
        "sciq, winogrande, boolq), or 'paper' for the paper's seven (default: none)",
    )
    g.add_argument("--limit", type=int, default=None, metavar="N", help="first N examples of each task")
    g.add_argument("--batch-size", type=int, default=8, help="zero-shot batch size (default 8)")
    g.add_argument("--scan", type=Path, default=None, metavar="FILE", help="a saved `superweight scan --json` result")
    g.add_argument("--no-cache", action="store_true", help="recompute the original model's baseline")
    g.add_argument("--no-reuse", action="store_true", help="full passes for every condition (no hidden-state reuse)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    from superweight.errors import SuperweightError
    from superweight.measure.experiments import Settings
    from superweight.measure.zeroshot import parse_tasks

    tasks = parse_tasks(args.tasks)
    sources = tuple(s.strip() for s in args.data.split(",") if s.strip())
    if not sources:
        raise SuperweightError("--data names no source; give e.g. --data wikitext2")
    for name, value in (
        ("--seq-len", args.seq_len),
        ("--max-tokens", args.max_tokens),
        ("--limit", args.limit),
    ):
        if value is not None and value < 1:
            raise SuperweightError(f"{name} must be a positive number (got {value})")
    # fail on bad input now, not after minutes of loading and evaluating
    from superweight.measure.perplexity import SOURCES, load_text, resolve_data_dir
    from superweight.measure.zeroshot import ALL_TASKS

    resolve_data_dir(args.data_dir)
    for source in sources:
        if source not in SOURCES and not Path(source).expanduser().is_file():
            raise SuperweightError(f"unknown data source {source!r}: not {' or '.join(SOURCES)}, and no such file")
        load_text(source, args.data_dir, args.split)  # readable and well-formed (cheap next to evaluating)
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown:
        raise SuperweightError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(ALL_TASKS)}")
    return Settings(
        sources=sources,
        tasks=tuple(tasks),
        data_dir=args.data_dir,
        max_tokens=args.max_tokens,
        seq_len=args.seq_len,
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        reuse=not args.no_reuse,
        use_cache=not args.no_cache,
    )


def scan_from_args(args: argparse.Namespace, lm: Any) -> Any:
    """The super weights: from ``--scan FILE`` when given, else detected now."""
    import json

    from superweight.detect.detection import ScanResult, find_super_weights
    from superweight.errors import SuperweightError
    from superweight.progress import log

    if args.scan is None:
        return find_super_weights(lm.model, lm.tokenizer, down_proj=args.down_proj, model_name=lm.spec)
    try:
        data = json.loads(args.scan.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SuperweightError(f"cannot read --scan {args.scan}: {exc.strerror}") from None
    except ValueError:
        raise SuperweightError(
            f"--scan {args.scan} is not JSON; give the output of `superweight scan --json`"
        ) from None
    if isinstance(data, dict) and data.get("command") == "scan":
        data = {k: v for k, v in data.items() if k != "command"}
    scan = ScanResult.from_dict(data)
    if scan.architecture != lm.architecture:
        raise SuperweightError(f"--scan {args.scan} is for a {scan.architecture}, not this {lm.architecture}")
    log(f"super weights from {args.scan}: {len(scan.super_weights)}")
    return scan


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ablate",
        help="zero the super weights (and controls) and measure perplexity / accuracy",
        description="Table 1 of Yu et al. 2024: the model as loaded, with its super weights zeroed, zeroed "
        "with the super activation restored, and two controls (k largest / k random other weights zeroed).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    add_output_args(p)
    add_eval_args(p)
    a = p.add_argument_group("ablation")
    a.add_argument(
        "--conditions",
        default="original,no-sw,no-sw+sa,top-k,random-k",
        help="comma-separated, from original, no-sw, no-sw+sa, top-k, random-k (default: all)",
    )
    a.add_argument("-k", "--k", type=int, default=7000, help="weights zeroed by the top-k / random-k controls")
    a.add_argument("--scope", default="down_proj", choices=("down_proj", "all"), help="where controls pick weights")
    a.add_argument("--seed", type=int, default=0, help="seed of the random-k control")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from superweight.errors import SuperweightError
    from superweight.measure.experiments import CONDITIONS, run_ablation

    settings = settings_from_args(args)
    names = [n.strip() for n in args.conditions.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown or not names:
        raise SuperweightError(f"unknown condition(s) {', '.join(unknown)}; choose from {','.join(CONDITIONS)}")
    if args.k < 1:
        raise SuperweightError(f"-k must be at least 1 (got {args.k})")
    lm = load_from_args(args)
    scan = scan_from_args(args, lm)
    payload = run_ablation(lm, scan, settings, names, k=args.k, scope=args.scope, seed=args.seed)
    emit(args, "ablate", payload, render)
    return 0


def render(payload: dict[str, Any]) -> str:
    from superweight.report.tables import format_table

    conditions = payload["conditions"]
    sources = list(dict.fromkeys(s for c in conditions for s in c["perplexity"]))
    tasks = list(dict.fromkeys(t for c in conditions for t in c["accuracy"]))
    headers = ["condition", *(f"ppl {s}" for s in sources), *tasks, "super act."]
    rows = [
        [c["name"], *(c["perplexity"].get(s) for s in sources), *(c["accuracy"].get(t) for t in tasks),
         c.get("super_activation")]
        for c in conditions
    ]  # fmt: skip
    sws = ", ".join(f"{w['module']}[{w['row']}, {w['col']}]" for w in payload["super_weights"])
    out = f"{payload['model']}: super weight(s) {sws}\n"
    out += format_table(headers, rows, title=f"ablation (top-k / random-k: k={payload['k']}, {payload['scope']})")
    if payload.get("recovery") is not None:
        out += f"\nrestoring the super activation recovers {payload['recovery']:.1%} of the loss zeroing added\n"
    if payload.get("token_shift"):
        shift = [[repr(t["text"]), t["p_original"], t["p_edited"], t["ratio"]] for t in payload["token_shift"][:10]]
        out += "\n" + format_table(
            ["token", "p original", "p no-sw", "ratio"],
            shift,
            title="tokens whose mean probability grew most",
        )
    for c in payload.get("continuations", []):
        out += f"\n{c['prompt']!r}\n  original: {c['original']!r}\n  no-sw:    {c['no-sw']!r}\n"
    hits = payload["provenance"]["baseline_cache_hits"]
    out += f"\n{payload['provenance']['seconds']:.0f} s" + (f"; baseline from cache: {', '.join(hits)}" if hits else "")
    return out + "\n"
