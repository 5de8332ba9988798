"""The harness's backends: how each candidate (model x backend) becomes a zero-argument call to time.

A backend is a registered runtime (`deploy/runtimes`) run on a form of the model:

- in-process runtimes ("eager", "compile") run the PyTorch module on the configured device, and the aliases
  "fused" and "single-path" are the eager runtime on those forms of our models; on CUDA, models run channels-last
  in the requested dtype, and `cuda_graphs=True` replays a captured graph instead of launching kernels one by one;
- file runtimes ("onnxruntime", "openvino", "executorch", "torchscript", "torch.export") run a file exported once
  per model and kept for every thread count: ours in their default deployment form (fused, channels aligned as
  configured), peers as they are (runtimes fold batch norms themselves); "NAME-int8" is the runtime's int8 file;
- "best" runs each model in its fastest exact form here: ours through `--format auto`'s search (cached per CPU),
  peers as a user exports them (plainly, batch 1; timm models re-parameterized where timm offers it) in every
  installed runtime, the fastest kept (`bench.run_benchmark` relabels the others "best-candidate").
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..analysis.training_layout import Layout, choose_training_layout
from ..constants import DTYPES
from ..layers.folded_conv import compile_settings
from .align import can_align, resolve_alignment
from .bench_config import BEST, FORM_BACKENDS, INT8_SUFFIX, RuntimeUnavailable, BenchConfig, PreparedModel
from .fusion import fuse, single_path_ghost_modules
from .runtimes import Runtime, get_runtime, list_runtimes

__all__ = ["best_candidates", "make_runner"]

#: A candidate's call, and the runtime it ran in.
Call = Callable[[], Any]


def _deploy_form(prep: PreparedModel, x: torch.Tensor, align: int) -> nn.Module:
    """What our exports run: fused and, for runtimes with blocked CPU kernels (`Runtime.blocked_layout`; the caller
    passes `align` 0 for the others), channel-aligned (what `ghostnet export --align-channels` writes); peers as
    they are, since the runtimes fold their batch norms themselves."""
    from .align import align_channels

    if prep.source != "ghostnet":
        return prep.model
    model = fuse(prep.model, example_input=x[:1])
    return align_channels(model, align) if align and can_align(model) else model


def _alignment(cfg: BenchConfig) -> int:
    """The channel alignment of our exports: the configured one, or (None, "auto") the CPU's NCHWc block."""
    return resolve_alignment(cfg.align_channels)


def _memory_format(cfg: BenchConfig) -> torch.memory_format:
    return torch.contiguous_format if cfg.channels_last is False else torch.channels_last


def _timing_calibration(shape: torch.Size, batches: int) -> list[torch.Tensor]:
    """Calibration batches for int8 backends that are only timed: random data gives the same graph and kernels as
    real images would."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator) for _ in range(batches)]


def _file_runtime(name: str, cfg: BenchConfig) -> Runtime:
    runtime = get_runtime(name)
    if torch.device(cfg.device).type not in runtime.devices or cfg.mode == "train":
        raise RuntimeUnavailable(f"{name} is measured for {'/'.join(runtime.devices)} inference only")
    if not runtime.available():
        raise RuntimeUnavailable(f"{name} is not installed (pip install 'ghostnet-torch[{runtime.extra}]')")
    return runtime


def _exported_file(prep: PreparedModel, runtime: Runtime, x: torch.Tensor, workdir: Path, align: int,
                   int8: bool) -> Path:
    """`prep`'s file for `runtime` (int8 or float), in its default deployment form, exported once and kept."""
    key = f"{runtime.name}{INT8_SUFFIX if int8 else ''}"
    if key not in prep.export_files:
        stem = workdir / f"{prep.label.replace('/', '_').replace(':', '_')}.{key}"
        path = stem.with_name(stem.name + (runtime.suffix or ""))
        form = _deploy_form(prep, x, align)
        if int8:
            prep.export_files[key] = runtime.export_int8(form, path, x[:1], _timing_calibration(x[:8].shape, 2))
        else:
            dynamic = "dynamic" in runtime.batch_modes
            prep.export_files[key] = runtime.export(form, path, x[:1], dynamic_batch=dynamic)
    return prep.export_files[key]


def _file_runner(backend: str, prep: PreparedModel, x: torch.Tensor, cfg: BenchConfig, threads: int,
                 workdir: Path) -> Call:
    """One call of `prep`'s file in a file runtime ("openvino", "onnxruntime-int8", ...)."""
    int8 = backend.endswith(INT8_SUFFIX)
    runtime = _file_runtime(backend[: -len(INT8_SUFFIX)] if int8 else backend, cfg)
    if int8 and runtime.export_int8 is None:
        raise RuntimeUnavailable(f"{runtime.name} has no int8 export")
    device = torch.device(cfg.device)
    if device.type != "cpu":  # torchscript / torch.export on CUDA: traced on the device, in its dtype
        prep = PreparedModel(prep.label, prep.source, _torch_model("compile", prep, x, device, DTYPES[cfg.dtype],
                                                                   _memory_format(cfg)), prep.macs, prep.params,
                             prep.export_files)
        x = x.to(device, DTYPES[cfg.dtype])
    path = _exported_file(prep, runtime, x, workdir, _alignment(cfg) if runtime.blocked_layout else 0, int8)
    return runtime.load(path, threads=threads).bind(x)


def best_candidates(prep: PreparedModel, x: torch.Tensor, cfg: BenchConfig, threads: int,
                    workdir: Path) -> list[tuple[str, Call]]:
    """(runtime, call) for each way "best" runs `prep`: ours, the `--format auto` choice for this CPU and thread
    count (measured once, then cached); peers, their plain batch-1 export in every installed runtime."""
    if torch.device(cfg.device).type != "cpu" or cfg.mode == "train":
        raise RuntimeUnavailable("best is chosen among CPU inference runtimes")
    runtimes = [r for r in list_runtimes(available=True, files=True) if r.tunable]
    if not runtimes:
        raise RuntimeUnavailable("no CPU file runtime is installed (onnxruntime, openvino, ...)")
    if prep.source == "ghostnet":
        from .autotune import export_fastest

        key = f"best-{threads}"
        if key not in prep.export_files:
            stem = workdir / f"{prep.label}.best{threads}"
            prep.export_files[key] = export_fastest(prep.label, stem, threads=threads, image_size=cfg.image_size,
                                                    dynamic_batch=True if cfg.batch_size > 1 else None).path
        path = prep.export_files[key]
        runtime = next(r for r in runtimes if r.suffix and path.name.endswith(r.suffix))
        return [(runtime.name, runtime.load(path, threads=threads).bind(x))]
    calls = []
    for runtime in runtimes:
        key = f"plain-{runtime.name}"
        if key not in prep.export_files:
            path = workdir / f"{prep.label.replace('/', '_').replace(':', '_')}.plain{runtime.suffix}"
            dynamic = cfg.batch_size > 1 or "static" not in runtime.batch_modes
            prep.export_files[key] = runtime.export(prep.model, path, x[:1], dynamic_batch=dynamic)
        calls.append((runtime.name, runtime.load(prep.export_files[key], threads=threads).bind(x)))
    return calls


def _cuda_graph_runner(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Call:
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


def _train_step(model: nn.Module, x: torch.Tensor, compiled: bool) -> Call:
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


def _train_layout(label: str, model: nn.Module, x: torch.Tensor, cfg: BenchConfig, compiled: bool) -> Layout:
    """The layout of a training step: the one asked for, or (channels_last None) the one `ghostnet train` would
    choose (measured, cached per CPU)."""
    if cfg.channels_last is not None:
        return Layout(channels_last=cfg.channels_last)
    amp = "none" if DTYPES[cfg.dtype] == torch.float32 else "bf16"
    return choose_training_layout(model, x, model_name=label, amp=amp, compiled=compiled).layout


def _torch_model(backend: str, prep: PreparedModel, x: torch.Tensor, device: torch.device, dtype: torch.dtype,
                 memory_format: torch.memory_format) -> nn.Module:
    """The module an in-process backend runs, on `device` in `dtype`."""
    if backend == "eager":
        # Peers run the way their users run them: as created, contiguous (NCHW) weights on CPU; channels-last on
        # CUDA, where every published GPU figure (timm's included) uses it.
        eager_format = memory_format if device.type == "cuda" else torch.contiguous_format
        return copy.deepcopy(prep.model).to(device, dtype, memory_format=eager_format)
    if backend in FORM_BACKENDS:
        model = fuse(prep.model, example_input=x[:1].to(next(prep.model.parameters()).dtype))
        if backend == "single-path":  # no concats: duplicated primary outputs (see FusedGhostModule.to_single_path)
            single_path_ghost_modules(model)
        return model.to(device, dtype, memory_format=memory_format)
    base = fuse(prep.model, example_input=x[:1]) if prep.source == "ghostnet" else copy.deepcopy(prep.model)
    return base.to(device, dtype, memory_format=memory_format)


def _torch_runner(backend: str, prep: PreparedModel, x: torch.Tensor, cfg: BenchConfig) -> Call:
    """One inference call of an in-process runtime ("eager", "compile") or form ("fused", "single-path")."""
    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    memory_format = _memory_format(cfg)
    model = _torch_model(backend, prep, x, device, dtype, memory_format)
    xd = x.to(device, dtype)
    if device.type == "cuda":
        xd = xd.contiguous(memory_format=memory_format)
    session = get_runtime(FORM_BACKENDS.get(backend, backend)).load(model)
    if cfg.cuda_graphs and backend != "compile":
        return _cuda_graph_runner(session, xd)
    return session.bind(xd)


def make_runner(backend: str, prep: PreparedModel, x: torch.Tensor, cfg: BenchConfig, threads: int,
                workdir: Path) -> Call:
    """A zero-argument callable doing one measured call of `prep.model` on `x` with `backend` (not "best":
    `best_candidates` gives its calls)."""
    if backend == BEST:
        raise ValueError("the best backend has one call per runtime: use best_candidates")
    if cfg.mode == "train":
        device = torch.device(cfg.device)
        model = copy.deepcopy(prep.model).to(device, dtype=torch.float32).train()
        layout = _train_layout(prep.label, model, x.to(device), cfg, compiled=backend == "compile")
        x = x.to(device, DTYPES[cfg.dtype]).contiguous(memory_format=layout.memory_format)
        return _train_step(layout.apply(model), x, compiled=backend == "compile")
    if not backend.endswith(INT8_SUFFIX) and get_runtime(FORM_BACKENDS.get(backend, backend)).in_process:
        return _torch_runner(backend, prep, x, cfg)
    return _file_runner(backend, prep, x, cfg, threads, workdir)
