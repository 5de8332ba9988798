"""int8 accuracy of a CIFAR-10-trained GhostNet under onnxruntime static quantization, setting by setting.

1. Train GhostNet 1.0x with the CIFAR stem (stride-1 first conv) on the CIFAR-10 training set for a short CPU
   schedule (SGD + Nesterov, cosine, random crop + flip), or reuse the checkpoint of an earlier run.
2. Fuse it, export it to ONNX and measure the fp32 onnxruntime accuracy on the 10,000 test images.
3. Quantize it with several settings (per-tensor / per-channel weights, depthwise convs quantized or kept in
   float, calibration method, number of calibration images drawn from the training set) and measure each one's
   accuracy and its drop against fp32, plus its batch-1 latency at one thread, interleaved with the fp32 model;
   the last two settings quantize the channel-aligned export (the graph `ghostnet export --align-channels` writes).

    python benchmarks/bench_int8.py [--epochs 6] [--data ../shared/data/cifar10] [--out results/int8]

The data is read from $GHOSTNET_DATA/cifar10 (default ../shared/data/cifar10 beside the checkout).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ghostnet import create_model
from ghostnet.convert.checkpoints import load_checkpoint, save_checkpoint
from ghostnet.deploy import fuse
from ghostnet.deploy.align import align_channels, nchwc_block_size
from ghostnet.deploy.bench import environment
from ghostnet.deploy.export import export_onnx, onnx_session
from ghostnet.deploy.quantize import calibration_batches, onnx_accuracy, quantize_onnx
from ghostnet.models.cifar import CIFAR10_MEAN, CIFAR10_STD
from ghostnet.utils import atomic_write

SHARED_DATA = Path(os.environ.get("GHOSTNET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MODEL_KWARGS = dict(num_classes=10, stem_stride=1, drop_rate=0.2)

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


def load_cifar(root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels); images normalized float (N, 3, 32, 32)."""
    if not (root / "test.npz").is_file():
        sys.exit(f"CIFAR-10 not found at {root} (set GHOSTNET_DATA to the folder holding cifar10/)")
    parts = [np.load(root / f"train_{i}.npz") for i in (0, 1)]
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)

    def prep(images: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0) - mean) / std

    test = np.load(root / "test.npz")
    return (prep(np.concatenate([p["images"] for p in parts])),
            torch.from_numpy(np.concatenate([p["labels"] for p in parts])).long(),
            prep(test["images"]), torch.from_numpy(test["labels"]).long())


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop of the 4-pixel zero-padded image and a horizontal flip with probability 1/2, per image."""
    n = batch.shape[0]
    padded = F.pad(batch, (4, 4, 4, 4))
    dx, dy = torch.randint(0, 9, (2, n), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32] for i in range(n)])
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


def train(images: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int = 128, lr: float = 0.1,
          seed: int = 0) -> torch.nn.Module:
    """A short SGD schedule (Nesterov momentum 0.9, wd 5e-4, one warmup epoch then cosine)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = create_model("ghostnet_100", **MODEL_KWARGS)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0}],
                                lr=lr, momentum=0.9, nesterov=True)
    steps_per_epoch = len(images) // batch_size
    total = epochs * steps_per_epoch
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        start, running = time.time(), 0.0
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            warm = min(1.0, (step + 1) / steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(augment(images[idx], generator)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item()
            step += 1
        print(f"epoch {epoch + 1}/{epochs}: loss {running / steps_per_epoch:.3f} ({time.time() - start:.0f} s)",
              flush=True)
    return model.eval()


@torch.no_grad()
def torch_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (percent) of a torch model."""
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(images.split(500), labels.split(500)))
    return 100.0 * correct / len(images)


def latency_ms(sessions: dict[str, object], x: np.ndarray, rounds: int = 5, reps: int = 50) -> dict[str, float]:
    """Best-round median milliseconds per batch-1 call, sessions interleaved."""
    best = {name: math.inf for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            feed = {session.get_inputs()[0].name: x}
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                session.run(None, feed)
                times.append((time.perf_counter() - t0) * 1e3)
            best[name] = min(best[name], statistics.median(times))
    return best


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
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    train_x, train_y, test_x, test_y = load_cifar(args.data)
    ckpt = args.work_dir / f"cifar10_ghostnet_100_{args.epochs}ep.safetensors"
    model = create_model("ghostnet_100", **MODEL_KWARGS).eval()
    if ckpt.is_file():
        load_checkpoint(model, ckpt)
        print(f"loaded {ckpt}")
    else:
        start = time.time()
        model = train(train_x, train_y, args.epochs)
        print(f"trained in {time.time() - start:.0f} s")
        save_checkpoint(model.state_dict(), ckpt, metadata={"epochs": str(args.epochs), "data": "cifar10"})
    fp32_torch = torch_accuracy(model, test_x, test_y)

    fused = fuse(model, example_input=test_x[:1])
    fp32_path = export_onnx(fused, args.work_dir / "fp32.onnx", test_x[:1])
    fp32_ort = onnx_accuracy(onnx_session(fp32_path, threads=args.torch_threads), test_x, test_y)
    print(f"fp32: torch {fp32_torch:.2f}%, onnxruntime {fp32_ort:.2f}%", flush=True)
    aligned = align_channels(fuse(model, example_input=test_x[:1]), nchwc_block_size() or 16)
    aligned_path = export_onnx(aligned, args.work_dir / "fp32_aligned.onnx", test_x[:1])

    generator = torch.Generator().manual_seed(1)
    calib_pool = train_x[torch.randperm(len(train_x), generator=generator)[:512]]
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
    latencies = latency_ms(sessions, test_x[:1].numpy())
    for row in rows:
        row["latency_ms"] = latencies[row["setting"]]

    result = {"environment": environment(), "epochs": args.epochs, "fp32_torch_top1": fp32_torch,
              "fp32_onnxruntime_top1": fp32_ort, "fp32_latency_ms": latencies["fp32"],
              "fp32_aligned_latency_ms": latencies["fp32, aligned"], "threads": args.threads,
              "rows": rows, "command": " ".join(sys.argv)}
    lines = [f"GhostNet 1.0x (CIFAR stem), {args.epochs} epochs on CIFAR-10: fp32 top-1 {fp32_torch:.2f}% in torch, "
             f"{fp32_ort:.2f}% in onnxruntime; batch-1 latency at {args.threads} thread(s): fp32 "
             f"{latencies['fp32']:.2f} ms (aligned export: {latencies['fp32, aligned']:.2f} ms).", "",
             "| setting | calibration images | int8 top-1 | drop (points) | latency ms | vs fp32 |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['setting']} | {row['calibration_images']} | {row['top1']:.2f} | {row['drop']:.2f} | "
                     f"{row['latency_ms']:.2f} | {row['latency_ms'] / latencies['fp32']:.2f} |")
    for suffix, text in ((".json", json.dumps(result, indent=2)), (".md", "\n".join(lines) + "\n")):
        with atomic_write(args.out.with_suffix(suffix)) as tmp:
            tmp.write_text(text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
