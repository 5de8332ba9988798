"""ExecuTorch, PyTorch's runtime for phones and embedded devices (the optional `executorch` extra).

The .pte program is lowered to XNNPACK, the CPU kernel library that mobile runtimes (ExecuTorch, TFLite) share,
with a static input shape (the example's: batch 1). The same file runs on Android, iOS and, through ExecuTorch's
Python runtime, here. Its thread pool is process-wide: `set_executorch_threads` sizes it before programs load.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn as nn

from ...utils import PathLike, atomic_write
from ..graph_capture import check_eval
from ..quantize import batches_of_input_shape
from .base import MissingRuntime, Output, Runtime, Session, register_runtime

__all__ = ["ExecuTorchSession", "executorch_method", "export_executorch", "quantize_for_xnnpack",
           "set_executorch_threads"]


def _require_executorch() -> None:
    if importlib.util.find_spec("executorch") is None:
        raise MissingRuntime("ExecuTorch is not installed: pip install 'ghostnet-torch[executorch]'")


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
        for images in batches_of_input_shape(calibration, example_input):  # the program's static batch size
            prepared(images)
    return convert_pt2e(prepared)


def export_executorch(model: nn.Module, path: PathLike, example_input: torch.Tensor, *, dynamic_batch: bool = False,
                      calibration: Optional[Iterable[torch.Tensor]] = None) -> Path:
    """Lower `model` to XNNPACK and write an ExecuTorch program (.pte) for inputs shaped like `example_input`;
    with `calibration` (batches of preprocessed images), quantized to int8 first (`quantize_for_xnnpack`)."""
    check_eval(model)
    if dynamic_batch:
        raise ValueError("ExecuTorch programs take a static input shape (export with a fixed batch)")
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


def _export_int8(model: nn.Module, path: PathLike, example_input: torch.Tensor,
                 calibration: Iterable[torch.Tensor]) -> Path:
    return export_executorch(model, path, example_input[:1], calibration=calibration)


def set_executorch_threads(threads: int) -> None:
    """Size ExecuTorch's process-wide thread pool. Programs loaded before the change must be loaded again:
    XNNPACK keeps the pool it was loaded with (running an older one after a resize deadlocks)."""
    _require_executorch()
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(threads)


def executorch_method(path: PathLike):
    """The `forward` method of a .pte file, loaded into ExecuTorch's Python runtime."""
    _require_executorch()
    from executorch.runtime import Runtime as ExecuTorchRuntime

    return ExecuTorchRuntime.get().load_program(str(path)).load_method("forward")


class ExecuTorchSession(Session):
    """A .pte program's forward method (threads: the process-wide pool, `set_executorch_threads`)."""

    def __init__(self, path: PathLike, threads: Optional[int] = None) -> None:
        self.method = executorch_method(path)

    def __call__(self, x: torch.Tensor) -> Output:
        outputs = self.method.execute([x.detach().cpu().float().contiguous()])
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def bind(self, x: torch.Tensor) -> Callable[[], Any]:
        inputs = [x.detach().cpu().float().contiguous()]
        return lambda: self.method.execute(inputs)


RUNTIME = register_runtime(Runtime(
    blocked_layout=True,
    name="executorch", summary="ExecuTorch program lowered to XNNPACK (phones, embedded; static shape)",
    format="executorch", suffix=".pte", export=export_executorch, export_int8=_export_int8,
    load=lambda path, threads=None: ExecuTorchSession(path, threads), package="executorch", extra="executorch",
    # Not a --format auto candidate unless named (--runtimes executorch): a phone runtime, whose x86 timings here are
    # a proxy, and each lowering takes 10-20 s where an ONNX export takes one.
    batch_modes=("static",), set_threads=set_executorch_threads, tunable=False))
