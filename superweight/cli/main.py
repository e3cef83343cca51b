"""Entry point: one subcommand per module in this package, errors as one line, data on stdout.

Heavy imports (torch, transformers) happen inside the commands, so ``superweight --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from superweight import __version__
from superweight.errors import SuperweightError

# Each name is a module superweight.cli.<name> with register(subparsers) and run(args) -> int.
COMMANDS = (
    "scan",
    "ablate",
    "scale",
    "quantize",
    "fingerprint",
    "verify",
    "diff",
    "attack",
    "watch",
    "repair",
    "atlas",
    "study",
    "report",
)

EPILOG = """examples:
  superweight scan                      find the super weights of the built-in default model
  superweight scan gemma3-270m --json   another built-in model, JSON on stdout
  superweight scan ./my-model --out runs/mine

Set SUPERWEIGHT_DEBUG=1 to see a traceback instead of a one-line error."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    parser = Parser(
        prog="superweight",
        description="Find, measure, quantize around and guard the super weights of large language models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"superweight {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"superweight.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from superweight.progress import set_quiet

    set_quiet(getattr(args, "quiet", False) or (getattr(args, "json", False) and not sys.stdout.isatty()))
    try:
        return int(args.func(args) or 0)
    except SuperweightError as exc:
        if os.environ.get("SUPERWEIGHT_DEBUG"):
            raise
        from superweight.cli.options import flag

        print(f"superweight {args.command}: error: {exc.render(flag)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"superweight {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("SUPERWEIGHT_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"superweight {args.command}: internal error: {type(exc).__name__}: {msg} "
            "(a bug: set SUPERWEIGHT_DEBUG=1 for the traceback and report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
