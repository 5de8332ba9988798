"""Global pooling selected by name, with the names and semantics of timm's `SelectAdaptivePool2d`.

"avg", "max", "avgmax" (the mean of both) and "catavgmax" (both, concatenated: twice the channels); timm's "fast"
spellings ("fast", "fastavg", "fastmax", "fastavgmax", "fastcatavgmax") compute the same numbers here; "" (or None)
is no pooling: the map passes through unflattened. Adaptive pools rather than mean/amax: the same numbers, exported
as GlobalAveragePool / GlobalMaxPool, which onnxruntime runs in its blocked layout (a ReduceMean costs two layout
reorders there).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

#: The pool types timm's SelectAdaptivePool2d accepts ("" = none), without its "fast" prefix.
POOL_TYPES = ("", "avg", "max", "avgmax", "catavgmax")
_FAST = {"fast": "avg", "fastavg": "avg", "fastmax": "max", "fastavgmax": "avgmax", "fastcatavgmax": "catavgmax"}
#: Every spelling accepted.
POOL_NAMES = POOL_TYPES + tuple(_FAST)


def canonical_pool_type(pool_type: Optional[str], allowed: tuple[str, ...] = POOL_TYPES) -> str:
    """The pool type named by `pool_type` ("fast" spellings mapped to theirs, None to ""); a ValueError for one
    that is not in `allowed`."""
    name = (pool_type or "").lower()
    name = _FAST.get(name, name)
    if name not in allowed:
        names = tuple(n for n in POOL_NAMES if _FAST.get(n, n) in allowed)
        raise ValueError(f"global_pool must be one of {names}, got {pool_type!r}")
    return name


def pool_feat_mult(pool_type: str) -> int:
    """How many times the input's channels the pooled vector has (2 for catavgmax)."""
    return 2 if canonical_pool_type(pool_type) == "catavgmax" else 1


class GlobalPool(nn.Module):
    """Global pooling by name (module docstring), flattened to (N, C) when `flatten`, else kept (N, C, 1, 1).

    `pool_type` keeps the name as given (timm's attribute); `is_identity()` and `feat_mult()` as in timm.
    """

    def __init__(self, pool_type: Optional[str] = "avg", flatten: bool = True) -> None:
        super().__init__()
        self.kind = canonical_pool_type(pool_type)
        self.pool_type = pool_type or ""
        self.flatten = flatten

    def is_identity(self) -> bool:
        return not self.kind

    def feat_mult(self) -> int:
        return pool_feat_mult(self.kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.kind:
            return x
        if self.kind == "avg":
            x = F.adaptive_avg_pool2d(x, 1)
        elif self.kind == "max":
            x = F.adaptive_max_pool2d(x, 1)
        elif self.kind == "avgmax":
            x = 0.5 * (F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1))
        else:
            x = torch.cat((F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)), 1)
        return x.flatten(1) if self.flatten else x

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}, flatten={self.flatten}"
