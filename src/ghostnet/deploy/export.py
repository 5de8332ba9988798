"""Export to ONNX (dynamic batch), TorchScript (trace + freeze), torch.export (.pt2) and ExecuTorch (.pte).

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

ExecuTorch (the optional `executorch` extra) is PyTorch's runtime for phones and embedded devices; the .pte file is
lowered to XNNPACK, the CPU kernel library that mobile runtimes (ExecuTorch, TFLite) share, with a static input
shape (the example's). The same file runs on Android, iOS and, through ExecuTorch's Python runtime, here.

Every function here writes atomically: a failed export leaves no file behind.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..layers.dynamic_conv import static_batch_capture
from ..utils import PathLike, atomic_write

EXPORT_FORMATS = ("onnx", "torchscript", "torch.export", "executorch")
#: File suffix per format.
FORMAT_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "torch.export": ".pt2", "executorch": ".pte"}
DEFAULT_OPSET = 18
MIN_OPSET = 17
ONNX_EXPORTERS = ("torchscript", "dynamo")

__all__ = ["DEFAULT_OPSET", "EXPORT_FORMATS", "FORMAT_SUFFIX", "ONNX_EXPORTERS", "executorch_method",
           "export_executorch", "export_model", "export_onnx", "export_program", "export_torchscript", "load_exported",
           "onnx_session", "quantize_for_xnnpack", "run_onnx", "set_executorch_threads"]


def _export_batch(example_input: torch.Tensor) -> torch.Tensor:
    # torch.export specializes a dimension of size 1 to a constant, which would pin the batch; use 2 rows.
    if example_input.shape[0] >= 2:
        return example_input
    return example_input.expand(2, *example_input.shape[1:]).contiguous()


def _batch_dynamic_shapes(dynamic_batch: bool) -> Optional[tuple[dict[int, Any]]]:
    return ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None


def _batch_capture(dynamic_batch: bool) -> contextlib.AbstractContextManager:
    """For a graph of one fixed batch size, dynamic convs (ParameterNet) keep their one-kernel-per-sample form
    (`layers.dynamic_conv.static_batch_capture`)."""
    return contextlib.nullcontext() if dynamic_batch else static_batch_capture()


def _output_names(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    with torch.no_grad():
        out = model(example_input)
    if isinstance(out, torch.Tensor):
        return ["output"]
    return [f"output_{i}" for i in range(len(out))]


def _check_eval(model: nn.Module) -> None:
    if model.training:
        raise ValueError("export needs a model in eval mode (call model.eval() or ghostnet.deploy.fuse(model))")


def export_onnx(model: nn.Module, path: PathLike, example_input: torch.Tensor, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = True, exporter: str = "torchscript") -> Path:
    """Write `model` as ONNX (input "input", outputs "output" or "output_i"), batch dimension dynamic by default.

    `exporter` is "torchscript" (default) or "dynamo"; see the module docstring for the trade-off.
    """
    _check_eval(model)
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"unknown ONNX exporter {exporter!r}; expected one of {ONNX_EXPORTERS}")
    example = _export_batch(example_input) if dynamic_batch else example_input
    output_names = _output_names(model, example)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), _batch_capture(dynamic_batch):
        warnings.simplefilter("ignore")  # deprecation notices and TracerWarnings on the models' shape checks
        if exporter == "dynamo":
            program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=opset, verbose=False,
                                        input_names=["input"], output_names=output_names,
                                        dynamic_shapes=_batch_dynamic_shapes(dynamic_batch))
            program.save(buffer)
        else:
            axes = {name: {0: "batch"} for name in ["input"] + output_names} if dynamic_batch else None
            # torch >= 2.9 defaults to the dynamo exporter; releases before 2.5 have no `dynamo` argument
            legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            torch.onnx.export(model, (example,), buffer, opset_version=opset, input_names=["input"],
                              output_names=output_names, dynamic_axes=axes, **legacy)
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


def export_torchscript(model: nn.Module, path: PathLike, example_input: torch.Tensor, freeze: bool = True) -> Path:
    """Trace `model` (and freeze it: weights become constants) and save it with `torch.jit.save`.

    TorchScript is deprecated upstream in favour of torch.export; it is kept for C++ (libtorch) deployment. Shape
    checks in the models are traced as constants, so the file accepts any batch size at the traced image size.
    """
    _check_eval(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings for shape checks and torch.jit's deprecation notice
        with torch.no_grad():
            traced = torch.jit.trace(model, _export_batch(example_input))
            if freeze:
                traced = torch.jit.freeze(traced)
    path = Path(path)
    with atomic_write(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        torch.jit.save(traced, str(tmp))
    return path


def export_program(model: nn.Module, path: PathLike, example_input: torch.Tensor, dynamic_batch: bool = True) -> Path:
    """`torch.export.export` the model (batch dynamic by default) and save the ExportedProgram (.pt2)."""
    _check_eval(model)
    example = _export_batch(example_input) if dynamic_batch else example_input
    with _batch_capture(dynamic_batch):
        program = torch.export.export(model, (example,), dynamic_shapes=_batch_dynamic_shapes(dynamic_batch))
    buffer = io.BytesIO()  # torch.export.save insists on a .pt2 name; the temporary file has another
    torch.export.save(program, buffer)
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def _require_executorch() -> None:
    if importlib.util.find_spec("executorch") is None:
        raise ImportError("ExecuTorch is not installed: pip install 'ghostnet-torch[executorch]'")


def quantize_for_xnnpack(model: nn.Module, example_input: torch.Tensor,
                         calibration: Iterable[torch.Tensor]) -> nn.Module:
    """int8 post-training quantization the way XNNPACK runs it (PyTorch 2 export quantization, torchao's pt2e):
    symmetric per-channel int8 weights, int8 activations whose ranges are observed on `calibration` batches."""
    _require_executorch()
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with torch.no_grad():
        prepared = prepare_pt2e(torch.export.export(model, (example_input,)).module(), quantizer)
        seen = 0
        for batch in calibration:
            for image in batch.split(example_input.shape[0]):  # the program's static batch size
                if image.shape == example_input.shape:
                    prepared(image)
                    seen += 1
    if not seen:
        raise ValueError(f"no calibration batch of shape {tuple(example_input.shape)} (the export's input shape)")
    return convert_pt2e(prepared)


def export_executorch(model: nn.Module, path: PathLike, example_input: torch.Tensor,
                      calibration: Optional[Iterable[torch.Tensor]] = None) -> Path:
    """Lower `model` to XNNPACK and write an ExecuTorch program (.pte) for inputs shaped like `example_input`;
    with `calibration` (batches of preprocessed images), quantized to int8 first (`quantize_for_xnnpack`)."""
    _check_eval(model)
    _require_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if calibration is not None:
        model = quantize_for_xnnpack(model, example_input, calibration)
    with torch.no_grad():
        program = torch.export.export(model, (example_input,))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_bytes(lowered.buffer)
    return path


def set_executorch_threads(threads: int) -> None:
    """Size ExecuTorch's process-wide thread pool. Programs loaded before the change must be loaded again:
    XNNPACK keeps the pool it was loaded with (running an older one after a resize deadlocks)."""
    _require_executorch()
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(threads)


def executorch_method(path: PathLike):
    """The `forward` method of a .pte file, loaded into ExecuTorch's Python runtime."""
    _require_executorch()
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(path)).load_method("forward")


def export_model(model: nn.Module, path: PathLike, example_input: torch.Tensor, fmt: str = "onnx",
                 **kwargs: Any) -> Path:
    """Export in one of EXPORT_FORMATS ("onnx", "torchscript", "torch.export", "executorch")."""
    exporters = {"onnx": export_onnx, "torchscript": export_torchscript, "torch.export": export_program,
                 "executorch": export_executorch}
    if fmt not in exporters:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {EXPORT_FORMATS}")
    return exporters[fmt](model, path, example_input, **kwargs)


def load_exported(path: PathLike) -> Any:
    """Load a file written by `export_model` as a callable (ORT session wrapper, ScriptModule or nn.Module)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no exported model at {path}")
    if path.suffix == ".onnx":
        session = onnx_session(path)
        return lambda x: run_onnx(session, x)
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    if path.suffix == ".pte":
        method = executorch_method(path)
        return lambda x: method.execute([x.detach().cpu().float().contiguous()])[0]
    if path.suffix == ".pt":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            return torch.jit.load(str(path))
    raise ValueError(f"cannot tell the format of {path}: expected a .onnx, .pt (TorchScript), .pt2 or .pte file")


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
