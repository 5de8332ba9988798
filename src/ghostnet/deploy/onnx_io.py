"""ONNX files: writing them (dynamic batch by default) and running them in an onnxruntime session.

ONNX is the interchange format of two runtimes here (onnxruntime runs it, OpenVINO converts it), so the writer
lives apart from either runtime's module.

ONNX has two exporters in torch 2.14 (tests check the default one against onnxruntime for every registered model,
the other on GhostNetV2):

- "torchscript" (the default here): `torch.onnx.export(..., dynamo=False)`. Measured on this project's CPUs it
  exports a GhostNet in 0.3-1 s of CPU time against 5-10 s for the dynamo exporter, which is what makes an
  onnxruntime check of every registered model affordable in CI. It is deprecated upstream since torch 2.9.
- "dynamo": `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript), upstream's default. Its graphs are
  smaller (209 against 275 nodes for ghostnet_100; 315 against 443 for fused ghostnetv2_100, 1029 before the DFC's
  deploy form made its sizes constants), but after onnxruntime's graph optimizations both ran at the same speed
  (6.6 against 6.8 ms for ghostnet_100, 9.0 against 9.1 ms for ghostnetv2_100, batch 1, one thread).

Dynamic-batch ONNX files get the symbolic batch declared on their Resize outputs (`onnx_shapes`), which ONNX shape
inference would lose and onnxruntime needs to keep DFC-gated products in its blocked layout.
"""
from __future__ import annotations

import importlib.util
import inspect
import io
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from ..utils import PathLike, atomic_write
from .graph_capture import batch_capture, batch_dynamic_shapes, check_eval, export_batch, output_names

DEFAULT_OPSET = 18
MIN_OPSET = 17
ONNX_EXPORTERS = ("torchscript", "dynamo")

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "ONNX_EXPORTERS", "export_onnx", "onnx_session", "run_onnx"]


def export_onnx(model: nn.Module, path: PathLike, example_input: torch.Tensor, *, dynamic_batch: bool = True,
                opset: int = DEFAULT_OPSET, exporter: str = "torchscript") -> Path:
    """Write `model` as ONNX (input "input", outputs "output" or "output_i"), batch dimension dynamic by default.

    `exporter` is "torchscript" (default) or "dynamo"; see the module docstring for the trade-off.
    """
    check_eval(model)
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"unknown ONNX exporter {exporter!r}; expected one of {ONNX_EXPORTERS}")
    example = export_batch(example_input) if dynamic_batch else example_input
    names = output_names(model, example)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), batch_capture(dynamic_batch):
        warnings.simplefilter("ignore")  # deprecation notices and TracerWarnings on the models' shape checks
        if exporter == "dynamo":
            program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=opset, verbose=False,
                                        input_names=["input"], output_names=names,
                                        dynamic_shapes=batch_dynamic_shapes(dynamic_batch))
            program.save(buffer)
        else:
            axes = {name: {0: "batch"} for name in ["input"] + names} if dynamic_batch else None
            # torch >= 2.9 defaults to the dynamo exporter; releases before 2.5 have no `dynamo` argument
            legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            torch.onnx.export(model, (example,), buffer, opset_version=opset, input_names=["input"],
                              output_names=names, dynamic_axes=axes, **legacy)
    data = buffer.getvalue()
    if dynamic_batch:
        data = _with_batch_through_resize(data)
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return path


def _with_batch_through_resize(data: bytes) -> bytes:
    """The ONNX file with the symbolic batch declared on its Resize outputs (`onnx_shapes`): without it onnxruntime
    cannot keep a DFC-gated product in its blocked layout. Files without Resize nodes come back unchanged."""
    if b"Resize" not in data or importlib.util.find_spec("onnx") is None:
        return data
    import onnx

    from .onnx_shapes import declare_batch_through_resize

    proto = onnx.load_from_string(data)
    return proto.SerializeToString() if declare_batch_through_resize(proto) else data


def onnx_session(path: PathLike, threads: Optional[int] = None, providers: Optional[Sequence[str]] = None):
    """An onnxruntime InferenceSession with all graph optimizations and `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


def run_onnx(session, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:
    """Run an onnxruntime session on a float tensor; one output comes back as a tensor, several as a list."""
    name = session.get_inputs()[0].name
    outputs = [torch.from_numpy(o) for o in session.run(None, {name: x.detach().cpu().numpy()})]
    return outputs[0] if len(outputs) == 1 else outputs
