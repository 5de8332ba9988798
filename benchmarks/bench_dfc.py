"""The DFC attention's deploy form against the training form it replaced, side by side, with MobileNetV3-Large.

    python benchmarks/bench_dfc.py [--models ghostnetv2_100,ghostnetv3_100] [--threads 1,2] [--rounds 9]
        [--reps 20] [--out results/dfc]

Every candidate runs in this one process, interleaved by the latency harness (`deploy.bench_timing`): for each of
`--models`, onnxruntime on the export `ghostnet export --align-channels auto` writes (fused, aligned to this CPU's
NCHWc block, DFC gate in deploy form, `deploy.dfc.DeployDFC`) and on the same export with the gate put back in its
training form (`deploy.dfc.TrainingFormDFC`: what the export was before), the fused PyTorch model in both forms
(channels-last), ghostnet_100 (no DFC) in onnxruntime, and timm's mobilenetv3_large_100 exported plainly, the
reference of the ratio columns. Writes NAME.md and NAME.json; the section "DFC attention in onnxruntime" of
docs/benchmarks.md comes from it.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from ghostnet.deploy import fuse
from ghostnet.deploy.align import align_channels, resolve_alignment
from ghostnet.deploy.bench_config import BenchConfig, PreparedModel, build_model
from ghostnet.deploy.bench_timing import measure_interleaved
from ghostnet.deploy.dfc import use_training_form_dfc
from ghostnet.deploy.onnx_io import export_onnx, onnx_session
from ghostnet.deploy.machine import environment, load_average
from ghostnet.utils import atomic_write

REFERENCE = "timm/mobilenetv3_large_100"


def candidates(models: list[str], x: torch.Tensor, align: int, workdir: Path) -> list[tuple]:
    """(label, backend, ONNX file or fused module) for every candidate."""
    out = []
    for name in models + ["ghostnet_100"]:
        _, _, model = build_model(name)
        forms = ["deploy", "training"] if name in models else ["deploy"]
        for form in forms:
            fused, exported = fuse(model, example_input=x), fuse(model, example_input=x)
            exported = align_channels(exported, align) if align else exported
            if form == "training":
                use_training_form_dfc(fused)
                use_training_form_dfc(exported)
            label = f"{name} ({form} DFC)" if name in models else name
            path = export_onnx(exported, workdir / f"{name}.{form}.onnx", x)
            out.append((label, "onnxruntime", path))
            if name in models:
                out.append((label, "fused", fused.to(memory_format=torch.channels_last)))
    _, _, peer = build_model("timm:mobilenetv3_large_100")
    out.append((REFERENCE, "onnxruntime", export_onnx(peer, workdir / "peer.onnx", x)))
    return out


def runner(kind: str, what, x: torch.Tensor, threads: int):
    """One measured call: an onnxruntime session run, or a fused PyTorch forward."""
    if kind == "onnxruntime":
        session = onnx_session(what, threads=threads)
        feed = {session.get_inputs()[0].name: x.numpy()}
        return lambda: session.run(None, feed)

    def forward():
        with torch.inference_mode():
            return what(x)
    return forward


def report(rows: list, env: dict, align: int) -> str:
    """Markdown: per thread count and backend, best-round latency, CPU time and both ratios to the reference."""
    lines = [f"Machine: {env['cpu']} ({env['isa']}; PyTorch kernels {env['aten_cpu_capability']}"
             + "".join(f", {k}={v}" for k, v in env["isa_overrides"].items())
             + f"), {env['cpu_count']} CPUs; torch {env['torch']}, onnxruntime {env['onnxruntime']}, timm "
             f"{env['timm']}; {env['date']}; load average {env['load_average']} before, "
             f"{env.get('load_average_after')} after. Our exports aligned to {align} channels.", ""]
    for threads in sorted({r.threads for r in rows}):
        group = [r for r in rows if r.threads == threads]
        ref = next(r for r in group if r.model == REFERENCE)
        lines += [f"**{threads} thread(s)**, batch 1, 224x224; ratios against {REFERENCE} in onnxruntime", "",
                  "| model | backend | best ms | median ms | CPU ms/call | latency ratio | CPU-time ratio |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(group, key=lambda r: (r.backend, r.best_round_ms)):
            lines.append(f"| {r.model} | {r.backend} | {r.best_round_ms:.2f} | {r.median_ms:.2f} | {r.cpu_ms:.2f} | "
                         f"{r.best_round_ms / ref.best_round_ms:.2f} | {r.cpu_ms / ref.cpu_ms:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="ghostnetv2_100,ghostnetv3_100")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--align", default="auto")
    parser.add_argument("--out", type=Path, default=Path("results/dfc"))
    args = parser.parse_args()
    cfg = BenchConfig(rounds=args.rounds, reps=args.reps, warmup=5)
    align = resolve_alignment(args.align)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    env, rows = environment(), []
    with tempfile.TemporaryDirectory() as tmp:
        found = candidates(args.models.split(","), x, align, Path(tmp))
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            runners = [(PreparedModel(label, "ghostnet", torch.nn.Identity(), 0, 0), kind,
                        runner(kind, what, x, threads), kind) for label, kind, what in found]
            rows += measure_interleaved(runners, cfg, threads, lambda message: print(message, flush=True))
    env["load_average_after"] = load_average()
    text = report(rows, env, align)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".md")) as tmp_path:
        tmp_path.write_text(text)
    with atomic_write(args.out.with_suffix(".json")) as tmp_path:
        tmp_path.write_text(json.dumps({"environment": env, "align": align, "rows": [asdict(r) for r in rows]},
                                       indent=2))
    print(text)


if __name__ == "__main__":
    main()
