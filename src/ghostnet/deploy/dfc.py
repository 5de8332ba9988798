"""GhostNetV2's DFC attention in a deploy form that runtimes run fast, computing exactly the trained model's gate.

The training form (`ghostnet.layers.ghost.dfc_attention`) pools with ceil_mode and cuts the result back to
max(side // 2, 1), then resizes the sigmoid gate to the output's size. Exported with a dynamic batch, every one of
those sizes becomes run-time shape arithmetic (Shape, Gather, Div, Unsqueeze, Concat, Slice: about 20 nodes per DFC
block), the Resize gets a computed `sizes` input and onnxruntime loses the static spatial shapes downstream. Its
blocked (NCHWc) CPU kernels then keep neither the pooling, nor the resize, nor the product: every DFC block costs
four layout reorders on top.

`DeployDFC` computes the same gate from sizes that are constants of the graph:

- the pooling is a plain floor-mode 2x2 average (the official formulation), 2x1 or 1x2 where a side is one pixel
  (what the training form's ceil_mode-and-cut computes there), so no slice follows it;
- the gate reaches the output's size by a nearest upsampling with an integer scale factor (a Resize with constant
  scales, which onnxruntime runs in its blocked layout) wherever that copies exactly the entries PyTorch's
  size-based nearest resize copies (`upsample_factor` asks PyTorch itself); elsewhere, the 2n -> 2n+1 sides
  among them, it keeps that size-based resize, which is the training form's own op;
- a 1x1 gate (maps of 2 or 3 pixels a side) broadcasts without any resize.

The sigmoid stays a separate op; onnxruntime fuses it into the last depthwise conv. Measured and not kept
(docs/deployment.md, "DFC attention in deploy form"): the pooling folded into the 1x1 conv (a 2x2 stride-2 conv:
exact, one node fewer, but four times the conv's multiply-adds: ghostnetv2_100 24% slower in onnxruntime); the
product on a (N, C, h, 2, w, 2) view (6-D tensors leave onnxruntime's blocked layout; no faster in eager PyTorch);
for 2n+1 sides an edge Pad after the integer upsampling (onnxruntime's edge Pad is twice as slow as the resize) or a
Gather of PyTorch's indices (slower still). Merging the two depthwise convs into one 5x5 conv is not exact: the
first conv's bias reaches the second through its zero padding, so the border rows' bias differs from the others'.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import _disable_current_modes

from ..layers.tracing import is_symbolic_tracing

__all__ = ["DeployDFC", "TrainingFormDFC", "dfc_pool_kernel", "nearest_source_indices", "upsample_factor",
           "use_training_form_dfc"]


def _nearest(source: torch.Tensor, out_size: int, factor: Optional[int]) -> torch.Tensor:
    """`source` (N, C, n, 1) resized along its rows to `out_size` as the deploy form does it: an integer scale
    factor where one is given, PyTorch's size-based nearest resize (the training form's op) otherwise."""
    if factor is None:
        return F.interpolate(source, size=(out_size, source.shape[-1]), mode="nearest")
    return F.interpolate(source, scale_factor=(float(factor), 1.0), mode="nearest")


@functools.lru_cache(maxsize=None)
def upsample_factor(in_size: int, out_size: int) -> Optional[int]:
    """The integer nearest-upsampling factor that reads, along one axis, exactly the entries PyTorch's size-based
    nearest resize from `in_size` to `out_size` reads (the training form's op), or None where there is none.

    Asked of PyTorch itself rather than derived: its kernel rounds a float32 scale, so `i * in // out` is not always
    its pattern. 2n -> factor 2; 2n+1 has no integer factor (outputs 0, 1 and 2 all read entry 0)."""
    factor = out_size // in_size
    if factor < 1 or factor * in_size != out_size:
        return None
    with _disable_current_modes():  # see nearest_source_indices
        source = torch.arange(in_size, dtype=torch.float64).view(1, 1, in_size, 1)
        by_factor = _nearest(source, out_size, factor).flatten().long()
    return factor if torch.equal(by_factor, nearest_source_indices(in_size, out_size)) else None


def nearest_source_indices(in_size: int, out_size: int) -> torch.Tensor:
    """The entries PyTorch's size-based nearest resize from `in_size` to `out_size` reads along one axis, one per
    output entry (asked of PyTorch itself: its kernel rounds a float32 scale)."""
    # Real tensors even while a graph is captured (torch.export's fake tensors cannot answer torch.equal), and
    # nothing recorded into that graph: the answer is a constant of it.
    with _disable_current_modes():
        source = torch.arange(in_size, dtype=torch.float64).view(1, 1, in_size, 1)
        return _nearest(source, out_size, None).flatten().long()


def dfc_pool_kernel(height: int, width: int) -> tuple[int, int]:
    """The pooling window: 2 along each side of 2 pixels or more, 1 along a one-pixel side."""
    return (2 if height > 1 else 1, 2 if width > 1 else 1)


def _conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _resize_gate(gate: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """The gate brought to the output's size: an integer nearest upsampling where one reads PyTorch's entries
    (`upsample_factor`: a Resize with constant scales, which onnxruntime runs in its blocked layout), else the
    training form's size-based resize."""
    rows = upsample_factor(int(gate.shape[-2]), out_size[0])
    cols = upsample_factor(int(gate.shape[-1]), out_size[1])
    if rows is None or cols is None:
        return F.interpolate(gate, size=out_size, mode="nearest")
    if (rows, cols) == (1, 1):
        return gate
    return F.interpolate(gate, scale_factor=(float(rows), float(cols)), mode="nearest")


class DeployDFC(nn.Sequential):
    """The DFC branch of a fused Ghost module: its folded convs (1x1 conv, depthwise 1x5, depthwise 5x1, in a
    Sequential so that keys and indexing stay `short_conv.{0,1,2}`) and a forward `(out, x) -> out * gate(x)` whose
    shapes are all constants once traced (see the module docstring)."""

    def forward(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if is_symbolic_tracing():
            return deploy_dfc_call(self, out, x)
        # int(): under torch.jit.trace (the ONNX exporter) sizes become constants instead of Shape/Gather nodes;
        # height and width are fixed at export anyway, only the batch is dynamic.
        height, width = int(x.shape[-2]), int(x.shape[-1])
        kernel = dfc_pool_kernel(height, width)
        gate = F.avg_pool2d(x, kernel, kernel) if kernel != (1, 1) else x
        for conv in self:
            gate = _conv(conv, gate)
        gate = torch.sigmoid(gate)
        if gate.shape[-2:] == (1, 1):
            return out * gate  # nearest resizing of one pixel is a broadcast
        return out * _resize_gate(gate, (int(out.shape[-2]), int(out.shape[-1])))


def deploy_dfc_call(dfc: DeployDFC, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`dfc(out, x)` as one opaque node of a `torch.fx` graph, whose sizes (control flow here) are known when the
    graph runs."""
    return dfc(out, x)


torch.fx.wrap("deploy_dfc_call")


class TrainingFormDFC(nn.Sequential):
    """The same folded convs computing the gate the way the training form does (`layers.ghost.dfc_attention`:
    ceil-mode pooling cut back, a size-based resize). Only for side-by-side measurements of the deploy form against
    what it replaced (benchmarks/bench_dfc.py, benchmarks/profile_ort_threads.py --dfc training)."""

    def forward(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        from ..layers.ghost import dfc_attention

        return out * dfc_attention(nn.Sequential(*self), x, (out.shape[-2], out.shape[-1]))


def use_training_form_dfc(model: nn.Module) -> int:
    """Put every DeployDFC of a fused model back in its training form (`TrainingFormDFC`), in place; returns the
    count. The function computed is the same; only the graph differs."""
    swapped = 0
    for module in model.modules():
        dfc = getattr(module, "short_conv", None)
        if isinstance(dfc, DeployDFC):
            module.short_conv = TrainingFormDFC(*dfc)
            swapped += 1
    return swapped
