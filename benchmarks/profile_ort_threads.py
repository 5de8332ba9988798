"""Where onnxruntime spends its time at one and two threads: our aligned GhostNet against MobileNetV3-Large.

    python benchmarks/profile_ort_threads.py [--rounds 16] [--out results/ort_threads.md]

Exports ghostnet_100 as `ghostnet export --align-channels` writes it (fused, channel-aligned, single-path Ghost
modules where they pay) and timm's mobilenetv3_large_100 as it is, opens four profiling sessions (two models, one
and two threads) that take turns for `--rounds` rounds of 8 runs, and sums each node's 10th-percentile kernel time
by kind of node. The table in docs/benchmarks.md ("Why two threads hurt GhostNet in onnxruntime") comes from it.
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from ghostnet import create_model
from ghostnet.deploy import fuse
from ghostnet.deploy.align import align_channels, nchwc_block_size
from ghostnet.deploy.export import export_onnx
from ghostnet.deploy.machine import environment
from ghostnet.models.spec import create_from_spec as create_spec
from ghostnet.utils import atomic_write

MODELS = {"GhostNet": "ghostnet_100", "MobileNetV3": "timm:mobilenetv3_large_100"}
THREADS = (1, 2)


def export(name: str, spec: str, workdir: Path, x: torch.Tensor) -> Path:
    if spec.startswith("timm:"):
        model = create_spec(spec).eval()
    else:
        model = align_channels(fuse(create_model(spec).eval(), example_input=x), nchwc_block_size() or 16)
    return export_onnx(model, workdir / f"{name}.onnx", x)


def node_kind(op: str, inputs: list, outputs: list) -> str:
    if op != "Conv":
        return op
    weight = inputs[1] if len(inputs) > 1 else None
    size = outputs[0][2]
    if weight is not None and weight[1] == 1 and outputs[0][1] > 1:
        return f"depthwise conv @{size}"
    return f"1x1 conv @{size}" if weight is not None and weight[2] == 1 else f"kxk conv @{size}"


def summarize(profile_path: str, skip: int = 8) -> tuple[dict[str, list], float]:
    """{kind: [nodes, total us]} of the 10th-percentile node times, and the 10th-percentile run time (us)."""
    events = json.loads(Path(profile_path).read_text())
    runs = [e["dur"] for e in events if e.get("name") == "model_run"][skip:]
    times: dict[str, list[float]] = collections.defaultdict(list)
    kinds: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name, args = e["name"], e["args"]
            times[name].append(e["dur"])
            shapes = [[list(t.values())[0] for t in (args.get(k) or [])]
                      for k in ("input_type_shape", "output_type_shape")]
            kinds[name] = node_kind(args.get("op_name"), *shapes)
    by_kind: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for name, values in times.items():
        by_kind[kinds[name]][0] += 1
        by_kind[kinds[name]][1] += float(np.percentile(values[skip:], 10))
    return dict(by_kind), float(np.percentile(runs, 10))


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("results/ort_threads.md"))
    args = parser.parse_args()
    x = torch.randn(1, 3, 224, 224)
    feed = x.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sessions = {}
        for name, spec in MODELS.items():
            path = export(name, spec, workdir, x)
            for threads in THREADS:
                options = ort.SessionOptions()
                options.intra_op_num_threads, options.enable_profiling = threads, True
                options.profile_file_prefix = str(workdir / f"{name}_{threads}")
                sessions[name, threads] = ort.InferenceSession(str(path), options,
                                                               providers=["CPUExecutionProvider"])
        for _ in range(args.rounds):  # taking turns: every session sees the same machine load
            for session in sessions.values():
                for _ in range(8):
                    session.run(None, {session.get_inputs()[0].name: feed})
        results = {key: summarize(session.end_profiling()) for key, session in sessions.items()}
    env = environment()
    columns = " | ".join(f"{n}: nodes | 1 thread us | 2 threads us | speed-up" for n in MODELS)
    lines = [f"onnxruntime per-node profile, batch 1, 224x224, {args.rounds} rounds of 8 runs; {env['cpu']}, "
             f"onnxruntime {env['onnxruntime']}, load average {env['load_average']}", "",
             f"| node kind | {columns} |", "|---|" + "---|---|---|---|" * len(MODELS)]

    def totals(name: str, threads: int, kind: str) -> tuple[int, float]:
        by_kind, run_us = results[name, threads]
        if kind == "whole run":
            return 0, run_us
        if kind == "all nodes":
            return sum(n for n, _ in by_kind.values()), sum(us for _, us in by_kind.values())
        nodes, us = by_kind.get(kind, (0, 0.0))
        return nodes, us

    kinds = sorted({k for key in results for k in results[key][0]}, key=lambda k: -totals("GhostNet", 2, k)[1])
    for kind in kinds + ["all nodes", "whole run"]:
        cells = []
        for name in MODELS:
            (nodes, one), (_, two) = totals(name, 1, kind), totals(name, 2, kind)
            count = "" if kind == "whole run" else nodes
            cells.append(f"{count} | {one:.0f} | {two:.0f} | {one / two:.2f}" if two else f"{count} | | |")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as tmp_path:
        tmp_path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
