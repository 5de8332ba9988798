"""ncnn, Tencent's inference runtime for phones (the optional `ncnn` extra), here on its x86 build.

A model is written as ncnn's pair of files, STEM.param (the graph, text) beside STEM.bin (the weights), by pnnx,
ncnn's converter: the model is traced with TorchScript at the example's shape and the pnnx binary rewrites the trace
into ncnn layers (batch norms folded into convolutions, activations fused into them, hard-sigmoid and hard-swish as
ncnn's own layers). pnnx's other outputs (its own .pnnx.param/.bin, Python and ONNX renderings) are written to a
temporary folder and dropped. Weights are kept in float32 (pnnx's default stores them as float16).

ncnn has no batch dimension: a file takes one image of the example's size (a static batch of 1); a session called on
a batch runs it image by image. Sessions run in float32: on x86 CPUs with F16C ncnn's defaults store and compute
activations in float16, 500 times further from the model's function than float32 rounding (docs/deployment.md).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn

from ...utils import PathLike
from ..graph_capture import batch_capture, check_eval
from .base import MissingRuntime, Output, Runtime, Session, register_runtime

SUFFIX = ".param"
#: How long pnnx may take on one model (the largest registered ones convert in well under a minute).
PNNX_TIMEOUT_S = 600

__all__ = ["NcnnSession", "check_expressible", "export_ncnn", "export_ncnn_int8", "ncnn_files", "ncnn_layers",
           "ncnn_options", "pnnx_convert"]


def ncnn_files(path: PathLike) -> tuple[Path, Path]:
    """(STEM.param, STEM.bin) for `path` given as STEM.param or as STEM without a suffix."""
    path = Path(path)
    if path.suffix == SUFFIX:
        return path, path.with_suffix(".bin")
    if path.suffix:
        raise ValueError(f"an ncnn model is written as STEM.param + STEM.bin (give STEM.param or STEM), got {path}")
    return path.with_name(path.name + SUFFIX), path.with_name(path.name + ".bin")


def _pnnx_executable() -> str:
    if importlib.util.find_spec("pnnx") is None:
        raise MissingRuntime("pnnx (ncnn's converter) is not installed: pip install 'ghostnet-torch[ncnn]'")
    import pnnx

    return pnnx.EXEC_PATH


def ncnn_layers(param: PathLike) -> list[tuple[str, str]]:
    """(type, name) of every layer in an ncnn .param file."""
    lines = Path(param).read_text().splitlines()
    if not lines or lines[0].strip() != "7767517":
        raise ValueError(f"{param} is not an ncnn .param file (no 7767517 magic line)")
    return [tuple(line.split()[:2]) for line in lines[2:] if line.strip()]


def check_expressible(param: Path) -> None:
    """ValueError naming the first layer ncnn has no kernel for (pnnx writes an op it cannot map under its PyTorch
    name, such as F.grid_sample or pnnx.Expression)."""
    import ncnn

    for kind, name in ncnn_layers(param):
        if ncnn.layer_to_index(kind) < 0:
            raise ValueError(f"ncnn cannot express {kind} (layer {name}{_pnnx_attributes(param, name)}): "
                             "pnnx has no ncnn layer for this op")


def _pnnx_attributes(param: Path, name: str) -> str:
    """", steps=(2,2) ...": the op's attributes as pnnx's own graph (beside the ncnn one) records them."""
    pnnx_param = param.with_name("model.pnnxparam")
    lines = pnnx_param.read_text().splitlines() if pnnx_param.is_file() else []
    for line in lines:
        fields = line.split()
        if len(fields) > 1 and fields[1] == name:
            attributes = " ".join(f for f in fields[4:] if "=" in f and f[0] not in "$#@")
            return f", {attributes[:160]}" if attributes else ""
    return ""


def pnnx_convert(model: nn.Module, x: torch.Tensor, workdir: Path) -> Path:
    """Trace `model` at `x`'s shape and convert it with pnnx in `workdir`; the .ncnn.param written there."""
    workdir = Path(workdir).resolve()  # pnnx runs in workdir: a relative path would point below it
    with warnings.catch_warnings(), torch.no_grad(), batch_capture(False):
        warnings.simplefilter("ignore")  # TracerWarnings on the models' shape checks, torch.jit's deprecation
        traced = torch.jit.trace(model, x, check_trace=False)
        torch.jit.save(traced, str(workdir / "model.pt"))
    shape = ",".join(str(d) for d in x.shape)
    outputs = {key: workdir / f"model.{key}" for key in ("pnnxparam", "pnnxbin", "pnnxpy", "pnnxonnx", "ncnnpy")}
    param, weights = workdir / "model.ncnn.param", workdir / "model.ncnn.bin"
    command = [_pnnx_executable(), str(workdir / "model.pt"), f"inputshape=[{shape}]f32", "fp16=0", "device=cpu",
               f"ncnnparam={param}", f"ncnnbin={weights}", *(f"{key}={p}" for key, p in outputs.items())]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S)
    if done.returncode != 0 or not param.is_file() or not weights.is_file():
        said = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise ValueError(f"pnnx could not convert the model (exit {done.returncode}): "
                         f"{said[-1] if said else 'no output'}")
    return param


def export_ncnn(model: nn.Module, path: PathLike, example_input: torch.Tensor, *,
                dynamic_batch: bool = False) -> Path:
    """Write `model` as ncnn's STEM.param + STEM.bin through pnnx (see the module docstring) for one image shaped
    like `example_input[0]`; returns the .param path.

    The .bin is moved into place before the .param, each in one rename, so a reader that finds the new .param finds
    its weights; a failed export leaves neither behind.
    """
    check_eval(model)
    if dynamic_batch:
        raise ValueError("ncnn files take one image at a time (no batch dimension): export with a static batch")
    param, weights = ncnn_files(path)
    param.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=param.parent, prefix=f".{param.stem}.") as tmp:
        staged = pnnx_convert(model, example_input[:1].detach().float().contiguous(), Path(tmp))
        check_expressible(staged)
        os.replace(staged.with_suffix(".bin"), weights)
        os.replace(staged, param)
    return param


#: ncnn options switched off in every session: float16/bfloat16 storage and arithmetic (on by default where the CPU
#: has them: not the model's function), and Winograd F(4,3)/F(6,3) for dense 3x3 convolutions, whose transforms
#: amplify float32 rounding past what the exactness check allows (VGG-16 on CIFAR: 5.4x the eager model's error
#: against 1.8x with F(2,3) only). GhostNets have no dense stride-1 3x3 convolution, so their speed is unchanged.
OFF = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed",
       "use_winograd43_convolution", "use_winograd63_convolution")


def ncnn_options(opt: Any, threads: Optional[int]) -> None:
    """Float32 sessions (`OFF`) with `threads` threads (None: ncnn's default, the big cores); packed layouts,
    Winograd F(2,3) and sgemm convolutions stay on."""
    for flag in OFF:
        setattr(opt, flag, False)
    if threads is not None:
        opt.num_threads = int(threads)


class NcnnSession(Session):
    """An ncnn model (STEM.param + STEM.bin) run as `ncnn_options` sets up; a batch is run image by image."""

    def __init__(self, path: PathLike, threads: Optional[int] = None) -> None:
        self.net = _load_net(ncnn_files(path)[0], threads)
        self.input_name = self.net.input_names()[0]
        self.output_names = list(self.net.output_names())

    def _feed(self, image: torch.Tensor) -> Callable[[], list[Any]]:
        import ncnn

        array = np.ascontiguousarray(image.detach().cpu().float().numpy())
        mat = ncnn.Mat(array).clone()  # ncnn's own copy, aligned as its kernels want

        def run() -> list[Any]:
            with self.net.create_extractor() as extractor:
                extractor.input(self.input_name, mat)
                return [extractor.extract(name)[1] for name in self.output_names]

        return run

    def __call__(self, x: torch.Tensor) -> Output:
        per_image = [[torch.from_numpy(np.array(out)).clone() for out in self._feed(image)()] for image in x]
        outputs = [torch.stack(rows) for rows in zip(*per_image)]
        return outputs[0] if len(outputs) == 1 else outputs

    def bind(self, x: torch.Tensor) -> Callable[[], Any]:
        runs = [self._feed(image) for image in x]
        return runs[0] if len(runs) == 1 else (lambda: [run() for run in runs])


def _load_net(param: Path, threads: Optional[int] = None, keep_blobs: bool = False):
    """`param` (+ its .bin) loaded into an ncnn.Net set up by `ncnn_options` (float32 activations; the int8 layers of
    an int8 model run in int8); ValueError if ncnn cannot load it."""
    import ncnn

    weights = ncnn_files(param)[1]
    net = ncnn.Net()
    ncnn_options(net.opt, threads)
    net.opt.lightmode = not keep_blobs
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise ValueError(f"ncnn could not load {param} with {weights.name}")
    return net


def export_ncnn_int8(model: nn.Module, path: PathLike, example_input: torch.Tensor,
                     calibration: Iterable[torch.Tensor], *, method: str = "kl", quantize_depthwise: bool = False,
                     skip: Optional[Iterable[str]] = None) -> Path:
    """Write `model` as ncnn's int8 STEM.param + STEM.bin (`ncnn_int8`: ncnn2table's calibration, KL by default,
    and ncnn2int8's rewrite), calibrated on the images of `calibration` (batches of preprocessed images shaped like
    `example_input`'s); written as `export_ncnn` writes.

    Depthwise convolutions stay float32 unless `quantize_depthwise` (ncnn2int8 quantizes them): measured on ncnn's
    x86 build, int8 depthwise convolutions made ghostnet_100 1.7x slower than float32 (0.95x with them in float32),
    for no accuracy either way (docs/benchmarks.md)."""
    from .ncnn_int8 import METHODS, calibration_images, quantize_ncnn

    check_eval(model)
    if method not in METHODS:
        raise ValueError(f"ncnn int8 calibration method must be one of {METHODS}, got {method!r}")
    param, weights = ncnn_files(path)
    x = example_input[:1].detach().float().contiguous()
    images = calibration_images(calibration, x.shape[1:])
    param.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=param.parent, prefix=f".{param.stem}.") as tmp:
        staged = pnnx_convert(model, x, Path(tmp))
        check_expressible(staged)
        text, data = quantize_ncnn(staged, staged.with_suffix(".bin"), _load_net(staged, keep_blobs=True), images,
                                   method=method, quantize_depthwise=quantize_depthwise, skip=skip)
        (Path(tmp) / "int8.bin").write_bytes(data)
        (Path(tmp) / "int8.param").write_text(text)
        os.replace(Path(tmp) / "int8.bin", weights)
        os.replace(Path(tmp) / "int8.param", param)
    return param


def _export_int8(model: nn.Module, path: PathLike, example_input: torch.Tensor,
                 calibration: Iterable[torch.Tensor]) -> Path:
    """The registry's int8 export (`--int8-calibration-data`, the ncnn-int8 bench backend): `export_ncnn_int8`'s
    defaults."""
    return export_ncnn_int8(model, path, example_input, calibration)


RUNTIME = register_runtime(Runtime(
    name="ncnn", summary="ncnn model via pnnx (Tencent's phone runtime; float32, one image at a time)",
    format="ncnn", suffix=SUFFIX, export=export_ncnn, export_int8=_export_int8,
    load=lambda path, threads=None: NcnnSession(path, threads),
    package="ncnn", extra="ncnn", batch_modes=("static",),
    # Not a --format auto candidate unless named (--runtimes ncnn): a phone runtime whose x86 timings are a proxy, and
    # on this x86 build 1.4x slower than onnxruntime for each one's fastest form of ghostnet_100 (docs/deployment.md)
    tunable=False))
