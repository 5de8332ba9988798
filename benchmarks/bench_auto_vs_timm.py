"""`ghostnet export --format auto` against timm's models exported plainly, each in every installed runtime, in one run.

    python benchmarks/bench_auto_vs_timm.py [--threads 1,2] [--rounds 9] [--reps 20] [--out results/auto_vs_timm]
        [--runtimes onnxruntime,openvino]

For each pair (ghostnet_100, ghostnetv2_100, ghostnetv3_100, repghostnet_100 and timm's model of the same name), the
latency harness runs `--backends best` (deploy/bench_backends.py): ours in the form and runtime `--format auto`
chooses on this machine (measured, checked against the float64 reference, cached per CPU), timm's as a timm user
exports it (torch.onnx.export of the model, re-parameterized where timm offers it, batch 1; OpenVINO converts that
ONNX file) in onnxruntime and in OpenVINO, interleaved with timm's mobilenetv3_large_100 for scale. The ratio column
divides ours by the faster of timm's runtimes: "ours vs timm" is never ours-tuned against theirs-untuned. Only the
`--runtimes` named take part (default: the two server runtimes the comparison is about). Writes
NAME.md (the table docs/benchmarks.md quotes) and NAME.json (every row, the machine, the choices' records).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import asdict
from pathlib import Path

from ghostnet.deploy.bench import BenchConfig, run_benchmark
from ghostnet.deploy.runtimes import list_runtimes, register_runtime
from ghostnet.utils import atomic_write

PAIRS = ("ghostnet_100", "ghostnetv2_100", "ghostnetv3_100", "repghostnet_100")
SCALE = "timm:mobilenetv3_large_100"


def table(rows: list, threads: int) -> list[str]:
    """Markdown rows: ours (runtime chosen), timm in each runtime, ratio to the faster timm."""
    at = [r for r in rows if r.threads == threads]
    runtimes = sorted({r.runtime for r in at if r.source == "timm"})
    lines = ["| network | ours (`--format auto`) | " + " | ".join(f"timm, {rt}" for rt in runtimes)
             + " | ours / faster timm |", "|---|---|" + "---|" * len(runtimes) + "---|"]
    for name in PAIRS + (SCALE.split(":")[1],):
        ours = next((r for r in at if r.model == name and r.source == "ghostnet" and r.backend == "best"), None)
        theirs = {r.runtime: r.median_ms for r in at if r.model == f"timm/{name}"}
        if not theirs:
            continue
        cells = " | ".join(f"{theirs[rt]:.2f}" if rt in theirs else "-" for rt in runtimes)
        ours_cell = f"{ours.median_ms:.2f} ({ours.runtime})" if ours else "-"
        ratio = f"**{ours.median_ms / min(theirs.values()):.3f}x**" if ours else "-"
        lines.append(f"| {name} | {ours_cell} | {cells} | {ratio} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("results/auto_vs_timm"))
    parser.add_argument("--runtimes", default="onnxruntime,openvino")
    args = parser.parse_args()
    for runtime in list_runtimes(files=True):  # "best" and --format auto choose among tunable runtimes
        register_runtime(dataclasses.replace(runtime, tunable=runtime.name in args.runtimes.split(",")),
                         replace=True)
    cfg = BenchConfig(models=list(PAIRS), peers=[f"timm:{n}" for n in PAIRS] + [SCALE], backends=["best"],
                      threads=[int(t) for t in args.threads.split(",")], rounds=args.rounds, reps=args.reps,
                      warmup=5)
    result = run_benchmark(cfg, progress=lambda message: print(message, flush=True))
    env = result.environment
    lines = [f"{env['cpu']}, {env['isa']}, {env['cpu_count']} vCPUs; torch {env['torch']}, onnxruntime "
             f"{env.get('onnxruntime')}, OpenVINO {env.get('openvino')}, timm {env['timm']}; load average "
             f"{env['load_average']} before, {env['load_average_after']} after; {env['date']}. Median ms per call, "
             "batch 1, 224x224, float32."]
    for threads in cfg.threads:
        lines += ["", f"{threads} thread(s):", ""] + table(result.rows, threads)
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".md")) as tmp:
        tmp.write_text(text)
    with atomic_write(args.out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({**result.to_dict(), "rows": [asdict(r) for r in result.rows]}, indent=1))


if __name__ == "__main__":
    main()
