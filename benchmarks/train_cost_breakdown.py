"""Where a CPU training step's time goes, model against model: the step at the trainer's layout, the fixed cost of a
step (the same model on a batch of 2 at 8x8, where no kernel has work to speak of), oneDNN's convolution time (the
sum of its own execution times, from its verbose log), and the activations the forward saves for the backward.

Written to explain why Ghost-ResNet-56 trains at 0.96-0.98x ResNet-56's images/s on an AVX-512 Xeon although its
convolutions take less time (docs/benchmarks.md, "Ghost twins: training speed"). Every model takes its turn in each
round, so load from other processes hits all alike.

    python benchmarks/train_cost_breakdown.py --models ghost_resnet56_cifar,resnet56_cifar --threads 2
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import ghostnet
from ghostnet.allocator import tune_allocator
from ghostnet.analysis.training_layout import choose_training_layout
from ghostnet.deploy.bench_timing import median_ms, time_interleaved
from ghostnet.hardware import cpu_name

from bench_common import write

CL = torch.channels_last


def sgd_step(model: torch.nn.Module, batch: int, size: int, memory_format: torch.memory_format) -> Callable[[], None]:
    """One SGD step (forward, cross-entropy, backward, momentum update) of `model` on a fixed random batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,), generator=generator)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def onednn_exec_ms(step: Callable[[], None]) -> dict[str, float]:
    """Milliseconds oneDNN's primitives spent executing during one `step`, by kind (its verbose log, which it writes
    to the process's standard output: caught at the file descriptor)."""
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                step()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        totals: dict[str, float] = {}
        for line in log:
            fields = line.strip().split(",")
            if len(fields) > 6 and fields[0] == "onednn_verbose" and fields[2] == "primitive" and fields[3] == "exec":
                totals[fields[5]] = totals.get(fields[5], 0.0) + float(fields[-1])
    return totals


def saved_activation_mb(model: torch.nn.Module, batch: int, size: int, memory_format: torch.memory_format) -> float:
    """MB of the distinct storages the forward saves for the backward (a batch of `batch` at `size`)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.randn(batch, 3, size, size).contiguous(memory_format=memory_format)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(x).sum()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="ghost_resnet56_cifar,resnet56_cifar")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_cost_breakdown"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    allocator = tune_allocator()
    names = [n for n in args.models.split(",") if n]
    models, layouts = {}, {}
    for name in names:
        model = ghostnet.create_model(name).train()
        example = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
        layouts[name] = choose_training_layout(model, example, num_classes=10, model_name=name).layout
        models[name] = layouts[name].apply(model)
    full = [sgd_step(models[n], args.batch_size, args.image_size, layouts[n].memory_format) for n in names]
    tiny = [sgd_step(models[n], 2, 8, layouts[n].memory_format) for n in names]
    # The models take turns in every round; the warm-up settles the backward plans and oneDNN's primitive cache.
    full_samples = time_interleaved(full, args.rounds, reps=1, warmup=1)
    tiny_samples = time_interleaved(tiny, args.rounds, reps=5, warmup=1)
    rows = {}
    for i, name in enumerate(names):
        execs = onednn_exec_ms(full[i])
        rows[name] = {
            "layout": layouts[name].name,
            "step_ms": median_ms(full_samples[i][0]),
            "fixed_step_ms": median_ms(tiny_samples[i][0]),
            "onednn_conv_ms": execs.get("convolution", 0.0),
            "onednn_other_ms": sum(v for k, v in execs.items() if k != "convolution"),
            "conv_layers": sum(isinstance(m, torch.nn.Conv2d) for m in models[name].modules()),
            "saved_activations_mb": saved_activation_mb(models[name], args.batch_size, args.image_size,
                                                        layouts[name].memory_format),
        }
    lines = [f"Machine: {cpu_name()}, ATen {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, "
             f"{args.threads} threads; batch {args.batch_size} at {args.image_size}x{args.image_size}; "
             f"{args.rounds} rounds, medians; allocator tuned: {allocator.get('applied')}", "",
             "| model | layout | step ms | fixed cost ms (batch 2, 8x8) | oneDNN conv exec ms | step outside "
             "oneDNN ms | conv layers | saved activations MB |", "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        outside = row["step_ms"] - row["onednn_conv_ms"] - row["onednn_other_ms"]
        lines.append(f"| {name} | {row['layout']} | {row['step_ms']:.0f} | {row['fixed_step_ms']:.1f} | "
                     f"{row['onednn_conv_ms']:.0f} | {outside:.0f} | {row['conv_layers']} | "
                     f"{row['saved_activations_mb']:.0f} |")
    write(args.out, lines, {"machine": cpu_name(), "aten_isa": torch.backends.cpu.get_cpu_capability(),
                            "torch": torch.__version__, "threads": args.threads, "batch_size": args.batch_size,
                            "image_size": args.image_size, "rounds": args.rounds, "allocator": allocator,
                            "models": rows})


if __name__ == "__main__":
    main()
