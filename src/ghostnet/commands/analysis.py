"""`ghostnet profile MODEL` (cost table, JSON, CSV, plot, comparison) and `ghostnet visualize IMAGE`."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..constants import DTYPES
from ..utils import ensure_writable


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "profile", help="parameters, MACs and memory per stage/layer, with the paper's Ghost-module formulas",
        description="Profile one inference pass. MODEL is a model spec: a registered NAME (see `ghostnet "
                    "models`), timm:NAME, torchvision:NAME or an importable builder 'package.module:callable'.")
    p.add_argument("model")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                   help="input height and width (default: the model's own, else 224 224)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every row and total as JSON")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write the per-layer rows as CSV")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="bar charts per stage (needs matplotlib)")
    p.add_argument("--compare", metavar="MODEL2", help="profile a second model and put the totals side by side")
    p.add_argument("--layers", action="store_true", help="print the per-layer table")
    p.add_argument("--ghost", action="store_true", help="print the per-Ghost-module formula table")
    p.add_argument("--no-measure", action="store_true", help="skip the measured memory pass")
    p.add_argument("--train", action="store_true",
                   help="also measure one training step (SGD with momentum) at --batch-size, with --dtype as autocast "
                        "(mixed precision): what each stage saves for backward, the memory alive when backward "
                        "starts, and the step's peak")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="with --train: the same step with gradient checkpointing")
    p.set_defaults(func=run_profile)

    p = subparsers.add_parser(
        "visualize", help="the paper's Figure 1: intrinsic feature maps next to their ghost maps, as a PNG",
        description="Run IMAGE through MODEL and draw the intrinsic maps of one Ghost module, each followed by "
                    "the ghost maps its cheap operation makes from it.")
    p.add_argument("image", type=Path)
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--weights", type=Path, metavar="FILE", help="checkpoint to load (default: random weights)")
    p.add_argument("--layer", type=int, default=0, metavar="N", help="which Ghost module, 0 = the first")
    p.add_argument("--num-maps", type=int, default=8, metavar="K", help="intrinsic maps to draw")
    p.add_argument("--output", type=Path, metavar="FILE.png", help="default: IMAGE's name + '-ghost-maps.png'")
    p.set_defaults(func=run_visualize)


def _check_png(path: Path, flag: str) -> None:
    if path.suffix.lower() != ".png":
        raise ValueError(f"{flag} writes a PNG; give a file name ending in .png, got {str(path)!r}")


def run_profile(args: argparse.Namespace) -> int:
    """`ghostnet profile`: cost tables of one model or two side by side, and the files asked for."""
    from ..analysis.profiling import profile_specs
    from ..analysis.report import render_comparison, render_text, render_training_memory

    if args.plot is not None:
        _check_png(args.plot, "--plot")
    if args.grad_checkpointing and not args.train:
        raise ValueError("--grad-checkpointing goes with --train")
    for flag, path in (("--json", args.json), ("--csv", args.csv), ("--plot", args.plot)):
        if path is not None:
            ensure_writable(path, flag)
    run = profile_specs([args.model] + ([args.compare] if args.compare else []), image_size=args.input_size,
                        batch_size=args.batch_size, dtype=args.dtype, measure_memory=not args.no_measure,
                        train=args.train, grad_checkpointing=args.grad_checkpointing, json_path=args.json,
                        csv_path=args.csv, plot_path=args.plot)
    for p in run.profiles:
        print(render_text(p, layers=args.layers, ghost=args.ghost))
        print()
    for p, tm in zip(run.profiles, run.training):
        print(render_training_memory(p.model, tm))
        print()
    if len(run.profiles) > 1:
        print(render_comparison(run.profiles))
    return 0


def run_visualize(args: argparse.Namespace) -> int:
    from ..convert.checkpoints import load_checkpoint
    from ..models.registry import create_model
    from ..viz.ghost_maps import ghost_feature_maps, load_image, plot_ghost_maps

    output = args.output or Path(f"{args.image.stem}-ghost-maps.png")
    _check_png(output, "--output")
    ensure_writable(output, "--output")
    model = create_model(args.model)
    if args.weights is not None:
        if not args.weights.is_file():
            raise FileNotFoundError(f"weights file not found: {args.weights}")
        load_checkpoint(model, args.weights)
    maps = ghost_feature_maps(model, load_image(args.image, model), args.layer)
    try:
        plot_ghost_maps(maps, output, num_maps=args.num_maps)
    except ImportError as exc:
        raise ValueError(str(exc)) from exc
    print(f"{maps.path}: {maps.intrinsic.shape[0]} intrinsic and {maps.ghost.shape[0]} ghost maps of "
          f"{maps.intrinsic.shape[1]}x{maps.intrinsic.shape[2]} -> {output}")
    return 0
