"""The machine a measurement ran on: CPU, GPU, library versions and load average, written beside every result."""
from __future__ import annotations

import os
import platform
import time
from typing import Any, Optional

import torch

from ..hardware import cpu_flags, cpu_isa, cpu_name
from .runtimes import list_runtimes

__all__ = ["cpu_flags", "cpu_isa", "environment", "load_average"]

#: Environment variables that hold PyTorch's kernels to a lower instruction set (recorded beside every result).
ISA_OVERRIDES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except AttributeError:  # installed without a __version__ (executorch): ask the package metadata
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - absent or broken optional package
        return None


def load_average() -> Optional[list[float]]:
    """The 1, 5 and 15 minute load averages, or None where the platform has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def environment(device: str = "cpu") -> dict[str, Any]:
    """Machine, library versions and the current load average."""
    env = {
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": _version("torchvision"), "timm": _version("timm"), "onnx": _version("onnx"),
        # every file runtime's version under its name (onnxruntime, openvino, executorch, ...), None if absent
        **{r.name: r.version() for r in list_runtimes(files=True) if r.package}, "load_average": load_average(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "isa": cpu_isa(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_overrides": {name: os.environ[name] for name in ISA_OVERRIDES if name in os.environ},
    }
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env
