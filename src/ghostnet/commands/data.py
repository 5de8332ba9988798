"""`ghostnet data check PATH`: read every image of a data set before training on it; the work is in ghostnet.data."""
from __future__ import annotations

import argparse
import json
import os

from ..utils import ensure_writable


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="check a data set before a long run")
    commands = p.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    c = commands.add_parser(
        "check", help="decode every image, list the unreadable ones, count images per class and split",
        description="Decode every image of every split (train/val of an ImageFolder tree, or .npz shards) with the "
        "loader's own decoder; list the files a run would stop at, the images per class and split, and warnings "
        "(empty classes, classes in one split only, tiny images, files the loader ignores). Exit status 1 if any "
        "file is unreadable.")
    c.add_argument("path", help="what --data takes: an ImageFolder root, a folder of .npz shards, cifar10/cifar100")
    c.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="decoding worker processes (0: decode in this process; default: %(default)s)")
    c.add_argument("--json", metavar="FILE", help="also write the report to this file")
    c.add_argument("--min-size", type=int, default=None, metavar="PX",
                   help="list images with a side shorter than PX pixels (default 8)")
    c.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    c.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from ..data.check import MIN_SIZE, check_data, format_report
    from ..utils import atomic_write

    if args.json:
        ensure_writable(args.json, "--json")
    min_size = MIN_SIZE if args.min_size is None else args.min_size
    report = check_data(args.path, workers=args.workers, progress=args.progress, min_size=min_size)
    print(format_report(report))
    if args.json:
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")
    return 0 if report.ok else 1
