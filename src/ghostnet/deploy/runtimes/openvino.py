"""OpenVINO, Intel's inference runtime, on its CPU plugin: an IR model (`.xml` graph beside a `.bin` of weights).

The IR is converted either from the ONNX file of the model (`source="onnx"`, the default) or from the PyTorch
module directly (`source="pytorch"`, OpenVINO's own frontend); `--format auto` tries both. Weights stay float32
(`save_model` would halve them to float16 by default, which is not the model any more).

Every compile asks for float32 inference: on CPUs with AMX or AVX-512 bf16 (Intel Xeon since Sapphire Rapids)
OpenVINO's default inference precision is bfloat16, about 1.4x faster there and not the model's function (its
outputs differ from the float32 model's by far more than float32 rounding). The latency hint with a given thread
count is what a batch-1 server or desktop application asks for.
"""
from __future__ import annotations

import functools
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ...utils import PathLike
from ..graph_capture import batch_capture, check_eval, export_batch
from ..onnx_io import export_onnx
from .base import Output, Runtime, Session, as_output, register_runtime

SOURCES = ("onnx", "pytorch")

__all__ = ["SOURCES", "OpenVinoSession", "export_openvino"]


@functools.lru_cache(maxsize=1)
def _core():
    import openvino as ov

    return ov.Core()


def _convert(model: nn.Module, example_input: torch.Tensor, source: str, workdir: Path, dynamic_batch: bool):
    import openvino as ov

    if source == "onnx":
        onnx_file = export_onnx(model, workdir / "model.onnx", example_input, dynamic_batch=dynamic_batch)
        return ov.convert_model(str(onnx_file))
    example = export_batch(example_input) if dynamic_batch else example_input
    shape = [-1, *example.shape[1:]] if dynamic_batch else list(example.shape)
    # batch_capture: a static graph keeps ParameterNet's one-kernel-per-sample form, a dynamic one must not
    with warnings.catch_warnings(), torch.no_grad(), batch_capture(dynamic_batch):
        warnings.simplefilter("ignore")  # TracerWarnings on the models' shape checks
        # Traced here without torch.jit's check: the frontend's own trace re-traces to check, and in a process that
        # has traced the model's classes before, the two graphs differ in TorchScript's mangled class names
        # ("Graphs differed across invocations"), failing a correct model. The file is checked against the model.
        traced = torch.jit.trace(model, example, check_trace=False, strict=False)
        # the shape given, batch dynamic or not (the frontend leaves every dimension dynamic otherwise)
        return ov.convert_model(traced, example_input=example, input=[ov.PartialShape(shape)])


def export_openvino(model: nn.Module, path: PathLike, example_input: torch.Tensor, *, dynamic_batch: bool = True,
                    source: str = "onnx") -> Path:
    """Write `model` as an OpenVINO IR (`path` ending in .xml, weights in the .bin beside it), input shape that of
    `example_input`, its batch dimension left dynamic by default.

    The .bin is moved into place before the .xml, each in one rename, so a reader that finds the new .xml finds its
    weights; a failed export leaves neither behind.
    """
    import openvino as ov

    check_eval(model)
    if source not in SOURCES:
        raise ValueError(f"OpenVINO source must be one of {SOURCES}, got {source!r}")
    path = Path(path)
    if path.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is written as NAME.xml (+ NAME.bin), got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmp:
        ov_model = _convert(model, example_input[:1], source, Path(tmp), dynamic_batch)
        staged = Path(tmp) / path.name
        ov.save_model(ov_model, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(staged, path)
    return path


def compile_config(threads: Optional[int]) -> dict[str, Any]:
    """The CPU plugin's settings: latency hint, float32 inference (see the module docstring), `threads` threads."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


class OpenVinoSession(Session):
    """An IR compiled for the CPU with `compile_config(threads)`."""

    def __init__(self, path: PathLike, threads: Optional[int] = None) -> None:
        self.compiled = _core().compile_model(str(path), "CPU", compile_config(threads))
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> Output:
        result = self.request.infer({0: x.detach().cpu().float().contiguous().numpy()})
        return as_output([result[out] for out in self.compiled.outputs])

    def bind(self, x: torch.Tensor) -> Callable[[], Any]:
        feed = {0: x.detach().cpu().float().contiguous().numpy()}
        return lambda: self.request.infer(feed)


RUNTIME = register_runtime(Runtime(
    name="openvino", summary="OpenVINO IR on the CPU plugin (float32, latency hint)", format="openvino",
    suffix=".xml", export=export_openvino, load=lambda path, threads=None: OpenVinoSession(path, threads),
    package="openvino", extra="openvino", options={"source": SOURCES}, accepts_options=("source",)))
