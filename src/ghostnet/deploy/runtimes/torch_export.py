"""torch.export: the ExportedProgram (.pt2), PyTorch's graph capture that ExecuTorch, AOTInductor and the ONNX
dynamo exporter start from; here it runs as the module it unflattens to."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ...utils import PathLike, atomic_write
from ..graph_capture import batch_capture, batch_dynamic_shapes, check_eval, export_batch
from .base import Runtime, TorchSession, register_runtime

__all__ = ["export_program"]


def export_program(model: nn.Module, path: PathLike, example_input: torch.Tensor, *,
                   dynamic_batch: bool = True) -> Path:
    """`torch.export.export` the model (batch dynamic by default) and save the ExportedProgram (.pt2)."""
    check_eval(model)
    example = export_batch(example_input) if dynamic_batch else example_input
    with batch_capture(dynamic_batch):
        program = torch.export.export(model, (example,), dynamic_shapes=batch_dynamic_shapes(dynamic_batch))
    buffer = io.BytesIO()  # torch.export.save insists on a .pt2 name; the temporary file has another
    torch.export.save(program, buffer)
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def _load(path: PathLike, threads: Optional[int] = None) -> TorchSession:
    return TorchSession(torch.export.load(str(path)).module())


RUNTIME = register_runtime(Runtime(
    name="torch.export", summary="torch.export ExportedProgram (.pt2), run as its module", format="torch.export",
    suffix=".pt2", export=export_program, load=_load, devices=("cpu", "cuda"), tunable=False,
    set_threads=torch.set_num_threads))
