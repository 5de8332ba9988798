"""`ghostnet export`, `ghostnet quantize` and `ghostnet bench`: deployment files and the latency harness."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from ..utils import check_folder_writable, ensure_writable


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None

    return parse


def _alignment(text: str):
    """`--align-channels`: a non-negative integer or "auto"."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'auto', got {text!r}")
    return value


#: `ghostnet export --format auto`: the fastest exact file on this machine (`deploy.autotune`).
AUTO_FORMAT = "auto"


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `export`, `quantize` and `bench`."""
    _add_export(subparsers)
    _add_quantize(subparsers)
    _add_bench(subparsers)


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    from ..deploy.export import export_formats
    from ..deploy.forms import SINGLE_PATH_CHOICES
    from ..deploy.hub_export import HF_FORMAT
    from ..deploy.onnx_io import ONNX_EXPORTERS
    from ..deploy.runtimes.openvino import SOURCES

    p = subparsers.add_parser("export", help="export a model (fused by default) to ONNX, OpenVINO, ExecuTorch, "
                              "TorchScript or torch.export, the fastest exact file for this machine (--format auto), "
                              "or a Hugging Face Hub folder", description="Export a registered model, fused for "
                              "inference by default. --format auto tries every installed runtime and exact form on "
                              "this machine, checks each against the model, times them and writes the fastest as "
                              "OUTPUT.<suffix> with a record OUTPUT.json (cached per CPU). ONNX and OpenVINO files "
                              "have a dynamic batch dimension unless --no-dynamic-batch; ExecuTorch files (XNNPACK, "
                              "for phones) take batch 1. --format hf writes a folder in timm's Hugging Face Hub "
                              "layout (config.json, model.safetensors, a README.md model card; unfused) that "
                              "timm.create_model('local-dir:DIR') and ghostnet load.")
    p.add_argument("model", help="registered model name (ghostnet models lists them)")
    p.add_argument("--weights", help="checkpoint file to load (default: random weights)")
    p.add_argument("--format", default="onnx", choices=export_formats() + (AUTO_FORMAT, HF_FORMAT))
    p.add_argument("--output", "-o", type=Path, help="output file (default: MODEL + the format's suffix; "
                   "--format auto: a stem, default MODEL; --format hf: a folder, default MODEL-hf)")
    p.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=True,
                   help="fold batch norms, re-parameterize v3 and use the lean Ghost blocks first")
    p.add_argument("--num-classes", type=int, help="classifier size (must match --weights)")
    p.add_argument("--image-size", type=int, help="export image size (default: the model's input size)")
    p.add_argument("--opset", type=int, help="ONNX opset (>= 17; default 18)")
    p.add_argument("--exporter", choices=ONNX_EXPORTERS,
                   help="torch.onnx exporter (default torchscript; dynamo: smaller graphs, 10x slower export)")
    p.add_argument("--source", choices=SOURCES, help="OpenVINO: convert from the ONNX file (default) or from the "
                   "PyTorch module directly")
    p.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=None,
                   help="a dynamic batch dimension (the default, where the format has one); --no-dynamic-batch "
                   "writes a file for batch 1 only (often faster). --format auto tries both unless told")
    p.add_argument("--align-channels", type=_alignment, default=0, metavar="N|auto",
                   help="pad a fused GhostNet's channels to multiples of N for onnxruntime's blocked CPU kernels "
                   "(16 with AVX-512, 8 with AVX2; 0: off; auto: the block of the CPU this runs on)")
    p.add_argument("--single-path", default="auto", choices=SINGLE_PATH_CHOICES,
                   help="Ghost modules without their concat (primary outputs duplicated, identity kernels in the "
                   "cheap conv): auto = where it pays with channel alignment (only with --align-channels), "
                   "all = every module that allows it, none = keep the concat")
    p.add_argument("--split", action="store_true", help="no concat between a Ghost bottleneck's two modules (each "
                   "consumer takes the halves separately; exact)")
    p.add_argument("--threads", type=int, default=1, help="--format auto: the thread count to choose for")
    p.add_argument("--runtimes", type=_csv(str), help="--format auto: only these runtimes (comma-separated)")
    p.add_argument("--retune", action="store_true", help="--format auto: measure again even if this machine's "
                   "choice is cached")
    p.add_argument("--check", action="store_true", help="run the written file and compare it with the model")
    p.add_argument("--int8-calibration-data", metavar="DATA",
                   help="quantize to int8 (ONNX: onnxruntime's QDQ; ExecuTorch: XNNPACK), calibrating on real "
                   "images from this ImageFolder root or folder of .npz shards (its train split)")
    p.add_argument("--num-images", type=int, default=256, help="calibration images for --int8-calibration-data")
    p.add_argument("--latency", action="store_true",
                   help="--format hf: add latency measured by the bench harness to the model card (takes a while)")
    p.add_argument("--license", help="--format hf: the weights' licence as a Hugging Face licence id (apache-2.0, "
                   "mit, ...; default: the published weights' own, else none stated)")
    p.set_defaults(func=run_export)


def _add_quantize(subparsers: argparse._SubParsersAction) -> None:
    from ..deploy.quantize import CALIBRATION_METHODS

    p = subparsers.add_parser("quantize", help="int8 post-training static quantization of an ONNX file",
                              description="Quantize an fp32 ONNX file (from `ghostnet export`) to int8 with "
                              "onnxruntime, calibrating activation ranges on real images.")
    p.add_argument("onnx", type=Path, help="fp32 ONNX file")
    p.add_argument("--model", required=True, help="the registered model it was exported from (for the input "
                   "size, mean and std of the calibration images)")
    p.add_argument("--calibration-data", required=True,
                   help="ImageFolder root or folder of .npz shards with real images")
    p.add_argument("--split", default="train", help="which split to draw calibration images from")
    p.add_argument("--num-images", type=int, default=512)
    p.add_argument("--output", "-o", type=Path, help="output file (default: NAME.int8.onnx beside the input)")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="one weight scale per output channel")
    p.add_argument("--quantize-depthwise", action="store_true",
                   help="quantize depthwise convs too (kept in float by default, a precaution: int8 GhostNet is "
                   "reported to collapse there, which docs/benchmarks.md did not reproduce)")
    p.add_argument("--all-ops", action="store_true",
                   help="quantize every op onnxruntime can (Add, Concat, ...), not only Conv/Gemm/MatMul")
    p.add_argument("--method", default="minmax", choices=CALIBRATION_METHODS)
    p.set_defaults(func=run_quantize)


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    from ..constants import DTYPES
    from ..deploy.bench_config import DEFAULT_PEERS, MODES, known_backends
    from ..deploy.bench_report import DEFAULT_REFERENCE

    p = subparsers.add_parser("bench", help="latency and throughput against timm/torchvision peers",
                              description="Time models with several backends against peers, interleaved, on the "
                              "same input; writes NAME.json, NAME.md and NAME.png.")
    p.add_argument("models", nargs="*", default=None,
                   help="model specs: NAME, timm:NAME, torchvision:NAME or package.module:callable (default "
                   "ghostnet_100; with --front: every model of the weights table with a published top-1)")
    p.add_argument("--peers", type=_csv(str), default=None,
                   help="comma-separated model specs of peers (same grammar; empty string for none; default "
                   f"{','.join(DEFAULT_PEERS)}; with --front: every peer listed with a published top-1)")
    p.add_argument("--backends", type=_csv(str), default=None,
                   help=f"comma-separated, from {','.join(known_backends())} (default eager,fused,onnxruntime; "
                   "best: each model, ours and peers, in its fastest exact form and runtime here; with --front: "
                   "best on a CPU with a file runtime, and each model keeps its fastest backend)")
    p.add_argument("--front", action="store_true",
                   help="accuracy per millisecond: published ImageNet top-1 against measured latency, with the "
                   "Pareto front (writes NAME.md, NAME.json, NAME.png; see docs/deployment.md)")
    p.add_argument("--threads", type=_csv(int), default=[1, 2], help="comma-separated thread counts")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=20, help="timed calls per candidate per round")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last weights for the fused, torchscript and compile backends (default on), and "
                        "for every model's training steps (--mode train; default: the layout `ghostnet train "
                        "--channels-last auto` chooses, measured)")
    p.add_argument("--cuda-graphs", action="store_true", help="replay CUDA graphs (CUDA only)")
    p.add_argument("--mode", default="infer", choices=MODES)
    p.add_argument("--align-channels", type=_alignment, default="auto", metavar="N|auto",
                   help="backends of runtimes with blocked kernels (onnxruntime, ExecuTorch): pad our GhostNets' "
                   "channels to multiples of N (default auto: the CPU's NCHWc block, 16 with AVX-512, 8 with AVX2; "
                   "0: off)")
    p.add_argument("--reference", default=DEFAULT_REFERENCE,
                   help="MODEL/BACKEND the ratio column divides by")
    p.add_argument("--out-dir", type=Path, default=Path("bench-results"))
    p.add_argument("--name", default="bench", help="file name stem of the outputs")
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=run_bench)


def _check_hf_flags(args: argparse.Namespace, hf: bool) -> None:
    """--format hf writes the training form as it is: the file formats' flags do not apply, and its own only to it."""
    if hf:
        used = [flag for flag, value in (("--check", args.check), ("--image-size", args.image_size),
                                         ("--align-channels", args.align_channels),
                                         ("--int8-calibration-data", args.int8_calibration_data)) if value]
        if used:
            raise ValueError(f"{', '.join(used)}: not for --format hf (a folder of the model's unfused weights)")
    elif args.latency or args.license:
        raise ValueError("--latency and --license go with --format hf")


def _export_options(args: argparse.Namespace) -> dict[str, Any]:
    """The runtime options given on the command line (the runtime refuses those it does not take)."""
    given = {"opset": args.opset, "exporter": args.exporter, "source": args.source}
    return {key: value for key, value in given.items() if value is not None}


def _run_export_auto(args: argparse.Namespace) -> int:
    from ..deploy.autotune import export_fastest

    fixed = [flag for flag, used in (("--no-fuse", not args.fuse), ("--align-channels", args.align_channels),
                                     ("--single-path", args.single_path != "auto"), ("--split", args.split),
                                     ("--int8-calibration-data", args.int8_calibration_data),
                                     ("--opset/--exporter/--source", _export_options(args))) if used]
    if fixed:
        raise ValueError(f"{', '.join(fixed)}: --format auto chooses the form itself (give a format to fix it)")
    stem = args.output or Path(args.model)
    ensure_writable(stem.with_name(stem.name + ".json"), "--output")
    result = export_fastest(args.model, stem, threads=args.threads, weights=args.weights,
                            num_classes=args.num_classes, image_size=args.image_size, runtimes=args.runtimes,
                            dynamic_batch=args.dynamic_batch, retune=args.retune, progress=print)
    record = result.record
    how = "cached choice" if result.cached else f"fastest of {len(record['candidates'])} candidates"
    print(f"wrote {result.path} ({record['runtime']}, {record['describe']}; {how}: {record['latency_ms']:.2f} ms "
          f"at {args.threads} thread(s)) and {result.record_path}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """`ghostnet export`: write the deployment form of a model, and with --check compare it with the model."""
    from ..deploy.export import format_suffix
    from ..deploy.hub_export import HF_FORMAT, export_hf
    from ..deploy.pipeline import export_for_deployment

    _check_hf_flags(args, args.format == HF_FORMAT)
    if args.format == HF_FORMAT:
        folder = check_folder_writable(args.output or Path(args.model + "-hf"), "--output")
        export_hf(args.model, folder, weights=args.weights, num_classes=args.num_classes, latency=args.latency,
                  license=args.license)
        print(f"wrote {folder} (config.json, model.safetensors, README.md)")
        return 0
    if args.format == AUTO_FORMAT:
        return _run_export_auto(args)
    output = ensure_writable(args.output or Path(args.model + format_suffix(args.format)), "--output")
    export = export_for_deployment(
        args.model, output, args.format, weights=args.weights, num_classes=args.num_classes,
        image_size=args.image_size, fused=args.fuse, dynamic_batch=args.dynamic_batch is not False,
        align_channels=args.align_channels, single_path=args.single_path, split=args.split,
        int8_calibration_data=args.int8_calibration_data, num_images=args.num_images, **_export_options(args))
    print(f"wrote {export.path} ({export.form})")
    if args.check:
        check = export.check()
        print(f"max abs difference from the model's float64 output on a batch of {check.batch_size}: "
              f"{check.difference:.3g} (limit {check.limit:.3g})")
        check.raise_if_failed()
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    """`ghostnet quantize`: int8 post-training quantization of an ONNX file, calibrated on real images."""
    from ..deploy.quantize import DEFAULT_OP_TYPES, calibration_batches, load_calibration_images, quantize_onnx
    from ..models.spec import data_config_of as data_defaults

    output = ensure_writable(args.output or args.onnx.with_suffix(".int8.onnx"), "--output")
    data_config = data_defaults(args.model)
    images = load_calibration_images(args.calibration_data, data_config, args.num_images, args.split)
    quantize_onnx(args.onnx, output, calibration_batches(images), per_channel=args.per_channel,
                  keep_depthwise_float=not args.quantize_depthwise, method=args.method,
                  op_types=None if args.all_ops else DEFAULT_OP_TYPES)
    print(f"wrote {output} (int8, calibrated on {len(images)} images)")
    return 0


def _bench_config(args: argparse.Namespace, models: list, peers: list, backends: list):
    """The harness settings from the command line."""
    from ..deploy.bench import BenchConfig

    return BenchConfig(models=models, peers=peers, backends=backends, threads=args.threads,
                       batch_size=args.batch_size, image_size=args.image_size, rounds=args.rounds, reps=args.reps,
                       warmup=args.warmup, device=args.device, dtype=args.dtype, channels_last=args.channels_last,
                       cuda_graphs=args.cuda_graphs, mode=args.mode, align_channels=args.align_channels)


def _run_front(args: argparse.Namespace) -> int:
    """`ghostnet bench --front`: published top-1 against latency measured here, with the Pareto front."""
    from ..deploy.front import default_front_backends, front_entries, front_markdown, run_front, write_front

    entries = front_entries(args.models or None, args.peers)
    backends = args.backends or default_front_backends(args.device)
    front = run_front(_bench_config(args, [], [], backends), entries,
                      progress=lambda message: print(message, flush=True))
    paths = write_front(front, args.out_dir, args.name, plot=args.plot)
    print(front_markdown(front))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """`ghostnet bench`: time models against peers and write the report (or, with --front, the accuracy front)."""
    from ..deploy.bench import run_benchmark, to_markdown, write_report
    from ..deploy.bench_config import DEFAULT_PEERS

    check_folder_writable(args.out_dir, "--out-dir")
    if args.front:
        return _run_front(args)
    models = args.models or ["ghostnet_100"]
    peers = list(DEFAULT_PEERS) if args.peers is None else args.peers
    cfg = _bench_config(args, models, peers, args.backends or ["eager", "fused", "onnxruntime"])
    result = run_benchmark(cfg, progress=lambda message: print(message, flush=True))
    paths = write_report(result, args.out_dir, args.name, plot=args.plot, reference=args.reference)
    print(to_markdown(result, args.reference))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
