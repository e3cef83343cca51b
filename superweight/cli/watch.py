"""`superweight watch DIR --manifest M`: verify every new or changed checkpoint in a folder, as it lands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXAMPLES = """examples:
  superweight watch deploy/model --manifest m.json --log watch.jsonl           verify each checkpoint as it lands
  superweight watch runs/ft --manifest m.json --once                           for cron: verify what is there, exit
  superweight watch deploy/model --manifest m.json --on-fail 'systemctl stop llm'
exit codes (--once): 0 every checkpoint verifies, 1 one is tampered, incomplete or for another model,
2 bad input or the folder disappeared. Without --once it runs until interrupted (130) or the folder goes (2).
The --on-fail command gets SUPERWEIGHT_CHECKPOINT, SUPERWEIGHT_STATUS, SUPERWEIGHT_DETAIL in its environment.
"""


def register(sub: Any) -> None:
    from superweight.guard.watch import STATUSES

    p = sub.add_parser(
        "watch",
        help="watch a model folder and verify every new or changed checkpoint",
        description="Poll a folder (it and each sub-folder holding weight files is a checkpoint); once a "
        "checkpoint's files stop changing, check its super weights' bytes, then its tensor hashes, against "
        f"the manifest. Verdicts: {', '.join(STATUSES)}; a file still being written is retried, not reported.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("directory", type=Path, metavar="DIR", help="the folder to watch")
    p.add_argument("--manifest", type=Path, required=True, metavar="FILE", help="the manifest to verify against")
    p.add_argument("--interval", type=float, default=5.0, metavar="S", help="seconds between polls (default 5)")
    p.add_argument("--once", action="store_true", help="verify what is there now (files must settle for 1 s) and exit")
    p.add_argument("--log", type=Path, metavar="FILE", help="append every verdict to this JSONL file")
    p.add_argument("--on-fail", metavar="CMD", help="shell command to run for every failed verdict")
    p.add_argument("--max-wait", type=float, default=600.0, metavar="S",
                   help="report a checkpoint unreadable this long (--once: or still changing) as incomplete "
                        "(default 600)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print each verdict as one JSON line")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="with --once: also write a run folder (results.json, report)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from superweight.guard.manifest import load_manifest
    from superweight.guard.watch import Watcher

    if args.out is not None and not args.once:
        from superweight.errors import SuperweightError

        raise SuperweightError("a run folder is written when the watch ends: use it with --once", option="out")
    manifest = load_manifest(args.manifest)
    watcher = Watcher(
        args.directory,
        manifest,
        manifest_path=str(args.manifest),
        interval=args.interval,
        max_wait=args.max_wait,
        log=args.log,
        on_fail=args.on_fail,
        on_verdict=lambda v: print_verdict(v.to_dict(), args.json),
    )
    from superweight.progress import log

    log(f"watching {args.directory} for checkpoints (every {args.interval:g} s; stop with Ctrl-C)")
    summary = watcher.run(once=args.once)
    if args.once and not summary.verdicts:
        print(f"no checkpoint (folder with .safetensors or .gguf files) in {args.directory}", file=sys.stderr)
    if args.out is not None:
        from superweight.report.runs import write_run

        print(f"wrote {write_run(args.out, 'watch', summary) / 'results.json'}", file=sys.stderr)
    return 0 if summary.ok else 1


def print_verdict(v: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(v), flush=True)
        return
    checks = ", ".join(f"{k} {c}" for k, c in v["checks"].items())
    line = f"{v['status'].upper()} {v['checkpoint']}" + (f" ({checks})" if checks else "")
    if v["detail"]:
        line += f": {v['detail']}"
    if v["hook"]:
        line += f" [on-fail exit {v['hook']['returncode']}]"
    print(line, flush=True)
