"""PyTorch eager and torch.compile: the module itself, in this process (no file). The bench harness's "fused" and
"single-path" backends are the eager runtime on those forms of our models."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .base import Runtime, TorchSession, register_runtime

__all__ = ["compiled_session", "eager_session"]


def eager_session(model: nn.Module, threads: Optional[int] = None) -> TorchSession:
    """The module as it is (threads: PyTorch's process-wide pool, set by the caller)."""
    return TorchSession(model)


def compiled_session(model: nn.Module, threads: Optional[int] = None) -> TorchSession:
    """The module through torch.compile (Inductor; weights frozen into the graph on CPU). Inductor's CPU kernels
    bake in the thread count, so every call compiles afresh."""
    torch._dynamo.reset()
    on_cpu = next(model.parameters()).device.type == "cpu"
    return TorchSession(torch.compile(model, options={"freezing": True} if on_cpu else {}))


EAGER = register_runtime(Runtime(name="eager", summary="PyTorch eager, in this process", load=eager_session,
                                 devices=("cpu", "cuda"), tunable=False, set_threads=torch.set_num_threads))
COMPILE = register_runtime(Runtime(name="compile", summary="torch.compile (Inductor), in this process",
                                   load=compiled_session, devices=("cpu", "cuda"), tunable=False,
                                   set_threads=torch.set_num_threads))
