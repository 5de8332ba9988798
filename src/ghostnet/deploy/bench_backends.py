"""The harness's backends: how each candidate (model x backend) becomes a zero-argument call to time.

PyTorch backends (eager, fused, single-path, torchscript, compile, and training steps) run in this process on the
configured device; onnxruntime, int8 and ExecuTorch backends run a file exported once per model and kept for every
thread count. On CUDA, models run channels-last in the requested dtype, and `cuda_graphs=True` replays a captured
graph instead of launching kernels one by one.
"""
from __future__ import annotations

import copy
import importlib.util
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..constants import DTYPES
from ..layers.folded_conv import compile_settings
from .align import resolve_alignment
from .bench_config import EXECUTORCH_BACKENDS, BackendUnavailable, BenchConfig, PreparedModel
from .fusion import fuse, single_path_ghost_modules

__all__ = ["make_runner"]


def _deploy_form(prep: PreparedModel, x: torch.Tensor, align: int) -> nn.Module:
    """What our exports run: fused and, for blocked CPU kernels, channel-aligned (what `ghostnet export
    --align-channels` writes); peers as they are, since onnxruntime and XNNPACK fold their batch norms themselves."""
    from .align import align_channels, can_align

    if prep.source != "ghostnet":
        return prep.model
    model = fuse(prep.model, example_input=x[:1])
    return align_channels(model, align) if align and can_align(model) else model


def _alignment(cfg: BenchConfig) -> int:
    """The channel alignment of our exports: the configured one, or (None, "auto") the CPU's NCHWc block."""
    return resolve_alignment(cfg.align_channels)


def _memory_format(cfg: BenchConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def _timing_calibration(shape: torch.Size, batches: int) -> list[torch.Tensor]:
    """Calibration batches for int8 backends that are only timed: random data gives the same graph and kernels as
    real images would."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator) for _ in range(batches)]


def _pte_file(prep: PreparedModel, x: torch.Tensor, workdir: Path, align: int, int8: bool) -> Path:
    """The ExecuTorch (XNNPACK) program of `prep`, fp32 or int8, for inputs shaped like `x`, exported once and kept."""
    from .export import export_executorch

    key = "pte-int8" if int8 else "pte"
    if key not in prep.export_files:
        path = workdir / (prep.label.replace("/", "_") + (".int8.pte" if int8 else ".pte"))
        calibration = _timing_calibration(x.shape, 4) if int8 else None
        prep.export_files[key] = export_executorch(_deploy_form(prep, x, align), path, x, calibration)
    return prep.export_files[key]


def _onnx_file(prep: PreparedModel, x: torch.Tensor, workdir: Path, variant: str, align: int) -> Path:
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

    if compiled:
        with compile_settings(model):  # compile now, with the settings `ghostnet train --compile` uses
            step()
    return step


def _onnxruntime_runner(backend: str, prep: PreparedModel, x: torch.Tensor, cfg: BenchConfig, threads: int,
                        workdir: Path) -> Callable[[], Any]:
    """One call of the fp32 ("onnxruntime") or quantized ("int8") ONNX file in an onnxruntime session."""
    if torch.device(cfg.device).type != "cpu":
        raise BackendUnavailable("onnxruntime is measured on CPU only")
    if importlib.util.find_spec("onnxruntime") is None:
        raise BackendUnavailable("onnxruntime is not installed")
    from .export import onnx_session

    path = _onnx_file(prep, x, workdir, "int8" if backend == "int8" else "fp32", _alignment(cfg))
    session = onnx_session(path, threads=threads)
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def _executorch_runner(backend: str, prep: PreparedModel, x: torch.Tensor, cfg: BenchConfig,
                       workdir: Path) -> Callable[[], Any]:
    """One call of the fp32 or int8 ExecuTorch (XNNPACK) program in ExecuTorch's Python runtime."""
    if torch.device(cfg.device).type != "cpu" or cfg.mode == "train":
        raise BackendUnavailable("ExecuTorch (XNNPACK) is measured for CPU inference only")
    if importlib.util.find_spec("executorch") is None:
        raise BackendUnavailable("executorch is not installed (pip install 'ghostnet-torch[executorch]')")
    from .export import executorch_method

    # The thread pool was sized for this thread count before any program of it was loaded (run_benchmark).
    method = executorch_method(_pte_file(prep, x, workdir, _alignment(cfg), int8=backend == "executorch-int8"))
    inputs = [x.contiguous()]
    return lambda: method.execute(inputs)


def _torch_model(backend: str, prep: PreparedModel, x: torch.Tensor, device: torch.device, dtype: torch.dtype,
                 memory_format: torch.memory_format) -> nn.Module:
    """The module a PyTorch inference backend runs, on `device` in `dtype`."""
    if backend == "eager":
        # Peers run the way their users run them: as created, contiguous (NCHW) weights on CPU; channels-last on
        # CUDA, where every published GPU figure (timm's included) uses it.
        eager_format = memory_format if device.type == "cuda" else torch.contiguous_format
        return copy.deepcopy(prep.model).to(device, dtype, memory_format=eager_format)
    if backend in ("fused", "single-path"):
        model = fuse(prep.model, example_input=x[:1].to(next(prep.model.parameters()).dtype))
        if backend == "single-path":  # no concats: duplicated primary outputs (see FusedGhostModule.to_single_path)
            single_path_ghost_modules(model)
        return model.to(device, dtype, memory_format=memory_format)
    base = fuse(prep.model, example_input=x[:1]) if prep.source == "ghostnet" else copy.deepcopy(prep.model)
    return base.to(device, dtype, memory_format=memory_format)


def _torch_runner(backend: str, prep: PreparedModel, x: torch.Tensor, cfg: BenchConfig) -> Callable[[], Any]:
    """One inference call with a PyTorch backend: eager, fused, single-path, torchscript or compile."""
    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    memory_format = _memory_format(cfg)
    model = _torch_model(backend, prep, x, device, dtype, memory_format)
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


def make_runner(backend: str, prep: PreparedModel, x: torch.Tensor, cfg: BenchConfig, threads: int,
                workdir: Path) -> Callable[[], Any]:
    """A zero-argument callable doing one measured call of `prep.model` on `x` with `backend`."""
    if backend in ("onnxruntime", "int8"):
        return _onnxruntime_runner(backend, prep, x, cfg, threads, workdir)
    if backend in EXECUTORCH_BACKENDS:
        return _executorch_runner(backend, prep, x, cfg, workdir)
    if cfg.mode == "train":
        device = torch.device(cfg.device)
        memory_format = _memory_format(cfg)
        model = copy.deepcopy(prep.model).to(device, dtype=torch.float32, memory_format=memory_format)
        return _train_step(model, x.to(device, DTYPES[cfg.dtype]), compiled=backend == "compile")
    return _torch_runner(backend, prep, x, cfg)
