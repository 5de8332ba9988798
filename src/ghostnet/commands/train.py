"""`ghostnet train`, `ghostnet eval` and `ghostnet predict`: argument parsing only; the work is in ghostnet.train.

Every TrainConfig field is a `ghostnet train` flag (`batch_size` -> `--batch-size`); flags override the recipe.
"""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from ..utils import check_folder_writable, ensure_writable, print_error

if TYPE_CHECKING:
    from ..train.config import TrainConfig

#: Flags spelled differently from their config field.
FLAG_NAMES = {"output": ("--output", "-o")}


def _parse_list(text: str) -> list:
    """'0.1,0.2' or '[0.1, 0.2]' -> [0.1, 0.2] (numbers where they parse)."""
    import yaml

    value = yaml.safe_load(text if text.strip().startswith("[") else f"[{text}]")
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return value


def _parse_mapping(text: str) -> dict:
    """JSON or YAML flow mapping, e.g. '{stem_stride: 1, drop_rate: 0.2}'."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"not a mapping: {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping like '{{stem_stride: 1}}', got {text!r}")
    return value


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from ..train.config import TrainConfig, config_fields

    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("training settings (override the recipe)")
    for name, f in config_fields().items():
        if not f.metadata.get("cli", True):
            continue
        hint = hints[name]
        args = typing.get_args(hint)
        base = next(a for a in args if a is not type(None)) if typing.get_origin(hint) is Union else hint
        flags = FLAG_NAMES.get(name, ("--" + name.replace("_", "-"),))
        kwargs: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=f.metadata.get("help"))
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif base is list:
            kwargs.update(type=_parse_list, metavar="A,B,...")
        elif base is dict:
            kwargs.update(type=_parse_mapping, metavar="MAPPING")
        else:
            kwargs.update(type=base, metavar=f.metadata.get("metavar", name.split("_")[-1].upper()))
        if "cli_const" in f.metadata:  # e.g. a bare --pretrained means --pretrained true
            kwargs.update(nargs="?", const=f.metadata["cli_const"])
        group.add_argument(*flags, **kwargs)
        if "cli_negative" in f.metadata:  # e.g. --no-channels-last means --channels-last false
            negative = f.metadata["cli_negative"]
            group.add_argument("--no-" + name.replace("_", "-"), dest=name, action="store_const", const=negative,
                               default=argparse.SUPPRESS, help=f"same as {flags[0]} {negative}")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model (alone, or under torchrun for DDP)",
                              description="Train a model from a recipe; flags override the recipe's settings. "
                              "Multi-process: torchrun --nproc_per_node=N -m ghostnet train ...")
    p.add_argument("--recipe", help="shipped recipe name (see --list-recipes) or a YAML file")
    p.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="FILE",
                   help="continue a run exactly: FILE, or OUTPUT/last.pt when no file is given")
    _add_config_flags(p)
    p.set_defaults(func=run_train)

    p = subparsers.add_parser("eval", help="evaluate a checkpoint: top-1/top-5, per-class accuracy, confusion matrix")
    _add_weights_source(p, "last.pt / best.pt / *.safetensors from ghostnet train (or any checkpoint with --model)")
    p.add_argument("--data", required=True, help="ImageFolder root, folder of .npz shards, or cifar10/cifar100")
    p.add_argument("--split", default="val", choices=("train", "val"))
    p.add_argument("--model", help="model spec (NAME, timm:NAME, torchvision:NAME, package.module:callable), for "
                   "checkpoints that do not name their model (official, timm)")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of a training checkpoint")
    p.add_argument("--json", help="write the metrics (with per-class accuracy and confusion matrix) to this file")
    p.add_argument("--confusion", help="write the confusion-matrix PNG to this file")
    p.add_argument("--img-size", type=int, help="evaluate at another image size")
    p.add_argument("--val-subset", type=int, metavar="N",
                   help="evaluate on a fixed pseudo-random selection of N samples (train's flag)")
    p.add_argument("--ignore-class-names", action="store_true",
                   help="evaluate even if the checkpoint's class names differ from the data's")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--skip-corrupt", action="store_true", help="skip (and count) unreadable images")
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser("predict", help="classify image files with a trained checkpoint")
    p.add_argument("images", nargs="+", help="image files")
    _add_weights_source(p, "checkpoint or export from ghostnet train (or any with --model)")
    p.add_argument("--model", help="model name, for checkpoints that do not name their model")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--labels", help="class names, one per line (or id<TAB>name)")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of a training checkpoint")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=run_predict)


def _add_weights_source(parser: argparse.ArgumentParser, checkpoint_help: str) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help=checkpoint_help)
    source.add_argument("--pretrained", nargs="?", const=True, metavar="TAG",
                        help="the published weights of --model (its default, or the weights tag given)")


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from ..train.config import config_fields

    return {name: getattr(args, name) for name in config_fields() if hasattr(args, name)}


def build_train_config(args: argparse.Namespace) -> tuple["TrainConfig", Optional[Path]]:
    """(TrainConfig, resume path or None) from parsed `ghostnet train` arguments."""
    from ..train.resume import run_config

    return run_config(args.recipe, _config_overrides(args), args.resume, flag_label)


def flag_label(field: str, value: Any) -> str:
    """How the user typed a setting: '--epochs 0'."""
    flag = FLAG_NAMES.get(field, ("--" + field.replace("_", "-"),))[0]
    return f"{flag} {value}"


def run_train(args: argparse.Namespace) -> int:
    from ..train import list_recipes, train

    if args.list_recipes:
        recipes = list_recipes()
        width = max(map(len, recipes), default=0)
        for name, description in recipes.items():
            print(f"{name:<{width}}  {description}")
        return 0
    from ..train.guard import DIVERGED_STATUS, TrainingDiverged

    cfg, resume = build_train_config(args)
    check_folder_writable(cfg.output, "--output")
    try:
        result = train(cfg, resume=resume)
        if result["best_epoch"] > 0:
            print(f"best top-1 {result['best_top1']:.2f}% at epoch {result['best_epoch']}; outputs in "
                  f"{result['output']}")
    except KeyboardInterrupt:  # in any phase, to the last line: the answer is always how to go on
        print_error(interrupted_message(Path(cfg.output)))
        return 128 + signal.SIGINT
    except TrainingDiverged as exc:
        print_error(f"ghostnet train: error: {exc}")
        return DIVERGED_STATUS
    return 0


def interrupted_message(output: Path) -> str:
    """What a user needs after Ctrl-C: where the last checkpoint is and the command that continues from it."""
    from ..train.state import read_training_state

    last = output / "last.pt"
    if not last.is_file():
        return (f"ghostnet train: interrupted before the first checkpoint; nothing to resume in {output} "
                "(--save-every-steps N saves within an epoch)")
    state = read_training_state(last)
    progress, resume = state["progress"], f"ghostnet train --resume --output {shlex.quote(str(output))}"
    if progress["epoch"] >= state["config"].get("epochs", progress["epoch"] + 1):
        return (f"ghostnet train: interrupted after the last epoch; the run's checkpoint is {last}; finish its last "
                f"outputs (plots) with: {resume}")
    return (f"ghostnet train: interrupted; the last checkpoint is {last} (epoch {progress['epoch'] + 1}, step "
            f"{progress['step_in_epoch']}); continue exactly with: {resume}")


def run_eval(args: argparse.Namespace) -> int:
    from ..train.evaluation import evaluate_checkpoint
    from ..utils import atomic_write

    for flag, path in (("--json", args.json), ("--confusion", args.confusion)):
        if path:
            ensure_writable(path, flag)
    evaluation = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, use_ema=args.ema,
                                     model_name=args.model, batch_size=args.batch_size, workers=args.workers,
                                     device=args.device, subset_size=args.val_subset, img_size=args.img_size,
                                     skip_corrupt=args.skip_corrupt, pretrained=args.pretrained,
                                     check_classes=not args.ignore_class_names)
    r = evaluation.result
    if evaluation.imagenet_indices is not None:
        print(f"ImageNet-1k model on {len(evaluation.classes)} of its classes: logits restricted to their indices")
    print(f"top-1 {r.top1:.2f}%  top-5 {r.top5:.2f}%  loss {r.loss:.4f}  ({r.count} images"
          + (f", {r.skipped} unreadable skipped" if r.skipped else "") + ")")
    width = max(map(len, evaluation.classes))
    for name, acc in zip(evaluation.classes, r.per_class):
        print(f"  {name:<{width}}  {'n/a' if acc != acc else f'{100 * acc:6.2f}%'}")
    if args.json:
        with atomic_write(args.json) as tmp:
            record = {"checkpoint": args.checkpoint, "pretrained": args.pretrained, "data": str(args.data),
                      "split": args.split, "ema": args.ema}
            tmp.write_text(json.dumps({**record, **evaluation.to_dict()}, indent=1))
    if args.confusion:
        from ..train.plots import plot_confusion

        plot_confusion(r.confusion, evaluation.classes, args.confusion)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..train.evaluation import load_for_inference, predict

    trained = load_for_inference(args.checkpoint, args.ema, args.model, args.pretrained)
    results = predict(trained, args.images, topk=args.topk, labels=args.labels, device=args.device)
    for item in results:
        if "warning" in item:
            print_error(f"ghostnet predict: warning: {item['warning']}")
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for item in results:
        print(item["image"])
        for rank, top in enumerate(item["top"], 1):
            print(f"  {rank}. {top['class']}  {100 * top['prob']:.2f}%")
    return 0
