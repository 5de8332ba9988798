"""int8 accuracy of a CIFAR-10-trained GhostNet under onnxruntime static quantization, setting by setting.

1. Train GhostNet 1.0x with the CIFAR stem (stride-1 first conv) on the CIFAR-10 training set with the library's
   trainer and the `cifar10_ghostnet` recipe, shortened to a CPU schedule (default 6 epochs); a run that was
   interrupted resumes, a finished one is reused.
2. Fuse it, export it to ONNX and measure the fp32 onnxruntime accuracy on the 10,000 test images.
3. Quantize it with several settings (per-tensor / per-channel weights, depthwise convs quantized or kept in
   float, calibration method, number of calibration images drawn from the training set) and measure each one's
   accuracy and its drop against fp32, plus its batch-1 latency at one thread, interleaved with the fp32 model;
   the last two settings quantize the channel-aligned export (the graph `ghostnet export --align-channels` writes).

4. With `--executorch` (needs the executorch extra): the same fused model as ExecuTorch programs for XNNPACK, the
   phone runtime, fp32 and int8 (PyTorch 2 export quantization: per-channel int8 weights, int8 activations,
   calibrated on the same training images), their accuracy in ExecuTorch's runtime and their batch-1 latency.

    python benchmarks/bench_int8.py [--epochs 6] [--data ../shared/data/cifar10] [--out results/int8] [--executorch]

The data is read from $GHOSTNET_DATA/cifar10 (default ../shared/data/cifar10 beside the checkout).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ghostnet.data import TransformConfig
from ghostnet.deploy import fuse
from ghostnet.deploy.align import align_channels, nchwc_block_size
from ghostnet.deploy.onnx_io import export_onnx, onnx_session
from ghostnet.deploy.machine import environment
from ghostnet.deploy.quantize import calibration_batches, load_images, onnx_accuracy, quantize_onnx
from ghostnet.train import load_recipe, train
from ghostnet.train.state import TrainedModel, load_trained
from ghostnet.utils import atomic_write

SHARED_DATA = Path(os.environ.get("GHOSTNET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RECIPE = "cifar10_ghostnet"

#: (label, quantize_onnx keyword arguments, number of calibration images). The first is onnxruntime's
#: quantize_static with its defaults: every quantizable op, one scale per weight tensor, int8 activations.
SETTINGS = [
    ("naive: all ops, per-tensor, int8 activations", dict(op_types=None, per_channel=False,
                                                          keep_depthwise_float=False, activations="int8"), 512),
    ("convs only, per-tensor, depthwise int8", dict(per_channel=False, keep_depthwise_float=False), 512),
    ("convs only, per-channel, depthwise int8", dict(keep_depthwise_float=False), 512),
    ("default: convs only, per-channel, depthwise float", dict(), 512),
    ("default, 64 calibration images", dict(), 64),
    ("default, 8 calibration images", dict(), 8),
    ("default, percentile calibration", dict(method="percentile"), 512),
    ("fast: all ops, per-channel, depthwise int8", dict(op_types=None, keep_depthwise_float=False), 512),
    ("default, from the aligned export", dict(), 512),
    ("fast, from the aligned export", dict(op_types=None, keep_depthwise_float=False), 512),
]
#: Settings quantized from the channel-aligned export (align_channels: zero channels, single-path Ghost modules);
#: the others from the plain fused export.
ALIGNED_PREFIXES = ("default, from the aligned", "fast, from the aligned")


def train_or_reuse(data: Path, epochs: int, run_dir: Path, workers: int) -> TrainedModel:
    """The model of the run in `run_dir`: trained now, resumed from its last epoch, or loaded when finished."""
    final = run_dir / "last.safetensors"  # written only after the last epoch
    if not final.is_file():
        cfg = load_recipe(RECIPE, dict(data=str(data), epochs=epochs, eval_every=epochs, workers=workers,
                                       output=str(run_dir), progress=False, plots=False))
        resume = run_dir / "last.pt"
        start = time.time()
        train(cfg, resume=resume if resume.is_file() else None)
        print(f"trained in {time.time() - start:.0f} s", flush=True)
    print(f"model: {final}")
    return load_trained(final)


@torch.no_grad()
def torch_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (percent) of a torch model."""
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(images.split(500), labels.split(500)))
    return 100.0 * correct / len(images)


def latency_ms(calls: dict[str, Callable[[], object]], rounds: int = 5, reps: int = 50) -> dict[str, float]:
    """Best-round median milliseconds per call, the calls interleaved."""
    best = {name: math.inf for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                call()
                times.append((time.perf_counter() - t0) * 1e3)
            best[name] = min(best[name], statistics.median(times))
    return best


def session_call(session, x: np.ndarray) -> Callable[[], object]:
    """One onnxruntime run of `session` on `x`, as a call for `latency_ms`."""
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def executorch_rows(fused: torch.nn.Module, calibration: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                    work_dir: Path, threads: int, batch: int = 100) -> list[dict]:
    """fp32 and int8 ExecuTorch (XNNPACK) programs of `fused`: top-1 on the test set and batch-1 latency."""
    from ghostnet.deploy.runtimes.executorch import executorch_method, export_executorch, set_executorch_threads

    set_executorch_threads(threads)  # before any program is loaded
    rows, methods = [], {}
    for label, calib in (("ExecuTorch XNNPACK fp32", None), ("ExecuTorch XNNPACK int8 (pt2e, per-channel)",
                                                              calibration_batches(calibration, batch))):
        stem = work_dir / ("xnnpack_int8" if calib else "xnnpack_fp32")
        start = time.time()
        accuracy_program = executorch_method(export_executorch(fused, stem.with_suffix(".b100.pte"),
                                                               test_x[:batch], calibration=calib))
        correct = sum(int((accuracy_program.execute([x.contiguous()])[0].argmax(1) == y).sum())
                      for x, y in zip(test_x.split(batch), test_y.split(batch)) if len(x) == batch)
        methods[label] = executorch_method(export_executorch(fused, stem.with_suffix(".b1.pte"), test_x[:1],
                                                                     calibration=calib))
        rows.append({"setting": label, "top1": 100.0 * correct / (len(test_x) // batch * batch),
                     "export_s": time.time() - start})
    x = [test_x[:1].contiguous()]
    best = latency_ms({label: functools.partial(method.execute, x) for label, method in methods.items()})
    for row in rows:
        row["latency_ms"] = best[row["setting"]]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "cifar10")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "ghostnet" / "bench_int8",
                        help="where the trained checkpoint and ONNX files are kept")
    parser.add_argument("--out", type=Path, default=Path("results/int8"), help="output prefix (.json and .md)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the latency column")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="threads for training and evaluation (on shared CPUs one thread is often fastest)")
    parser.add_argument("--workers", type=int, default=1, help="data-loading processes for training")
    parser.add_argument("--executorch", action="store_true",
                        help="also measure fp32 and int8 ExecuTorch (XNNPACK) programs (needs the executorch extra)")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    if not (args.data / "test.npz").is_file():
        sys.exit(f"CIFAR-10 not found at {args.data} (set GHOSTNET_DATA to the folder holding cifar10/)")
    trained = train_or_reuse(args.data, args.epochs, args.work_dir / f"{RECIPE}_{args.epochs}ep", args.workers)
    model = trained.model
    transform = TransformConfig.from_eval_dict(trained.data_config)
    test_x, test_y = load_images(args.data, transform, "val")
    calib_pool = load_images(args.data, transform, "train", num_images=512, seed=1)[0]
    fp32_torch = torch_accuracy(model, test_x, test_y)

    fused = fuse(model, example_input=test_x[:1])
    fp32_path = export_onnx(fused, args.work_dir / "fp32.onnx", test_x[:1])
    fp32_ort = onnx_accuracy(onnx_session(fp32_path, threads=args.torch_threads), test_x, test_y)
    print(f"fp32: torch {fp32_torch:.2f}%, onnxruntime {fp32_ort:.2f}%", flush=True)
    aligned = align_channels(fuse(model, example_input=test_x[:1]), nchwc_block_size() or 16)
    aligned_path = export_onnx(aligned, args.work_dir / "fp32_aligned.onnx", test_x[:1])

    rows = []
    sessions = {"fp32": onnx_session(fp32_path, threads=args.threads),
                "fp32, aligned": onnx_session(aligned_path, threads=args.threads)}
    for i, (label, kwargs, n_calib) in enumerate(SETTINGS):
        path = args.work_dir / f"int8_{i}.onnx"
        start = time.time()
        source = aligned_path if label.startswith(ALIGNED_PREFIXES) else fp32_path
        quantize_onnx(source, path, calibration_batches(calib_pool[:n_calib], 64), **kwargs)
        acc = onnx_accuracy(onnx_session(path, threads=args.torch_threads), test_x, test_y)
        rows.append({"setting": label, "calibration_images": n_calib, "top1": acc, "drop": fp32_ort - acc,
                     "quantize_s": time.time() - start})
        sessions[label] = onnx_session(path, threads=args.threads)
        print(f"{label}: {acc:.2f}% (drop {fp32_ort - acc:.2f})", flush=True)
    latencies = latency_ms({name: session_call(session, test_x[:1].numpy()) for name, session in sessions.items()})
    for row in rows:
        row["latency_ms"] = latencies[row["setting"]]

    xnnpack = executorch_rows(fuse(model, example_input=test_x[:1]), calib_pool, test_x, test_y, args.work_dir,
                              args.threads) if args.executorch else []
    result = {"environment": environment(), "recipe": RECIPE, "epochs": args.epochs, "fp32_torch_top1": fp32_torch,
              "fp32_onnxruntime_top1": fp32_ort, "fp32_latency_ms": latencies["fp32"],
              "fp32_aligned_latency_ms": latencies["fp32, aligned"], "threads": args.threads,
              "rows": rows, "executorch_rows": xnnpack, "command": " ".join(sys.argv)}
    lines = [f"GhostNet 1.0x (CIFAR stem), {args.epochs} epochs of {RECIPE} on CIFAR-10: fp32 top-1 "
             f"{fp32_torch:.2f}% in torch, {fp32_ort:.2f}% in onnxruntime; batch-1 latency at {args.threads} "
             f"thread(s): fp32 {latencies['fp32']:.2f} ms (aligned export: {latencies['fp32, aligned']:.2f} ms).", "",
             "| setting | calibration images | int8 top-1 | drop (points) | latency ms | vs fp32 |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['setting']} | {row['calibration_images']} | {row['top1']:.2f} | {row['drop']:.2f} | "
                     f"{row['latency_ms']:.2f} | {row['latency_ms'] / latencies['fp32']:.2f} |")
    if xnnpack:
        lines += ["", f"ExecuTorch (XNNPACK), the same fused model; latency at batch 1, {args.threads} thread(s):", "",
                  "| program | top-1 | drop (points) | latency ms | vs fp32 |", "|---|---|---|---|---|"]
        for row in xnnpack:
            lines.append(f"| {row['setting']} | {row['top1']:.2f} | {xnnpack[0]['top1'] - row['top1']:.2f} | "
                         f"{row['latency_ms']:.2f} | {row['latency_ms'] / xnnpack[0]['latency_ms']:.2f} |")
    for suffix, text in ((".json", json.dumps(result, indent=2)), (".md", "\n".join(lines) + "\n")):
        with atomic_write(args.out.with_suffix(suffix)) as tmp:
            tmp.write_text(text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
