"""LiteRT (XNNPACK delegate) at 1 thread, float32, batch 1, 224x224: our GhostNets in every exact form against timm's
models converted the way a timm user converts them (`litert_torch.convert`), all in ONE interleaved run; and int8.

    python benchmarks/bench_litert.py [--models ghostnet_100,...] [--rounds 7] [--reps 20] [--out results/litert]
    python benchmarks/bench_litert.py --int8-run RUN_DIR [--data ../shared/data/cifar10] [--out results/litert_int8]

For each of our models: every exact form `--format auto` would try (`autotune.candidate_structures` at batch 1:
plain fused, split, channels aligned to 8 and 16, single-path, the DFC's training form), each written by
`export_litert` and checked against the model's float64 output on a 224x224 image; timm's model of the same name
(re-parameterized with `timm.utils.model.reparameterize_model`, as timm users deploy it) and timm's
mobilenetv3_large_100, converted plainly. Every file runs in ai_edge_litert's interpreter (`LiteRtSession`, XNNPACK,
one thread) and every candidate of every model is timed in the same interleaved run. "cpu ms" is the process's CPU
time per call, the steadiest figure on a shared machine at one thread. Writes OUT.md and OUT.json.

`--int8-run`: a CIFAR-10 model trained by `ghostnet train` (its run folder) as a float32 LiteRT file and int8
(`export_litert_int8`: ai-edge-quantizer with depthwise convs int8 or float32, and litert-torch's PT2E path), calibrated
on 512 training images: top-1 on the 10,000 test images and batch-1 latency at 32x32, interleaved.
"""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

import ghostnet
from ghostnet.deploy.autotune import candidate_structures
from ghostnet.deploy.bench_timing import median_ms, time_interleaved
from ghostnet.deploy.exactness import eager_and_reference, float32_parity
from ghostnet.deploy.forms import Form, build_form
from ghostnet.deploy.machine import environment, load_average
from ghostnet.deploy.runtimes.litert import LiteRtSession, export_litert, export_litert_int8
from bench_common import runtime_bench_arguments, timm_model, write

MODELS = ("ghostnet_100", "ghostnetv2_100", "ghostnetv3_100", "repghostnet_100")
SCALE = "mobilenetv3_large_100"


def our_candidates(name: str, x: torch.Tensor, workdir: Path) -> list[dict]:
    """Every exact form of our `name` as a LiteRT file: label, bound call, parity, conversion seconds."""
    model = ghostnet.create_model(name).eval()
    eager, truth = eager_and_reference(model, x)
    rows = []
    for i, form in enumerate(candidate_structures(model, x)):
        form = dataclasses.replace(form, dynamic_batch=False)
        start = time.time()
        path = export_litert(build_form(model, form, x), workdir / f"{name}.{i}.tflite", x)
        seconds = time.time() - start
        session = LiteRtSession(path, threads=1)
        parity = float32_parity(session(x), eager, truth)
        rows.append({"model": name, "label": f"ours: {form.describe()}", "form": form.to_dict(),
                     "call": session.bind(x), "exact": parity.ok, "parity": str(parity), "export_s": seconds})
        print(f"{name} {form.describe()}: {seconds:.0f} s, {parity}", flush=True)
    return rows


def peer_candidates(names: list[str], x: torch.Tensor, workdir: Path) -> list[dict]:
    rows = []
    for peer in dict.fromkeys([*names, SCALE]):
        start = time.time()
        path = export_litert(timm_model(peer), workdir / f"timm_{peer}.tflite", x)
        rows.append({"peer": peer, "label": f"timm {peer} (litert_torch.convert)", "export_s": time.time() - start,
                     "call": LiteRtSession(path, threads=1).bind(x)})
    return rows


def measure(names: list[str], rounds: int, reps: int) -> dict:
    """Every candidate of every model, timed in one interleaved run."""
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for name in names for row in our_candidates(name, x, Path(tmp))]
        rows += peer_candidates(names, x, Path(tmp))
        before = load_average()
        samples = time_interleaved([r.pop("call") for r in rows], rounds, reps, warmup=5)
    for row, (per_round, cpu) in zip(rows, samples):
        row["median_ms"], row["cpu_ms"] = median_ms(per_round), statistics.median(cpu)
    return {"rows": rows, "load_average": [before, load_average()]}


def markdown(result: dict, names: list[str]) -> list[str]:
    """One table per model: candidate, median ms, cpu ms, ratios to timm's same-name model and to MobileNetV3."""
    rows = result["rows"]
    peers = {r["peer"]: r for r in rows if "peer" in r}
    scale = peers[SCALE]

    def ratio(r: dict, ref: dict) -> str:
        return f"{r['median_ms'] / ref['median_ms']:.3f} / {r['cpu_ms'] / ref['cpu_ms']:.3f}"

    lines = []
    for name in names:
        peer = peers[name]
        lines += ["", f"| {name}: LiteRT, 1 thread | median ms | cpu ms | vs timm {name} (median / cpu) | "
                  f"vs timm {SCALE} (median / cpu) | exact |", "|---|---|---|---|---|---|"]
        for r in [r for r in rows if r.get("model") == name] + [peer, scale]:
            exact = {True: "yes", False: "**no**", None: ""}[r.get("exact")]
            lines.append(f"| {r['label']} | {r['median_ms']:.2f} | {r['cpu_ms']:.2f} | {ratio(r, peer)} | "
                         f"{ratio(r, scale)} | {exact} |")
    return lines


def int8_study(run: Path, data: Path, rounds: int, reps: int, workdir: Path) -> dict:
    """A CIFAR-10-trained model (a `ghostnet train` run folder) in LiteRT: float32 and int8 (ai-edge-quantizer with
    depthwise convs int8 or float32; PT2E), top-1 on the 10,000 test images, and batch-1 latency interleaved."""
    from ghostnet.data import TransformConfig
    from ghostnet.deploy.quantize import calibration_batches, load_images
    from ghostnet.train.state import load_trained

    trained = load_trained(run / "last.safetensors")
    transform = TransformConfig.from_eval_dict(trained.data_config)
    test_x, test_y = load_images(data, transform, "val")
    calibration = calibration_batches(load_images(data, transform, "train", num_images=512, seed=1)[0])
    form = Form(dynamic_batch=False)
    model = build_form(trained.model, form, test_x[:1])
    rows = [{"setting": f"float32 ({form.describe()})", "path": export_litert(model, workdir / "fp32.tflite",
                                                                              test_x[:1])}]
    for method, depthwise in (("ai-edge-quantizer", True), ("ai-edge-quantizer", False), ("pt2e", True)):
        start = time.time()
        path = export_litert_int8(model, workdir / f"int8_{method}_{depthwise}.tflite", test_x[:1], calibration,
                                  method=method, quantize_depthwise=depthwise)
        rows.append({"setting": f"int8, {method}, depthwise {'int8' if depthwise else 'float32'}", "path": path,
                     "export_s": time.time() - start})
    for row in rows:
        got = LiteRtSession(row["path"], threads=1)(test_x)
        row["top1"] = 100.0 * float((got.argmax(1) == test_y).float().mean())
        row["drop"] = rows[0]["top1"] - row["top1"]
        print(f"{row['setting']}: {row['top1']:.2f}%", flush=True)
    before = load_average()
    samples = time_interleaved([LiteRtSession(r["path"], threads=1).bind(test_x[:1]) for r in rows], rounds, reps, 5)
    for row, (per_round, cpu) in zip(rows, samples):
        row["median_ms"], row["cpu_ms"] = median_ms(per_round), statistics.median(cpu)
        row["path"] = str(row["path"])
    return {"run": str(run), "model": trained.info.get("model"), "rows": rows,
            "load_average": [before, load_average()]}


def int8_markdown(study: dict) -> list[str]:
    """The int8 table: setting, top-1, drop, latency and its ratio to float32."""
    rows = study["rows"]
    lines = ["| LiteRT, CIFAR-10 test set (10,000 images) | top-1 | drop (points) | median ms | cpu ms | "
             "cpu vs float32 |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['top1']:.2f} | {r['drop']:.2f} | {r['median_ms']:.3f} | "
                     f"{r['cpu_ms']:.3f} | {r['cpu_ms'] / rows[0]['cpu_ms']:.2f} |")
    return lines


def main() -> None:
    args = runtime_bench_arguments(__doc__.splitlines()[0], MODELS, rounds=7, out="results/litert").parse_args()
    torch.set_num_threads(1)
    env = environment()
    versions = f"litert-torch {_version('litert-torch')}, ai-edge-litert {_version('ai-edge-litert')}"
    if args.int8_run:
        with tempfile.TemporaryDirectory() as tmp:
            study = int8_study(args.int8_run, args.data, args.rounds, args.reps, Path(tmp))
        lines = [f"{env['cpu']}, {env['isa']}; {versions}; {env['date']}; load average before/after timing "
                 f"{study['load_average']}. {study['model']} from {study['run']}; batch 1, 32x32, 1 thread."]
        write(args.out, lines + [""] + int8_markdown(study), {"environment": env, "int8": study})
        return
    names = args.models.split(",")
    result = measure(names, args.rounds, args.reps)
    lines = [f"{env['cpu']}, {env['isa']}, {env['cpu_count']} vCPUs; {versions}, torch {env['torch']}, timm "
             f"{env['timm']}; {env['date']}. Median and CPU ms per call, batch 1, 224x224, float32, 1 thread, one "
             f"interleaved run; load average before/after timing {result['load_average']}."]
    write(args.out, lines + markdown(result, names), {"environment": env, **result})


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


if __name__ == "__main__":
    main()
