"""Keep the memory of large CPU tensors in the process between training steps, instead of fresh pages every time.

PyTorch's CPU tensors come from malloc. glibc serves large blocks by mmap or from the top of its heap, and hands
memory back to the kernel as blocks are freed (munmap, or trimming the heap top). A training step frees most of its
maps and allocates them again in the next step, so every step pays page faults to map and zero the same memory again:
on an AVX-512 Xeon (2 vCPUs) ResNet-56's CIFAR step (batch 128) took 25-45 thousand page faults and 40-70 ms of
system time in every step, 13-16% of it. Raising glibc's mmap and trim thresholds (`mallopt`) keeps the freed
memory for the next step: no faults after the first step, the process holding its peak memory, as it would with
jemalloc or tcmalloc, which Intel's guide to PyTorch CPU performance recommends for the same reason.

`tune_allocator` does it once per process; the trainer (`ghostnet.train.train`) and `ghostnet bench --mode train`
call it before their first step, and record what was done. Only glibc (Linux) has these settings; elsewhere, or with
`GHOSTNET_MALLOC_TUNING=0`, nothing changes.
"""
from __future__ import annotations

import ctypes
import os
import platform
from typing import Any

ENV = "GHOSTNET_MALLOC_TUNING"
#: Blocks below this come from the heap, which keeps them (glibc's own default starts at 128 KiB, rising to 32 MiB).
MMAP_THRESHOLD = 256 << 20
#: Free memory at the heap's top is handed back only beyond this.
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>

_state: dict[str, Any] = {}

__all__ = ["ENV", "tune_allocator"]


def tune_allocator() -> dict[str, Any]:
    """Raise glibc malloc's mmap and trim thresholds for this process (once; later calls return the first answer).
    Returns what was done: {"applied": bool, "reason": str} and, where applied, both thresholds in bytes."""
    if not _state:
        _state.update(_apply())
    return dict(_state)


def _apply() -> dict[str, Any]:
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return {"applied": False, "reason": f"{ENV}=0"}
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return {"applied": False, "reason": "not glibc"}
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as exc:
        return {"applied": False, "reason": f"no mallopt ({exc})"}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return {"applied": False, "reason": "mallopt refused the thresholds"}
    return {"applied": True, "reason": "glibc malloc keeps freed memory for the next step",
            "mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD}
