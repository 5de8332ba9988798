"""TorchScript (trace + freeze): for C++ (libtorch) deployment. Deprecated upstream in favour of torch.export, kept
for libtorch users. Shape checks in the models are traced as constants, so the file accepts any batch size at the
traced image size."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ...utils import PathLike, atomic_write
from ..graph_capture import check_eval, export_batch
from .base import Runtime, TorchSession, register_runtime

__all__ = ["export_torchscript", "load_torchscript"]


def export_torchscript(model: nn.Module, path: PathLike, example_input: torch.Tensor, *, dynamic_batch: bool = True,
                       freeze: bool = True) -> Path:
    """Trace `model` (and freeze it: weights become constants) and save it with `torch.jit.save`."""
    check_eval(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings for shape checks and torch.jit's deprecation notice
        with torch.no_grad():
            traced = torch.jit.trace(model, export_batch(example_input))
            if freeze:
                traced = torch.jit.freeze(traced)
    path = Path(path)
    with atomic_write(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        torch.jit.save(traced, str(tmp))
    return path


def load_torchscript(path: PathLike, threads: Optional[int] = None) -> TorchSession:
    """A TorchScript file as a session (threads: PyTorch's process-wide pool)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        return TorchSession(torch.jit.load(str(path)))


RUNTIME = register_runtime(Runtime(
    name="torchscript", summary="TorchScript file (trace + freeze) in libtorch", format="torchscript", suffix=".pt",
    export=export_torchscript, load=load_torchscript, batch_modes=("dynamic",), accepts_options=("freeze",),
    devices=("cpu", "cuda"), tunable=False, set_threads=torch.set_num_threads))
