"""ncnn at 1 thread, float32, batch 1, 224x224: our GhostNets in every exact form against timm's models converted the
way a timm user converts them (TorchScript trace -> pnnx), one interleaved run per table; and int8 in ncnn.

    python benchmarks/bench_ncnn.py [--models ghostnet_100,...] [--rounds 9] [--reps 20] [--out results/ncnn]
    python benchmarks/bench_ncnn.py --int8-run RUN_DIR [--data ../shared/data/cifar10] [--out results/ncnn_int8]

For each of our models: every exact form `--format auto` would try (`autotune.candidate_structures`: plain fused,
split, channels aligned to 8 and 16 with or without the split, single-path, the DFC's training form) plus channels
aligned to 4 likewise (ncnn's pack size on ARM), each written by `export_ncnn` and checked against the model's
float64 output on a 224x224 image; timm's model of the same name (re-parameterized with
`timm.utils.model.reparameterize_model`, as timm users deploy it) and timm's mobilenetv3_large_100, traced and
converted by pnnx. All run in ncnn's float32 session (`NcnnSession`), timed interleaved. Ratios divide by timm's
same-name model and by MobileNetV3-Large; "cpu ms" is the process's CPU time per call, the steadiest figure on a
shared machine at one thread. Writes OUT.md and OUT.json.

`--int8-run`: a CIFAR-10 model trained by `ghostnet train` (its run folder), in its split form, in ncnn float32 and
int8 (`export_ncnn_int8`: KL or minmax calibration on 512 training images, depthwise convs int8 or float32): top-1
on the 10,000 test images and batch-1 latency at 32x32, interleaved; then ghostnet_100 and timm's
mobilenetv3_large_100 at 224x224, float32 and int8, interleaved.
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
from ghostnet.deploy.runtimes.ncnn import NcnnSession, export_ncnn
from bench_common import runtime_bench_arguments, timm_model, write

MODELS = ("ghostnet_100", "ghostnetv2_100", "ghostnetv3_100", "repghostnet_100")
SCALE = "mobilenetv3_large_100"


def our_forms(model: torch.nn.Module, x: torch.Tensor) -> list[Form]:
    """`--format auto`'s candidate structures at batch 1, and channels aligned to 4 (split or not, as the others)."""
    forms = candidate_structures(model, x)
    forms += [dataclasses.replace(f, align=4) for f in forms if f.align == 8]
    return [dataclasses.replace(f, dynamic_batch=False) for f in forms]


def candidates(name: str, x: torch.Tensor, workdir: Path) -> list[dict]:
    """Every candidate of one table: label, bound call, parity (ours) and the file."""
    model = ghostnet.create_model(name).eval()
    eager, truth = eager_and_reference(model, x)
    rows = []
    for i, form in enumerate(our_forms(model, x)):
        path = export_ncnn(build_form(model, form, x), workdir / f"{name}.{i}.param", x)
        session = NcnnSession(path, threads=1)
        parity = float32_parity(session(x), eager, truth)
        rows.append({"label": f"ours: {form.describe()}", "form": form.to_dict(), "call": session.bind(x),
                     "exact": parity.ok, "parity": str(parity), "path": path})
    for peer in dict.fromkeys((name, SCALE)):
        path = export_ncnn(timm_model(peer), workdir / f"timm_{peer}.param", x)
        rows.append({"label": f"timm {peer} (trace -> pnnx)", "peer": peer,
                     "call": NcnnSession(path, threads=1).bind(x), "path": path})
    return rows


def measure(name: str, rounds: int, reps: int, profiled: bool = False) -> dict:
    """One table: every candidate of `name` timed interleaved; with `profiled`, the per-layer-type profile of ours
    plain and fastest and of the peers."""
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        rows = candidates(name, x, Path(tmp))
        before = load_average()
        samples = time_interleaved([r.pop("call") for r in rows], rounds, reps, warmup=5)
        for row, (per_round, cpu) in zip(rows, samples):
            row["median_ms"], row["cpu_ms"] = median_ms(per_round), statistics.median(cpu)
        fastest = min((r for r in rows if r.get("exact")), key=lambda r: r["cpu_ms"])
        for row in rows:
            if profiled and (row is rows[0] or row is fastest or "peer" in row):
                row["profile_ms"] = profile(row["path"], x)
            row["path"] = str(row["path"])
    return {"model": name, "rows": rows, "load_average": [before, load_average()]}


def profile_markdown(table: dict) -> list[str]:
    """Per-layer-type CPU ms of the profiled candidates, one column each."""
    rows = [r for r in table["rows"] if "profile_ms" in r]
    if not rows:
        return []
    kinds = sorted({k for r in rows for k in r["profile_ms"]}, key=lambda k: -max(r["profile_ms"].get(k, 0)
                                                                                 for r in rows))
    lines = ["| layer type (cpu ms, profiled) | " + " | ".join(r["label"] for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    lines += [f"| {k} | " + " | ".join(f"{r['profile_ms'].get(k, 0):.2f}" for r in rows) + " |" for k in kinds]
    lines.append("| total | " + " | ".join(f"{sum(r['profile_ms'].values()):.2f}" for r in rows) + " |")
    return lines


def markdown(table: dict) -> list[str]:
    """Rows: candidate, median ms, cpu ms, ratios (median and cpu) to timm's same-name model and to MobileNetV3."""
    rows = table["rows"]
    peer = next(r for r in rows if r.get("peer") == table["model"])
    scale = next(r for r in rows if r.get("peer") == SCALE)
    lines = [f"| {table['model']}: ncnn, 1 thread | median ms | cpu ms | vs timm {table['model']} (median / cpu) | "
             f"vs timm {SCALE} (median / cpu) | exact |", "|---|---|---|---|---|---|"]
    def ratio(r: dict, ref: dict) -> str:
        return f"{r['median_ms'] / ref['median_ms']:.3f} / {r['cpu_ms'] / ref['cpu_ms']:.3f}"

    for r in rows:
        exact = {True: "yes", False: "**no**", None: ""}[r.get("exact")]
        lines.append(f"| {r['label']} | {r['median_ms']:.2f} | {r['cpu_ms']:.2f} | {ratio(r, peer)} | "
                     f"{ratio(r, scale)} | {exact} |")
    return lines


def profile(param: Path, x: torch.Tensor, reps: int = 15) -> dict[str, float]:
    """CPU milliseconds per layer type at one thread: ncnn's Python package has no per-layer timer, so every layer's
    output is extracted in turn (in file order, blobs kept: each extraction runs that one layer) and its thread time
    taken; each extraction also costs the Python call, the time of a Split layer (which copies nothing)."""
    import ncnn

    from ghostnet.deploy.runtimes.ncnn import ncnn_layers

    session = NcnnSession(param, threads=1)
    tops = [line.split()[4 + int(line.split()[2])] for line in param.read_text().splitlines()[3:]]
    kinds = [kind for kind, _ in ncnn_layers(param)][1:]
    mat = ncnn.Mat(x[0].numpy()).clone()
    per_layer = [[] for _ in tops]
    for _ in range(reps):
        with session.net.create_extractor() as extractor:
            extractor.set_light_mode(False)  # keep every blob: each extraction runs one layer
            extractor.input(session.input_name, mat)
            for i, top in enumerate(tops):
                start = time.thread_time()
                extractor.extract(top, 1)  # 1: as ncnn holds it (no unpacking into a plain layout)
                per_layer[i].append((time.thread_time() - start) * 1e3)
    totals: dict[str, float] = {}
    for kind, times in zip(kinds, per_layer):
        totals[kind] = totals.get(kind, 0.0) + statistics.median(times)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def top1(session: NcnnSession, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (percent) of an ncnn model, image by image."""
    return 100.0 * float((session(images).argmax(1) == labels).float().mean())


def int8_study(run: Path, data: Path, rounds: int, reps: int, workdir: Path) -> dict:
    """A CIFAR-10-trained model (a `ghostnet train` run folder) in ncnn: float32 and int8 (KL and minmax calibration,
    depthwise convs int8 or float32), top-1 on the 10,000 test images, and batch-1 latency interleaved."""
    from ghostnet.data import TransformConfig
    from ghostnet.deploy.quantize import calibration_batches, load_images
    from ghostnet.deploy.runtimes.ncnn import export_ncnn_int8
    from ghostnet.train.state import load_trained

    trained = load_trained(run / "last.safetensors")
    transform = TransformConfig.from_eval_dict(trained.data_config)
    test_x, test_y = load_images(data, transform, "val")
    calibration = calibration_batches(load_images(data, transform, "train", num_images=512, seed=1)[0])
    form = Form(split=True, dynamic_batch=False)
    model = build_form(trained.model, form, test_x[:1])
    rows = [{"setting": f"float32 ({form.describe()})",
             "path": export_ncnn(model, workdir / "fp32.param", test_x[:1])}]
    for method, depthwise in (("kl", True), ("kl", False), ("minmax", True), ("minmax", False)):
        start = time.time()
        path = export_ncnn_int8(model, workdir / f"int8_{method}_{depthwise}.param", test_x[:1], calibration,
                                method=method, quantize_depthwise=depthwise)
        rows.append({"setting": f"int8, {method} calibration, depthwise {'int8' if depthwise else 'float32'}",
                     "path": path, "export_s": time.time() - start})
    for row in rows:
        row["top1"] = top1(NcnnSession(row["path"], threads=1), test_x, test_y)
        row["drop"] = rows[0]["top1"] - row["top1"]
        print(f"{row['setting']}: {row['top1']:.2f}%", flush=True)
    samples = time_interleaved([NcnnSession(r["path"], threads=1).bind(test_x[:1]) for r in rows], rounds, reps, 5)
    for row, (per_round, cpu) in zip(rows, samples):
        row["median_ms"], row["cpu_ms"] = median_ms(per_round), statistics.median(cpu)
        row["path"] = str(row["path"])
    return {"run": str(run), "model": f"{trained.info.get('model')} {trained.info.get('model_kwargs', {})}",
            "rows": rows, "at_224": int8_latency_224(rounds, reps, workdir)}


def int8_latency_224(rounds: int, reps: int, workdir: Path) -> list[dict]:
    """Batch-1 latency at 224x224 of ghostnet_100 (split form) and timm's mobilenetv3_large_100 in ncnn, float32
    and int8 (depthwise int8 or float32), interleaved. Random weights and calibration images: the files only set the
    kernels that run, not the accuracy (minmax calibration: the same layers and kernels as KL, sooner)."""
    from ghostnet.deploy.runtimes.ncnn import export_ncnn_int8

    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    calibration = [torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))]
    models = {"ghostnet_100 (ours, split)": build_form(ghostnet.create_model("ghostnet_100").eval(),
                                                       Form(split=True, dynamic_batch=False), x),
              f"timm {SCALE}": timm_model(SCALE)}
    rows = []
    for i, (label, model) in enumerate(models.items()):
        rows.append({"model": label, "setting": "float32", "path": export_ncnn(model, workdir / f"l{i}.param", x)})
        for depthwise in (True, False):
            path = export_ncnn_int8(model, workdir / f"l{i}_{depthwise}.param", x, calibration, method="minmax",
                                    quantize_depthwise=depthwise)
            rows.append({"model": label, "setting": f"int8, depthwise {'int8' if depthwise else 'float32'}",
                         "path": path})
    samples = time_interleaved([NcnnSession(r["path"], threads=1).bind(x) for r in rows], rounds, reps // 2, 5)
    for row, (per_round, cpu) in zip(rows, samples):
        row["median_ms"], row["cpu_ms"], row["path"] = median_ms(per_round), statistics.median(cpu), str(row["path"])
    return rows


def int8_markdown(study: dict) -> list[str]:
    """The int8 table: setting, top-1, drop, latency and its ratio to float32."""
    rows = study["rows"]
    lines = ["| ncnn, CIFAR-10 test set (10,000 images) | top-1 | drop (points) | median ms | cpu ms | "
             "cpu vs float32 |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['top1']:.2f} | {r['drop']:.2f} | {r['median_ms']:.3f} | "
                     f"{r['cpu_ms']:.3f} | {r['cpu_ms'] / rows[0]['cpu_ms']:.2f} |")
    lines += ["", "| ncnn, 224x224, batch 1, 1 thread | setting | median ms | cpu ms | cpu vs its float32 | "
              f"cpu vs timm {SCALE} float32 |", "|---|---|---|---|---|---|"]
    at_224 = study["at_224"]
    scale = next(r for r in at_224 if r["model"] == f"timm {SCALE}" and r["setting"] == "float32")
    for r in at_224:
        own = next(f for f in at_224 if f["model"] == r["model"] and f["setting"] == "float32")
        lines.append(f"| {r['model']} | {r['setting']} | {r['median_ms']:.2f} | {r['cpu_ms']:.2f} | "
                     f"{r['cpu_ms'] / own['cpu_ms']:.2f} | {r['cpu_ms'] / scale['cpu_ms']:.2f} |")
    return lines


def main() -> None:
    parser = runtime_bench_arguments(__doc__.splitlines()[0], MODELS, rounds=9, out="results/ncnn")
    parser.add_argument("--profile", action="store_true", help="also profile ours (plain, fastest) and the peers "
                        "per layer type")
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = environment()
    if args.int8_run:
        with tempfile.TemporaryDirectory() as tmp:
            study = int8_study(args.int8_run, args.data, args.rounds, args.reps, Path(tmp))
        lines = [f"{env['cpu']}, {env['isa']}; ncnn {env.get('ncnn')}; {env['date']}; load average before "
                 f"{env['load_average']}, after {load_average()}. {study['model']} from {study['run']}; batch 1, "
                 "32x32, 1 thread."] + [""] + int8_markdown(study)
        write(args.out, lines, {"environment": env, "int8": study})
        return
    tables = []
    for name in args.models.split(","):
        tables.append(measure(name, args.rounds, args.reps, args.profile))
        print("\n".join(markdown(tables[-1]) + profile_markdown(tables[-1])), flush=True)
    lines = [f"{env['cpu']}, {env['isa']}, {env['cpu_count']} vCPUs; ncnn {env.get('ncnn')}, torch {env['torch']}, "
             f"timm {env['timm']}; {env['date']}. Median and CPU ms per call, batch 1, 224x224, float32, 1 thread."]
    for table in tables:
        lines += ["", f"load average before/after: {table['load_average']}", ""] + markdown(table)
        lines += [""] + profile_markdown(table) if profile_markdown(table) else []
    write(args.out, lines, {"environment": env, "tables": tables})


if __name__ == "__main__":
    main()
