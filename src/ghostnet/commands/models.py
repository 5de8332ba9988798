"""`ghostnet models` (list the registry) and `ghostnet info MODEL`."""
from __future__ import annotations

import argparse


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'ghostnetv2*'")
    p.set_defaults(func=run_models)

    p = subparsers.add_parser("info", help="show a model's parameters, data config and feature taps")
    p.add_argument("model")
    p.set_defaults(func=run_info)


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
