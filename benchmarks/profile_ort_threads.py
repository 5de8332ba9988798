"""Where onnxruntime spends its time, per kind of node, at one and two threads: our GhostNets against peers.

    python benchmarks/profile_ort_threads.py [--model ghostnet_100[,...]] [--peer timm:mobilenetv3_large_100[,...]]
        [--dfc deploy|training|both] [--align auto] [--threads 1,2] [--rounds 16] [--out results/ort_threads.md]

Exports `--model` as `ghostnet export --align-channels auto` writes it (fused, channel-aligned to this CPU's NCHWc
block, single-path Ghost modules where they pay) and the peer as it is. For GhostNetV2/V3, `--dfc both` also exports
the model with its DFC gate in the training form (`deploy.dfc.TrainingFormDFC`: what the export was before the deploy
form), so the two graphs are profiled side by side. One profiling session per model and thread count; the sessions
take turns for `--rounds` rounds of 8 runs, and each node's 10th-percentile kernel time is summed by kind of node.
The tables in docs/benchmarks.md ("Why two threads hurt GhostNet in onnxruntime", "DFC attention in onnxruntime")
come from it. Profiling adds overhead, so the run times exceed plain latencies; compare columns, not absolutes.

The row "convolutions and Gemm" sums the Conv and Gemm nodes' kernel times: the arithmetic every graph of the
network has to run, whatever is done to its plumbing (reorders, concats, pools, products). Set against another
model's "all nodes", it bounds from below the latency ratio any rewriting of the graph can reach (docs/benchmarks.md,
"How far the graph can go").
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
from ghostnet.deploy.align import align_channels, resolve_alignment
from ghostnet.deploy.dfc import use_training_form_dfc
from ghostnet.deploy.onnx_io import export_onnx
from ghostnet.deploy.machine import environment
from ghostnet.models.spec import create_from_spec as create_spec
from ghostnet.utils import atomic_write


def export(spec: str, dfc: str, workdir: Path, x: torch.Tensor, align: int) -> Path:
    """The ONNX file a candidate runs: peers as they are, ours fused and aligned, DFC in the form asked."""
    if ":" in spec:
        model = create_spec(spec).eval()
    else:
        model = fuse(create_model(spec).eval(), example_input=x)
        model = align_channels(model, align) if align else model
        if dfc == "training":
            use_training_form_dfc(model)
    return export_onnx(model, workdir / f"{spec.replace(':', '_')}.{dfc}.onnx", x)


def node_kind(op: str, inputs: list, outputs: list) -> str:
    """A node's kind: its op, convs split by shape (1x1, depthwise, DFC's 1x5 / 5x1) and output size."""
    if op != "Conv":
        return op
    weight = inputs[1] if len(inputs) > 1 else None
    size = outputs[0][2]
    if weight is not None and weight[1] == 1 and outputs[0][1] > 1:
        if tuple(weight[2:]) in ((1, 5), (5, 1)):
            return f"DFC depthwise {weight[2]}x{weight[3]} @{size}"
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


def profile(candidates: dict[str, tuple[str, str]], threads: list[int], rounds: int, align: int) -> dict:
    """{(label, threads): summary} for every candidate (label -> (spec, dfc form)), sessions taking turns."""
    import onnxruntime as ort

    x = torch.randn(1, 3, 224, 224)
    feed = x.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sessions = {}
        for label, (spec, dfc) in candidates.items():
            path = export(spec, dfc, workdir, x, align)
            for count in threads:
                options = ort.SessionOptions()
                options.intra_op_num_threads, options.enable_profiling = count, True
                options.profile_file_prefix = str(workdir / f"{spec.replace(':', '_')}_{dfc}_{count}")
                sessions[label, count] = ort.InferenceSession(str(path), options,
                                                              providers=["CPUExecutionProvider"])
        for _ in range(rounds):  # taking turns: every session sees the same machine load
            for session in sessions.values():
                for _ in range(8):
                    session.run(None, {session.get_inputs()[0].name: feed})
        return {key: summarize(session.end_profiling()) for key, session in sessions.items()}


#: Summary rows of the table, after the kinds of node.
ARITHMETIC, ALL_NODES, WHOLE_RUN = "convolutions and Gemm", "all nodes", "whole run"


def is_arithmetic(kind: str) -> bool:
    """Whether a kind of node (`node_kind`) is a convolution or the classifier's Gemm."""
    return "conv @" in kind or kind.startswith("DFC depthwise") or kind == "Gemm"


def table(results: dict, labels: list[str], threads: list[int]) -> list[str]:
    """Markdown rows: per kind of node, each candidate's node count and time per thread count."""
    def totals(label: str, count: int, kind: str) -> tuple[int, float]:
        by_kind, run_us = results[label, count]
        if kind == WHOLE_RUN:
            return 0, run_us
        if kind in (ALL_NODES, ARITHMETIC):
            chosen = [v for k, v in by_kind.items() if kind == ALL_NODES or is_arithmetic(k)]
            return sum(n for n, _ in chosen), sum(us for _, us in chosen)
        nodes, us = by_kind.get(kind, (0, 0.0))
        return nodes, us

    speedup = len(threads) == 2  # the old table's last column: time at the first count / time at the second
    head = " | ".join(f"{label}: nodes | " + " | ".join(f"{t} thread{'s' * (t > 1)} us" for t in threads)
                      + (" | speed-up" if speedup else "") for label in labels)
    lines = [f"| node kind | {head} |", "|---|" + ("---|" * (1 + len(threads) + speedup)) * len(labels)]
    kinds = sorted({k for key in results for k in results[key][0]}, key=lambda k: -totals(labels[0], threads[0], k)[1])
    for kind in kinds + [ARITHMETIC, ALL_NODES, WHOLE_RUN]:
        cells = []
        for label in labels:
            nodes = totals(label, threads[0], kind)[0]
            times = [totals(label, t, kind)[1] for t in threads]
            cells.append(("" if kind == WHOLE_RUN else str(nodes)) + "".join(f" | {us:.0f}" for us in times)
                         + (f" | {times[0] / times[1]:.2f}" if speedup and times[1] else " | " if speedup else ""))
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ghostnet_100", help="our registered models, comma-separated")
    parser.add_argument("--peer", default="timm:mobilenetv3_large_100",
                        help="peers' model specs, comma-separated ('' for none)")
    parser.add_argument("--dfc", default="deploy", choices=["deploy", "training", "both"],
                        help="GhostNetV2/V3: the DFC gate's deploy form, its training form, or both side by side")
    parser.add_argument("--align", default="auto", help="channel alignment of our export (auto: this CPU's block)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("results/ort_threads.md"))
    args = parser.parse_args()
    forms = ["deploy", "training"] if args.dfc == "both" else [args.dfc]
    candidates = {f"{model} ({form} DFC)" if args.dfc == "both" else model: (model, form)
                  for model in args.model.split(",") for form in forms}
    candidates.update({peer: (peer, "deploy") for peer in args.peer.split(",") if peer})
    threads = [int(t) for t in args.threads.split(",")]
    align = resolve_alignment(args.align)
    results = profile(candidates, threads, args.rounds, align)
    env = environment()
    lines = [f"onnxruntime per-node profile, batch 1, 224x224, {args.rounds} rounds of 8 runs, our export aligned to "
             f"{align} channels; {env['cpu']} ({env['isa']}), onnxruntime {env['onnxruntime']}, torch "
             f"{env['torch']}, load average {env['load_average']}", ""]
    text = "\n".join(lines + table(results, list(candidates), threads)) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as tmp_path:
        tmp_path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
