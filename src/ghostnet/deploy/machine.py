"""The machine a measurement ran on: CPU, GPU, library versions and load average, written beside every result."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = ["cpu_flags", "cpu_isa", "environment", "load_average"]

#: Environment variables that hold PyTorch's kernels to a lower instruction set (recorded beside every result).
ISA_OVERRIDES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def _cpu_name() -> str:
    """The CPU's model name, with its x86 family and model numbers where the name alone is vague (a virtual
    machine's "AMD EPYC" says nothing of the generation; family 25 model 17 is Zen 4)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as the kernel reports them (/proc/cpuinfo "flags", or "Features" on ARM); empty where
    there is no /proc/cpuinfo. These are what the CPU and operating system support, whatever PyTorch is held to."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_isa() -> str:
    """The widest x86 vector instruction set of this CPU ("AVX-512", "AVX2", "AVX", "SSE"), read from its flags;
    elsewhere the machine name ("aarch64", ...). Falls back to PyTorch's ATen capability where no flags are found
    (which ATEN_CPU_CAPABILITY can lower)."""
    flags = cpu_flags()
    if not flags:
        capability = torch.backends.cpu.get_cpu_capability()
        return {"AVX512": "AVX-512", "AVX2": "AVX2"}.get(capability, platform.machine() or capability)
    for flag, isa in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse2", "SSE")):
        if flag in flags:
            return isa
    return platform.machine()


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
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "isa": cpu_isa(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_overrides": {name: os.environ[name] for name in ISA_OVERRIDES if name in os.environ},
    }
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env
