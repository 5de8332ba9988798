"""The machine a measurement ran on: CPU, GPU, library versions and load average, written beside every result."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = ["environment", "load_average"]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": _version("torchvision"), "timm": _version("timm"), "onnxruntime": _version("onnxruntime"),
        "onnx": _version("onnx"), "executorch": _version("executorch"), "load_average": load_average(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env
