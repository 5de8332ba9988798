"""What CPU this is: its model name, feature flags and widest vector instruction set.

In the ground layer because both the trainer (its layout choice) and deployment (the export form and runtime
choice) key measured choices by the CPU they were measured on, and neither may import the other.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

__all__ = ["cpu_flags", "cpu_isa", "cpu_name"]


@functools.lru_cache(maxsize=1)
def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_name() -> str:
    """The CPU's model name, with its x86 family and model numbers where the name alone is vague (a virtual
    machine's "AMD EPYC" says nothing of the generation; family 25 model 17 is Zen 4)."""
    fields = _cpuinfo_fields()
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as the kernel reports them (/proc/cpuinfo "flags", or "Features" on ARM); empty where
    there is no /proc/cpuinfo. These are what the CPU and operating system support, whatever PyTorch is held to."""
    fields = _cpuinfo_fields()
    return frozenset((fields.get("flags") or fields.get("Features") or "").split())


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
