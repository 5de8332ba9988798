"""Whether a graph is being recorded from the forward: what code that looks at shapes, or picks a kernel by them,
asks before it does.

`torch.fx.symbolic_trace` (and torchvision's `create_feature_extractor`, which uses it) runs the forward on proxies:
a size is a graph node there, so a Python `if` or `max()` on it fails ("symbolically traced variables cannot be used
as inputs to control flow"). Such code is either skipped while tracing (input checks) or kept out of the graph as one
opaque call with `torch.fx.wrap` (the batch fold of `folded_conv`, DFC attention's pooling size, dynamic convolution's
grouped form), which runs the eager code on real tensors when the graph runs, so the traced model computes exactly
what the eager one computes. `torch.fx.wrap` works with every tracer, so no leaf-module list has to be passed to
`symbolic_trace` or `create_feature_extractor` (timm's `register_notrace_*` registries need that).
"""
from __future__ import annotations

import torch

try:
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing as _is_fx_symbolic_tracing
except ImportError:  # torch < 2.5: only the flag, which torch.export sets too
    from torch.fx._symbolic_trace import _get_is_fx_tracing as _is_fx_symbolic_tracing  # type: ignore[attr-defined]


def is_symbolic_tracing() -> bool:
    """True while `torch.fx` symbolic tracing runs the forward (not under torch.compile / torch.export)."""
    return bool(_is_fx_symbolic_tracing())


def is_graph_capture() -> bool:
    """True while any tracer records the forward: `torch.fx` symbolic tracing, `torch.jit.trace` or scripting."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or is_symbolic_tracing()
