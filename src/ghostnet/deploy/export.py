"""Export a model to any registered runtime's file, and load any such file back, through the runtime registry
(`deploy/runtimes`): ONNX (onnxruntime), OpenVINO IR, ExecuTorch, TorchScript, torch.export, and whatever else is
registered. Every exporter writes atomically: a failed export leaves no file behind.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ..utils import PathLike
from .runtimes import Session, runtime_for_file, runtime_for_format
from .runtimes.base import list_runtimes

__all__ = ["export_formats", "export_model", "format_suffix", "load_exported"]


def export_formats() -> tuple[str, ...]:
    """The export formats of every registered file runtime ("onnx", "openvino", ...), installed or not."""
    return tuple(r.format for r in list_runtimes(files=True))


def format_suffix(fmt: str) -> str:
    """The file suffix of export format `fmt`."""
    return runtime_for_format(fmt).suffix or ""


def export_model(model: nn.Module, path: PathLike, example_input: torch.Tensor, fmt: str = "onnx",
                 **options: Any) -> Path:
    """Write `model` in export format `fmt` with the runtime's exporter (`dynamic_batch` and the runtime's own
    options as keywords)."""
    runtime = runtime_for_format(fmt)
    runtime.require()
    return runtime.export(model, path, example_input, **options)


def load_exported(path: PathLike, threads: Optional[int] = None) -> Session:
    """A file written by `export_model`, loaded by the runtime its suffix names: a callable session."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no exported model at {path}")
    runtime = runtime_for_file(path)
    runtime.require()
    return runtime.load(path, threads=threads)
