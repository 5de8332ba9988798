"""ParameterNet-600M in onnxruntime: an export for one batch size against a dynamic-batch export, side by side.

    python benchmarks/bench_parameternet_export.py [--threads 1,2] [--rounds 9] [--reps 10] [--out results/pnet]

Both files come from the same fused model (`ghostnet.deploy.fuse`); the dynamic-batch one is what `ghostnet export`
writes by default (dynamic convs in their traceable form: every expert computed for convs other than 1x1), the other
what `ghostnet export --no-dynamic-batch` writes (`layers.dynamic_conv.static_batch_capture`: one mixed kernel per
sample). Batch 1, 224x224, timed interleaved by the latency harness (`deploy.bench_timing`). Writes NAME.md; the
numbers in docs/benchmarks.md ("ParameterNet: static-batch export") come from it.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import ghostnet
from ghostnet.analysis.macs import count_macs
from ghostnet.deploy import fuse
from ghostnet.deploy.bench_config import BenchConfig, PreparedModel
from ghostnet.deploy.bench_timing import measure_interleaved
from ghostnet.deploy.onnx_io import export_onnx, onnx_session
from ghostnet.deploy.machine import environment, load_average
from ghostnet.layers.dynamic_conv import CondConv2d
from ghostnet.utils import atomic_write


def traceable_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """The multiply-adds of the form a dynamic-batch export records."""
    convs = [m for m in model.modules() if isinstance(m, CondConv2d)]
    for conv in convs:
        conv.impl = "traceable"
    try:
        return count_macs(model, x)
    finally:
        for conv in convs:
            conv.impl = "auto"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("results/parameternet_export"))
    args = parser.parse_args()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    fused = fuse(ghostnet.create_model("parameternet_600m").eval(), example_input=x)
    macs = {"dynamic batch": traceable_macs(fused, x), "static batch": count_macs(fused, x)}
    env, rows = environment(), []
    cfg = BenchConfig(rounds=args.rounds, reps=args.reps, warmup=3)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"dynamic batch": export_onnx(fused, Path(tmp) / "dynamic.onnx", x),
                 "static batch": export_onnx(fused, Path(tmp) / "static.onnx", x, dynamic_batch=False)}
        for threads in [int(t) for t in args.threads.split(",")]:
            runners = []
            for label, path in files.items():
                session = onnx_session(path, threads=threads)
                feed = {session.get_inputs()[0].name: x.numpy()}
                runners.append((PreparedModel(label, "ghostnet", torch.nn.Identity(), macs[label], 0), "onnxruntime",
                                lambda s=session, f=feed: s.run(None, f), "onnxruntime"))
            rows += measure_interleaved(runners, cfg, threads, lambda message: print(message, flush=True))
    lines = [f"ParameterNet-600M (fused), onnxruntime, batch 1, 224x224; {env['cpu']} ({env['isa']}), "
             f"onnxruntime {env['onnxruntime']}, torch {env['torch']}; {env['date']}; load average "
             f"{env['load_average']} before, {load_average()} after", "",
             "| export | threads | MACs (M) | best ms | median ms | CPU ms/call | ratio |",
             "|---|---|---|---|---|---|---|"]
    for threads in sorted({r.threads for r in rows}):
        group = [r for r in rows if r.threads == threads]
        base = next(r for r in group if r.model == "dynamic batch").best_round_ms
        lines += [f"| {r.model} | {threads} | {macs[r.model] / 1e6:.0f} | {r.best_round_ms:.2f} | {r.median_ms:.2f} | "
                  f"{r.cpu_ms:.2f} | {r.best_round_ms / base:.2f} |" for r in group]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".md")) as tmp_path:
        tmp_path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
