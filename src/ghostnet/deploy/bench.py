"""Latency / throughput harness: our models and timm / torchvision peers, several backends, measured interleaved.

Every candidate (model x backend) runs on the same input tensor. Within one thread count the candidates take turns:
each round times `reps` calls of every candidate in a rotating order, so a burst of load from other processes hits
all of them alike. Reported per candidate: the median over all calls, the spread (25th-75th percentile), the best
round's median (the figure least disturbed by other processes), the CPU time per call (the process's CPU time:
insensitive to being descheduled, so it is the steadiest number on a shared machine at one thread) and images/s.

On CUDA, calls are timed with CUDA events, models run channels-last in the requested dtype (bf16 by default for
throughput), and `cuda_graphs=True` replays a captured graph instead of launching kernels one by one.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..utils import atomic_write
from .align import nchwc_block_size
from .fuse import fuse, single_path_ghost_modules

PathLike = Union[str, os.PathLike]

BACKENDS = ("eager", "fused", "single-path", "torchscript", "compile", "onnxruntime", "int8", "executorch",
            "executorch-int8")
EXECUTORCH_BACKENDS = ("executorch", "executorch-int8")
MODES = ("infer", "train")
#: Backends that only make sense for our own models (peers have no Ghost-aware fusion).
OWN_ONLY_BACKENDS = ("fused", "single-path")
DEFAULT_PEERS = ("timm:ghostnet_100", "timm:mobilenetv3_large_100", "torchvision:mobilenet_v3_large")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

__all__ = ["BACKENDS", "BenchConfig", "BenchResult", "BenchRow", "DEFAULT_PEERS", "build_model", "count_macs",
           "environment", "plot_latency_vs_macs", "run_benchmark", "to_markdown", "write_report"]


class BackendUnavailable(RuntimeError):
    """A backend that cannot run here (missing package, no CUDA provider, ...); the candidate is skipped."""


@dataclass
class BenchConfig:
    """What to measure. `models` are registry names; `peers` are "timm:NAME" or "torchvision:NAME"."""

    models: Sequence[str] = ("ghostnet_100",)
    peers: Sequence[str] = DEFAULT_PEERS
    backends: Sequence[str] = ("eager", "fused", "onnxruntime")
    threads: Sequence[int] = (1, 2)
    batch_size: int = 1
    image_size: int = 224
    rounds: int = 5
    reps: int = 20
    warmup: int = 5
    device: str = "cpu"
    dtype: str = "float32"
    channels_last: bool = True
    cuda_graphs: bool = False
    mode: str = "infer"
    # onnxruntime and executorch backends, our GhostNets: None = the CPU's NCHWc block, 0 = off
    align_channels: Optional[int] = None
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError for settings the harness cannot run."""
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; expected some of {BACKENDS}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "train" and set(self.backends) - {"eager", "compile"}:
            raise ValueError("train mode measures the 'eager' and 'compile' backends only")
        if self.mode == "train" and (self.cuda_graphs or self.dtype == "float16"):
            raise ValueError("train mode runs float32 or bfloat16 autocast, without CUDA graphs")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.device == "cpu" and self.dtype != "float32":
            raise ValueError("on CPU only float32 is measured (use the int8 backend for reduced precision)")
        if self.cuda_graphs and self.device != "cuda":
            raise ValueError("cuda_graphs needs device='cuda'")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        for name, value in (("batch_size", self.batch_size), ("image_size", self.image_size),
                            ("rounds", self.rounds), ("reps", self.reps)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not self.threads or min(self.threads) < 1:
            raise ValueError(f"threads must be positive integers, got {list(self.threads)}")
        if not self.models and not self.peers:
            raise ValueError("nothing to measure: give at least one model or peer")


@dataclass
class BenchRow:
    """One candidate's measurements (times in milliseconds per call)."""

    model: str
    source: str
    backend: str
    threads: int
    batch_size: int
    image_size: int
    device: str
    dtype: str
    mode: str
    median_ms: float
    p25_ms: float
    p75_ms: float
    best_round_ms: float
    cpu_ms: float
    images_per_s: float
    macs: int
    params: int
    calls: int


@dataclass
class BenchResult:
    """Rows plus what produced them: config, machine, versions, load average before and after, skipped candidates."""

    config: dict[str, Any]
    environment: dict[str, Any]
    rows: list[BenchRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "environment": self.environment, "rows": [asdict(r) for r in self.rows],
                "skipped": self.skipped}


# --- environment and model cost --------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except AttributeError:  # installed without a __version__ (executorch): ask the package metadata
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - absent or broken optional package
        return None


def _load_average() -> Optional[list[float]]:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def environment(device: str = "cpu") -> dict[str, Any]:
    """Machine, library versions and the current load average."""
    env = {
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": _version("torchvision"), "timm": _version("timm"), "onnxruntime": _version("onnxruntime"),
        "onnx": _version("onnx"), "executorch": _version("executorch"), "load_average": _load_average(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates per image of one forward (conv + linear, via torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x[:1])
    return counter.get_total_flops() // 2


def build_model(spec: str, num_classes: Optional[int] = None) -> tuple[str, str, nn.Module]:
    """(label, source, model in eval mode) for any model spec (ghostnet.models.spec: NAME, timm:NAME,
    torchvision:NAME, package.module:callable); source is ghostnet, timm, torchvision or import."""
    from ..models.spec import create_from_spec, parse_model_spec

    parsed = parse_model_spec(spec)
    if parsed.source == "timm" and importlib.util.find_spec("timm") is None:
        raise BackendUnavailable("timm is not installed")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return parsed.label, parsed.source, create_from_spec(parsed, **kwargs).eval()


# --- backends ----------------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    label: str
    source: str
    model: nn.Module
    macs: int
    params: int
    export_files: dict[str, Path] = field(default_factory=dict)


def _deploy_form(prep: _Prepared, x: torch.Tensor, align: int) -> nn.Module:
    """What our exports run: fused and, for blocked CPU kernels, channel-aligned (what `ghostnet export
    --align-channels` writes); peers as they are, since onnxruntime and XNNPACK fold their batch norms themselves."""
    from .align import align_channels, can_align

    if prep.source != "ghostnet":
        return prep.model
    model = fuse(prep.model, example_input=x[:1])
    return align_channels(model, align) if align and can_align(model) else model


def _alignment(cfg: BenchConfig) -> int:
    """The channel alignment of our exports: the configured one, or the CPU's NCHWc block (0: none)."""
    return nchwc_block_size() if cfg.align_channels is None else cfg.align_channels


def _timing_calibration(shape: torch.Size, batches: int) -> list[torch.Tensor]:
    """Calibration batches for int8 backends that are only timed: random data gives the same graph and kernels as
    real images would."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator) for _ in range(batches)]


def _pte_file(prep: _Prepared, x: torch.Tensor, workdir: Path, align: int, int8: bool) -> Path:
    """The ExecuTorch (XNNPACK) program of `prep`, fp32 or int8, for inputs shaped like `x`, exported once and kept."""
    from .export import export_executorch

    key = "pte-int8" if int8 else "pte"
    if key not in prep.export_files:
        path = workdir / (prep.label.replace("/", "_") + (".int8.pte" if int8 else ".pte"))
        calibration = _timing_calibration(x.shape, 4) if int8 else None
        prep.export_files[key] = export_executorch(_deploy_form(prep, x, align), path, x, calibration)
    return prep.export_files[key]


def _onnx_file(prep: _Prepared, x: torch.Tensor, workdir: Path, variant: str, align: int) -> Path:
    """The ONNX file of `prep` for the "onnxruntime" (fp32) or "int8" backend, exported once and kept."""
    from .export import export_onnx
    from .quantize import quantize_onnx

    if variant in prep.export_files:
        return prep.export_files[variant]
    stem = workdir / prep.label.replace("/", "_")
    if variant == "int8":
        # Quantized from the fp32 graph the "onnxruntime" backend runs (for ours: channel-aligned, single-path
        # modules), which onnxruntime's int8 kernels run 25-35% faster than the plain export's.
        calibration = _timing_calibration(x[:8].shape, 2)
        # The fastest int8 graph onnxruntime runs here: every op quantized, depthwise convs included (per-channel
        # weights, uint8 activations); benchmarks/bench_int8.py measures its accuracy.
        path = quantize_onnx(_onnx_file(prep, x, workdir, "fp32", align), stem.with_suffix(".int8.onnx"),
                             calibration, keep_depthwise_float=False, op_types=None)
    else:
        path = export_onnx(_deploy_form(prep, x, align), stem.with_suffix(f".{variant}.onnx"), x[:1])
    prep.export_files[variant] = path
    return path


def _cuda_graph_runner(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Callable[[], Any]:
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up (cuDNN autotuning, lazy init) outside the capture
            fn(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(static_x)
    return graph.replay


def _train_step(model: nn.Module, x: torch.Tensor, compiled: bool) -> Callable[[], Any]:
    """One SGD step on `x` (float32 weights; bfloat16 autocast when `x` is bfloat16, as mixed-precision training)."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def autocast() -> torch.autocast:
        return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.dtype == torch.bfloat16)

    with torch.no_grad(), autocast():  # the eager model, so that a compiled one first sees the timed batch size
        num_classes = model(x[:2]).shape[-1]
    forward = torch.compile(model) if compiled else model
    target = torch.randint(0, num_classes, (x.shape[0],), device=x.device)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(forward(x).float(), target)
        loss.backward()
        optimizer.step()

    return step


def _make_runner(backend: str, prep: _Prepared, x: torch.Tensor, cfg: BenchConfig, threads: int,
                 workdir: Path) -> Callable[[], Any]:
    """A zero-argument callable doing one measured call of `prep.model` on `x` with `backend`."""
    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if backend in ("onnxruntime", "int8"):
        if device.type != "cpu":
            raise BackendUnavailable("onnxruntime is measured on CPU only")
        if importlib.util.find_spec("onnxruntime") is None:
            raise BackendUnavailable("onnxruntime is not installed")
        from .export import onnx_session
        path = _onnx_file(prep, x, workdir, "int8" if backend == "int8" else "fp32", _alignment(cfg))
        session = onnx_session(path, threads=threads)
        feed = {session.get_inputs()[0].name: x.numpy()}
        return lambda: session.run(None, feed)
    if backend in EXECUTORCH_BACKENDS:
        if device.type != "cpu" or cfg.mode == "train":
            raise BackendUnavailable("ExecuTorch (XNNPACK) is measured for CPU inference only")
        if importlib.util.find_spec("executorch") is None:
            raise BackendUnavailable("executorch is not installed (pip install 'ghostnet-torch[executorch]')")
        from .export import executorch_method

        # The thread pool was sized for this thread count before any program of it was loaded (run_benchmark).
        method = executorch_method(_pte_file(prep, x, workdir, _alignment(cfg), int8=backend == "executorch-int8"))
        inputs = [x.contiguous()]
        return lambda: method.execute(inputs)
    if cfg.mode == "train":
        model = copy.deepcopy(prep.model).to(device, dtype=torch.float32, memory_format=memory_format)
        return _train_step(model, x.to(device, dtype), compiled=backend == "compile")
    if backend == "eager":
        # Peers run the way their users run them: as created, contiguous (NCHW) weights on CPU; channels-last on
        # CUDA, where every published GPU figure (timm's included) uses it.
        eager_format = memory_format if device.type == "cuda" else torch.contiguous_format
        model = copy.deepcopy(prep.model).to(device, dtype, memory_format=eager_format)
    elif backend in ("fused", "single-path"):
        model = fuse(prep.model, example_input=x[:1].to(next(prep.model.parameters()).dtype))
        if backend == "single-path":  # no concats: duplicated primary outputs (see FusedGhostModule.to_single_path)
            single_path_ghost_modules(model)
        model = model.to(device, dtype, memory_format=memory_format)
    else:
        base = fuse(prep.model, example_input=x[:1]) if prep.source == "ghostnet" else copy.deepcopy(prep.model)
        model = base.to(device, dtype, memory_format=memory_format)
    xd = x.to(device, dtype)
    if device.type == "cuda":
        xd = xd.contiguous(memory_format=memory_format)
    if backend == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on shape checks; torch.jit's deprecation notice
            model = torch.jit.freeze(torch.jit.trace(model, xd))
    elif backend == "compile":
        torch._dynamo.reset()  # Inductor's CPU kernels bake in the thread count: compile afresh per count
        model = torch.compile(model, options={"freezing": True} if device.type == "cpu" else {})

    def forward(inp: torch.Tensor) -> Any:
        with torch.inference_mode():
            return model(inp)

    if cfg.cuda_graphs and backend != "compile":
        return _cuda_graph_runner(forward, xd)
    return lambda: forward(xd)


# --- timing ------------------------------------------------------------------------------------------------------


def _time_calls(fn: Callable[[], Any], reps: int, device: str) -> tuple[list[float], float]:
    """(per-call wall milliseconds, CPU milliseconds per call) for `reps` calls."""
    times = []
    cpu_start = time.process_time()
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(reps):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times, (time.process_time() - cpu_start) * 1e3 / reps


def _quantile(values: Sequence[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else values[0]


def _measure(runners: list[tuple[_Prepared, str, Callable[[], Any]]], cfg: BenchConfig, threads: int,
             progress: Optional[Callable[[str], None]]) -> list[BenchRow]:
    for _, _, fn in runners:
        for _ in range(cfg.warmup):
            fn()
    samples: dict[int, list[list[float]]] = {i: [] for i in range(len(runners))}
    cpu: dict[int, list[float]] = {i: [] for i in range(len(runners))}
    for r in range(cfg.rounds):
        order = list(range(len(runners)))
        order = order[r % len(order):] + order[: r % len(order)]  # rotate who goes first each round
        for i in order:
            times, cpu_ms = _time_calls(runners[i][2], cfg.reps, cfg.device)
            samples[i].append(times)
            cpu[i].append(cpu_ms)
        if progress:
            progress(f"threads={threads} round {r + 1}/{cfg.rounds} done")
    rows = []
    for i, (prep, backend, _) in enumerate(runners):
        every = [t for round_times in samples[i] for t in round_times]
        median = statistics.median(every)
        rows.append(BenchRow(
            model=prep.label, source=prep.source, backend=backend, threads=threads, batch_size=cfg.batch_size,
            image_size=cfg.image_size, device=cfg.device, dtype=cfg.dtype, mode=cfg.mode, median_ms=median,
            p25_ms=_quantile(every, 0.25), p75_ms=_quantile(every, 0.75),
            best_round_ms=min(statistics.median(t) for t in samples[i]), cpu_ms=statistics.median(cpu[i]),
            images_per_s=cfg.batch_size * 1e3 / median, macs=prep.macs, params=prep.params, calls=len(every)))
    return rows


def run_benchmark(cfg: BenchConfig, progress: Optional[Callable[[str], None]] = None) -> BenchResult:
    """Measure every model and peer with every applicable backend, interleaved, at each thread count."""
    cfg.validate()
    if cfg.device == "cuda":
        torch.backends.cudnn.benchmark = True
    result = BenchResult(config=asdict(cfg), environment=environment(cfg.device))
    generator = torch.Generator().manual_seed(cfg.seed)
    prepared: list[_Prepared] = []
    for spec in list(cfg.models) + list(cfg.peers):
        try:
            label, source, model = build_model(spec)
        except BackendUnavailable as exc:
            result.skipped.append(f"{spec}: {exc}")
            continue
        chans = getattr(model, "pretrained_cfg", {}).get("input_size", (3,))[0]
        x1 = torch.randn(1, chans, cfg.image_size, cfg.image_size, generator=generator)
        prepared.append(_Prepared(label, source, model, count_macs(model, x1),
                                  sum(p.numel() for p in model.parameters())))
    x = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=generator)
    previous_threads = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for threads in cfg.threads:
                torch.set_num_threads(threads)
                if set(EXECUTORCH_BACKENDS) & set(cfg.backends) and importlib.util.find_spec("executorch"):
                    from .export import set_executorch_threads

                    set_executorch_threads(threads)  # once per count: a resize strands programs loaded before it
                runners = []
                for prep in prepared:
                    for backend in cfg.backends:
                        if backend in OWN_ONLY_BACKENDS and prep.source != "ghostnet":
                            continue
                        try:
                            runners.append((prep, backend, _make_runner(backend, prep, x, cfg, threads, Path(tmp))))
                        except BackendUnavailable as exc:
                            note = f"{prep.label} / {backend}: {exc}"
                            if note not in result.skipped:
                                result.skipped.append(note)
                if progress:
                    progress(f"threads={threads}: timing {len(runners)} candidates")
                result.rows.extend(_measure(runners, cfg, threads, progress))
    finally:
        torch.set_num_threads(previous_threads)
    result.environment["load_average_after"] = _load_average()
    return result


# --- reports -----------------------------------------------------------------------------------------------------


def _reference(rows: list[BenchRow], reference: Optional[str]) -> dict[tuple[int, int], float]:
    """best_round_ms of the reference candidate ("model/backend") per (threads, batch)."""
    refs = {}
    if reference:
        model, _, backend = reference.rpartition("/")
        for row in rows:
            if row.model == model and row.backend == backend:
                refs[(row.threads, row.batch_size)] = row.best_round_ms
    return refs


def to_markdown(result: BenchResult, reference: Optional[str] = "timm/ghostnet_100/eager") -> str:
    """A markdown table per (threads, batch size); `reference` ("model/backend") gives the ratio column."""
    env = result.environment
    lines = [f"Machine: {env['cpu']} ({env['cpu_count']} CPUs{', GPU ' + env['gpu'] if 'gpu' in env else ''}); "
             f"torch {env['torch']}, torchvision {env['torchvision']}, timm {env['timm']}, "
             f"onnxruntime {env['onnxruntime']}"
             + (f", executorch {env['executorch']}" if env.get("executorch") else "")
             + f"; {env['date']}; load average before "
             f"{_fmt_load(env.get('load_average'))}, after {_fmt_load(env.get('load_average_after'))}.", ""]
    refs = _reference(result.rows, reference)
    groups: dict[tuple[int, int], list[BenchRow]] = {}
    for row in result.rows:
        groups.setdefault((row.threads, row.batch_size), []).append(row)
    for (threads, batch), rows in groups.items():
        first = rows[0]
        lines.append(f"**{first.mode}, {threads} thread(s), batch {batch}, {first.image_size}x{first.image_size}, "
                     f"{first.device} {first.dtype}**")
        lines.append("")
        ratio_head = f" | ratio vs {reference}" if (threads, batch) in refs else ""
        lines.append("| model | backend | MACs (M) | best-round median ms | median ms (p25-p75) | CPU ms/call | "
                     f"images/s{ratio_head} |")
        lines.append("|---|---|---|---|---|---|---" + ("|---|" if ratio_head else "|"))
        for row in sorted(rows, key=lambda r: r.best_round_ms):
            ratio = f" | {row.best_round_ms / refs[(threads, batch)]:.2f}" if ratio_head else ""
            lines.append(f"| {row.model} | {row.backend} | {row.macs / 1e6:.1f} | {row.best_round_ms:.2f} | "
                         f"{row.median_ms:.2f} ({row.p25_ms:.2f}-{row.p75_ms:.2f}) | {row.cpu_ms:.2f} | "
                         f"{row.images_per_s:.1f}{ratio} |")
        lines.append("")
    if result.skipped:
        lines.append("Skipped: " + "; ".join(result.skipped))
        lines.append("")
    return "\n".join(lines)


def _fmt_load(load: Optional[Sequence[float]]) -> str:
    return "n/a" if not load else "/".join(f"{v:.1f}" for v in load)


def plot_latency_vs_macs(result: BenchResult, path: PathLike) -> Path:
    """PNG of best-round latency against MACs, one panel per thread count, one marker per backend."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import ScalarFormatter

    colors = {"ghostnet": "tab:blue", "timm": "tab:orange", "torchvision": "tab:green"}
    markers = dict(zip(BACKENDS, "osXD^vP*h"))
    thread_counts = sorted({r.threads for r in result.rows})
    fig = Figure(figsize=(6 * len(thread_counts), 4.5))  # no pyplot: leaves the caller's backend alone
    axes = fig.subplots(1, len(thread_counts), squeeze=False)[0]
    for ax, threads in zip(axes, thread_counts):
        for row in (r for r in result.rows if r.threads == threads):
            ax.scatter(row.macs / 1e6, row.best_round_ms, marker=markers[row.backend], color=colors[row.source])
            ax.annotate(f"{row.model} {row.backend}", (row.macs / 1e6, row.best_round_ms),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
        first = result.rows[0]
        ax.set_xlabel("MACs per image (M)")
        ax.set_ylabel("latency, best-round median (ms)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.set_title(f"{threads} thread(s), batch {first.batch_size}, {first.device}")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker=m, linestyle="", color="gray", label=b) for b, m in markers.items()
               if any(r.backend == b for r in result.rows)]
    handles += [Line2D([], [], marker="o", linestyle="", color=c, label=s) for s, c in colors.items()
                if any(r.source == s for r in result.rows)]
    axes[-1].legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def write_report(result: BenchResult, out_dir: PathLike, name: str = "bench", plot: bool = True,
                 reference: Optional[str] = "timm/ghostnet_100/eager") -> list[Path]:
    """Write NAME.json, NAME.md and (with matplotlib) NAME.png into `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    paths = []
    with atomic_write(out_dir / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=2))
    paths.append(out_dir / f"{name}.json")
    with atomic_write(out_dir / f"{name}.md") as tmp:
        tmp.write_text(to_markdown(result, reference))
    paths.append(out_dir / f"{name}.md")
    if plot and result.rows:
        paths.append(plot_latency_vs_macs(result, out_dir / f"{name}.png"))
    return paths
