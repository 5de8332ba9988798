"""Shared parts of the training benchmarks: run one configuration, count its cost, describe the machine."""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

#: Real data beside the checkout (../shared/data), or $GHOSTNET_DATA.
SHARED_DATA = Path(os.environ.get("GHOSTNET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def cost(model_spec: str, input_size: int, **kwargs: Any) -> tuple[float, float]:
    """(parameters in millions, multiply-accumulates in millions) of one image (torch.utils.flop_counter / 2)."""
    from ghostnet.analysis.macs import count_macs

    model = modelspec_create(model_spec, **kwargs).eval()
    macs = count_macs(model, torch.randn(1, 3, input_size, input_size))
    return sum(p.numel() for p in model.parameters()) / 1e6, macs / 1e6


def run(recipe: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train `recipe` with `overrides`; the run's wall time, per-epoch times and final metrics."""
    from ghostnet.train import load_recipe, train

    cfg = load_recipe(recipe, overrides)
    start = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - start
    history = result["history"]
    last = history[-1]
    return {"model": cfg.model, "recipe": recipe, "overrides": overrides, "wall_s": wall,
            "epoch_time_s": [row["epoch_time_s"] for row in history],
            "train_img_s": sum(r["train_img_s"] for r in history) / len(history),
            "val_top1": last.get("val_top1"), "val_top5": last.get("val_top5"), "train_loss": last["train_loss"],
            "history": history}


def machine() -> dict[str, str]:
    """Versions and processor of this machine."""
    from ghostnet.deploy.machine import environment

    env = environment()
    info = {key: str(env[key]) for key in ("python", "torch", "torchvision")}
    info.update(threads=str(torch.get_num_threads()), cpus=str(env["cpu_count"]), cpu=env["cpu"])
    if env["timm"]:
        info["timm"] = env["timm"]
    return info


def save(results: dict[str, Any], path: Path) -> None:
    """Write the results as JSON (atomically)."""
    from ghostnet.utils import atomic_write

    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(results, indent=1))


def arguments(description: str, data: str, subset: int, val_subset: int, epochs: int, workers: int,
              out: str) -> argparse.ArgumentParser:
    """The options every training benchmark takes, with its own defaults."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", default=str(SHARED_DATA / data))
    parser.add_argument("--subset", type=int, default=subset, help="training images, a fixed pseudo-random "
                        "selection (0: all)")
    parser.add_argument("--val-subset", type=int, default=val_subset, help="validation images (0: all)")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--workers", type=int, default=workers, help="data-loading processes")
    parser.add_argument("--models", nargs="*", help="run only these of the models")
    parser.add_argument("--out", default=out, help="results JSON")
    parser.add_argument("--throughput-rounds", type=int, default=3, help="rounds of the interleaved training-speed "
                        "measurement after the runs (0: none)")
    parser.add_argument("--skip-training", action="store_true", help="only measure the interleaved training speed")
    return parser


def run_all(args: argparse.Namespace, recipe: str, models: Sequence[tuple[str, dict]], input_size: int,
            **overrides: Any) -> dict[str, Any]:
    """Train each model with `recipe` and the common overrides; save and print the results as they come."""
    if not Path(args.data).is_dir():
        raise SystemExit(f"data not found at {args.data} (set GHOSTNET_DATA or --data)")
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"machine": machine(), "args": vars(args), "runs": []}
    models = [(name, kwargs) for name, kwargs in models if not args.models or name in args.models]
    for name, kwargs in ([] if args.skip_training else models):
        params, macs = cost(name, input_size, num_classes=10, **kwargs)
        with tempfile.TemporaryDirectory() as out:
            record = run(recipe, dict(model=name, data=args.data, subset=args.subset or None,
                                      val_subset=args.val_subset or None, epochs=args.epochs, eval_every=args.epochs,
                                      workers=args.workers, output=out, progress=False, plots=False,
                                      **({"model_kwargs": kwargs} if kwargs else {}), **overrides))
        record.update(params_m=params, macs_m=macs)
        results["runs"].append(record)
        save(results, Path(args.out))
        times = record["epoch_time_s"]
        print(f"{name}: top-1 {record['val_top1']:.2f}%  top-5 {record['val_top5']:.2f}%  {params:.3f}M params  "
              f"{macs:.1f}M MACs  {sum(times) / len(times):.0f} s/epoch  {record['wall_s']:.0f} s wall  "
              f"{record['train_img_s']:.1f} img/s", flush=True)
    if args.throughput_rounds:
        results["throughput_img_s"] = interleaved_throughput(models, input_size, rounds=args.throughput_rounds)
        save(results, Path(args.out))
        print("training speed, interleaved (img/s, batch 128, random data): " + ", ".join(
            f"{name} {rate:.1f}" for name, rate in results["throughput_img_s"].items()), flush=True)
    return results


def interleaved_throughput(models: Sequence[tuple[str, dict]], input_size: int, batch_size: int = 128,
                           steps: int = 5, rounds: int = 3) -> dict[str, float]:
    """Training images/s of each model (SGD step on random data, no loading), measured in turns, best round kept.

    Taking turns inside one process puts every model under the same load, so the ratios are fair on a shared machine
    even when the absolute numbers drift.
    """
    built = {}
    for name, kwargs in models:
        model = modelspec_create(name, num_classes=10, **kwargs)
        built[name] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    x = torch.randn(batch_size, 3, input_size, input_size)
    y = torch.randint(0, 10, (batch_size,))
    best = {name: 0.0 for name in built}
    for _ in range(rounds):
        for name, (model, optimizer) in built.items():
            model.train()
            loss = torch.nn.functional.cross_entropy(model(x), y)  # warm-up step, untimed
            loss.backward()
            start = time.perf_counter()
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
            best[name] = max(best[name], steps * batch_size / (time.perf_counter() - start))
    return best


def modelspec_create(name: str, **kwargs: Any) -> torch.nn.Module:
    """A model by trainer name (registered, or timm:NAME)."""
    from ghostnet.models.spec import create_from_spec

    return create_from_spec(name, **kwargs)
