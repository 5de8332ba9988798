"""onnxruntime, Microsoft's runtime for ONNX files, on its CPU execution provider (MLAS kernels, NCHWc blocked
layout; `align.py` says what that means for channel counts)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn as nn

from ...utils import PathLike
from ..onnx_io import export_onnx, onnx_session, run_onnx
from .base import Output, Runtime, Session, register_runtime

__all__ = ["OnnxSession", "export_onnx_int8"]


class OnnxSession(Session):
    """An ONNX file in an onnxruntime CPU session."""

    def __init__(self, path: PathLike, threads: Optional[int] = None) -> None:
        self.session = onnx_session(path, threads=threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> Output:
        return run_onnx(self.session, x)

    def bind(self, x: torch.Tensor) -> Callable[[], Any]:
        feed = {self.input_name: x.detach().cpu().numpy()}
        return lambda: self.session.run(None, feed)


def export_onnx_int8(model: nn.Module, path: PathLike, example_input: torch.Tensor,
                     calibration: Iterable[torch.Tensor]) -> Path:
    """The fastest int8 graph onnxruntime runs here: every op quantized, depthwise convs included (per-channel
    weights, uint8 activations), calibrated on `calibration` batches; benchmarks/bench_int8.py measures its accuracy.
    Quantized from the float file of the same model (for ours the channel-aligned, single-path form, which
    onnxruntime's int8 kernels run 25-35% faster than the plain export's)."""
    from ..quantize import quantize_onnx

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", example_input[:1])
        return quantize_onnx(fp32, path, list(calibration), keep_depthwise_float=False, op_types=None)


RUNTIME = register_runtime(Runtime(
    blocked_layout=True,
    name="onnxruntime", summary="ONNX file in onnxruntime (CPU execution provider)", format="onnx", suffix=".onnx",
    export=export_onnx, export_int8=export_onnx_int8, load=lambda path, threads=None: OnnxSession(path, threads),
    # --format auto does not vary the exporter: both give the same speed once onnxruntime has optimized the graph
    package="onnxruntime", extra="onnxruntime", accepts_options=("opset", "exporter")))
