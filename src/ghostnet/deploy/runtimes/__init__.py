"""Inference runtimes, one module each, registered on import (see `base` for what a runtime declares and how to add
one)."""
# Imported in the order `list_runtimes` gives them: PyTorch first, then the file runtimes.
from . import eager, onnxruntime, openvino, executorch, ncnn, litert  # noqa: F401 - they register
from . import torchscript, torch_export  # noqa: F401
from .base import (MissingRuntime, Runtime, RuntimeUnavailable, Session, TorchSession, get_runtime, list_runtimes,
                   register_runtime, runtime_for_file, runtime_for_format, unregister_runtime)

__all__ = ["MissingRuntime", "Runtime", "RuntimeUnavailable", "Session", "TorchSession", "get_runtime",
           "list_runtimes", "register_runtime", "runtime_for_file", "runtime_for_format", "unregister_runtime"]
