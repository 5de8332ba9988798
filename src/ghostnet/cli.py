"""The `ghostnet` command: parses arguments and calls library functions, one subcommand per task.

Each subcommand lives in the module that owns its logic; that module exposes `add_commands(subparsers)`, which
adds its parsers and sets `func` (called with the parsed arguments, returning an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

#: Modules that contribute subcommands.
COMMAND_MODULES = ("ghostnet.commands.models", "ghostnet.commands.train", "ghostnet.commands.analysis",
                   "ghostnet.commands.deploy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ghostnet", description="GhostNet toolkit: models, cost analysis, "
                                     "training, evaluation and deployment.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        # Bad input from the user, or an optional dependency missing: one clear line, no traceback.
        print(f"ghostnet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
