"""`ghostnet models` (list the registry), `ghostnet info MODEL` and `ghostnet convert` (checkpoints to safetensors)."""
from __future__ import annotations

import argparse

from ..utils import ensure_writable


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'ghostnetv2*'")
    p.set_defaults(func=run_models)

    p = subparsers.add_parser("info", help="show a model's parameters, data config and feature taps")
    p.add_argument("model")
    p.set_defaults(func=run_info)

    p = subparsers.add_parser(
        "convert", help="load any checkpoint we read (official, timm, PaddleClas .pdparams, MindSpore .ckpt) into a "
        "model and save its state_dict as safetensors (or .pth), with our (= timm's) key names")
    p.add_argument("checkpoint", help="a file, a URL or a published weights tag of MODEL (e.g. mindcv, ssld)")
    p.add_argument("--model", required=True, help="registered model the checkpoint is for")
    p.add_argument("-o", "--output", required=True, help="output file: .safetensors (recommended) or .pth")
    p.add_argument("--use-ema", action="store_true", help="take the EMA copy stored in a training checkpoint")
    p.set_defaults(func=run_convert)


def run_models(args: argparse.Namespace) -> int:
    from ..models.registry import get_model_entry, list_models

    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}")
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {get_model_entry(name).description}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..models.registry import create_model

    model = create_model(args.model)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {params / 1e6:.2f}M parameters")
    for key, value in model.pretrained_cfg.items():
        print(f"  {key}: {value}")
    for tap in getattr(model, "feature_info", []):
        print(f"  tap {tap.module}: {tap.num_chs} channels at stride {tap.reduction}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..convert.checkpoints import load_checkpoint, looks_like_location, save_checkpoint
    from ..models.registry import create_model

    output = Path(args.output)
    if output.suffix not in (".safetensors", ".pth", ".pt"):
        raise ValueError(f"output must end in .safetensors, .pth or .pt, got {output.name!r}")
    ensure_writable(output, "--output")
    if looks_like_location(args.checkpoint):
        model = load_checkpoint(create_model(args.model), args.checkpoint, use_ema=args.use_ema)
    else:
        if args.use_ema:
            raise ValueError("--use-ema applies to a checkpoint file; a weights tag already says which copy it is")
        model = create_model(args.model, pretrained=args.checkpoint)
    metadata = {"model": args.model, "source": str(args.checkpoint), "format": "pt"}
    save_checkpoint(model.state_dict(), output, metadata=metadata)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {output} ({args.model}, {params / 1e6:.2f}M parameters, from {args.checkpoint})")
    return 0
