"""The `ghostnet` command: parses arguments and calls library functions, one subcommand per task.

Each subcommand lives in the module that owns its logic; that module exposes `add_commands(subparsers)`, which
adds its parsers and sets `func` (called with the parsed arguments, returning an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
from typing import Optional, Sequence

from .utils import print_error

#: Modules that contribute subcommands.
COMMAND_MODULES = ("ghostnet.commands.models", "ghostnet.commands.train", "ghostnet.commands.analysis",
                   "ghostnet.commands.deploy", "ghostnet.commands.data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ghostnet", description="GhostNet toolkit: models, cost analysis, "
                                     "training, evaluation and deployment.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback behind an error (or set {DEBUG_ENV}=1)")
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
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a reader that went away (| head) fails here, not at exit
        return status
    except BrokenPipeError:
        # The reader of our output closed the pipe (`ghostnet models | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        if debug:
            raise
        print_error(f"ghostnet {args.command}: interrupted")
        return 128 + signal.SIGINT
    except USER_ERRORS as exc:
        # Bad input, an unreadable or unwritable file, a missing optional dependency: one line, no traceback.
        if debug:
            raise
        print_error(f"ghostnet {args.command}: error: {user_message(exc)}")
        return 2


#: Errors a user can cause (bad values, files, missing extras); anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, ImportError)
#: Set to 1 to see the traceback behind a one-line error (as `--debug` does).
DEBUG_ENV = "GHOSTNET_DEBUG"
_WORKER_ERROR = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception): (.*)$")


def user_message(exc: BaseException) -> str:
    """The one line to show for `exc`.

    DataLoader workers re-raise an error as its type with the worker's whole traceback as the message; the original
    message (which names the file) is its last line. An OSError without a message of ours gets its path.
    """
    text = str(exc)
    if _WORKER_ERROR.match(text):
        last = [line for line in text.splitlines() if line.strip()][-1]
        match = _ERROR_LINE.match(last.strip())
        return match.group(1) if match else last.strip()
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
        return f"{target}: {exc.strerror}"
    return text


if __name__ == "__main__":
    raise SystemExit(main())
