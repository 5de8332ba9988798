"""`ghostnet models` (list the registry), `ghostnet info MODEL` and `ghostnet convert` (checkpoints to safetensors)."""
from __future__ import annotations

import argparse


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
    """`ghostnet convert`: a checkpoint (or published weights tag) in our key names, as safetensors or .pth."""
    from ..convert.checkpoints import convert_checkpoint

    model = convert_checkpoint(args.checkpoint, args.model, args.output, use_ema=args.use_ema)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output} ({args.model}, {params / 1e6:.2f}M parameters, from {args.checkpoint})")
    return 0
