"""What the runtime benchmarks (bench_ncnn.py, bench_litert.py) share: their command line, timm's models as timm
users deploy them, and writing a table as OUT.md and OUT.json."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ghostnet.utils import atomic_write


def runtime_bench_arguments(description: str, models: tuple[str, ...], rounds: int,
                            out: str) -> argparse.ArgumentParser:
    """The options every runtime benchmark takes: models, timing, output, and the int8 study instead."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", default=",".join(models))
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--int8-run", type=Path, help="instead: the int8 study of this CIFAR-10 `ghostnet train` run "
                        "folder (its last.safetensors), on --data")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cifar10"))
    return parser


def timm_model(name: str) -> torch.nn.Module:
    """timm's model as its users deploy it: random weights (latency does not depend on them), re-parameterized."""
    import timm
    from timm.utils.model import reparameterize_model

    return reparameterize_model(timm.create_model(name).eval())


def write(out: Path, lines: list[str], data: dict) -> None:
    """OUT.md (the tables) and OUT.json (everything)."""
    print("\n".join(lines))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_write(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
