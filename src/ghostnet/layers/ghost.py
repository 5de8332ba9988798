"""The Ghost module: a few intrinsic maps from an ordinary convolution, ghost maps from cheap linear operations.

Key names follow the official code and timm (`primary_conv.{0,1}`, `cheap_operation.{0,1}`, `short_conv.{0..5}`),
so their checkpoints load unchanged.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .folded_conv import folded_forward
from .ghost_training import ghost_training_forward, ghost_training_spec
from .helpers import LayerFactory, conv_bn, make_act, same_conv
from .tracing import is_graph_capture

#: A cheap operation is built from (intrinsic channels, ghost channels, cheap kernel size d, dilation).
CheapOpFactory = Callable[[int, int, int, int], nn.Module]


def depthwise_cheap_op(in_chs: int, out_chs: int, kernel_size: int, dilation: int = 1) -> nn.Module:
    """The paper's default: each intrinsic map feeds out/in maps through its own d x d filter."""
    return same_conv(in_chs, out_chs, kernel_size, 1, dilation, groups=in_chs)


def pointwise_cheap_op(in_chs: int, out_chs: int, kernel_size: int, dilation: int = 1) -> nn.Module:
    """A 1x1 convolution mixing all intrinsic maps (the d argument is ignored)."""
    return nn.Conv2d(in_chs, out_chs, 1, bias=False)


def group_cheap_op(in_chs: int, out_chs: int, kernel_size: int, dilation: int = 1, group_size: int = 4) -> nn.Module:
    """A d x d group convolution with about `group_size` intrinsic maps per group."""
    groups = math.gcd(in_chs, out_chs)
    while groups > 1 and in_chs // groups < group_size and groups % 2 == 0:
        groups //= 2
    return same_conv(in_chs, out_chs, kernel_size, 1, dilation, groups=groups)


CHEAP_OPS: dict[str, CheapOpFactory] = {
    "depthwise": depthwise_cheap_op,
    "pointwise": pointwise_cheap_op,
    "group": group_cheap_op,
}


def resolve_cheap_op(cheap_op: Union[str, CheapOpFactory]) -> CheapOpFactory:
    """Look a cheap operation up by name, or pass a user's factory through."""
    if callable(cheap_op):
        return cheap_op
    if cheap_op not in CHEAP_OPS:
        raise ValueError(f"unknown cheap_op {cheap_op!r}; expected one of {sorted(CHEAP_OPS)} or a callable "
                         "(in_chs, out_chs, kernel_size, dilation) -> nn.Module")
    return CHEAP_OPS[cheap_op]


def ghost_channels(out_chs: int, ratio: int) -> tuple[int, int]:
    """(intrinsic, ghost) channel counts: ceil(out/s) intrinsic maps, each feeding s-1 ghost maps."""
    init_chs = math.ceil(out_chs / ratio)
    return init_chs, init_chs * (ratio - 1)


def init_ghost_geometry(module: nn.Module, in_chs: int, out_chs: int, ratio: int, dw_size: int, kernel_size: int,
                        stride: int, dilation: int) -> None:
    """Check a Ghost module's arguments and set the attributes GhostModule and GhostModuleV3 share (`in_chs`,
    `out_chs`, `ratio`, `dw_size`, `init_chs`, `new_chs`), which `merge_ghost_maps`, fusion and cost analysis read."""
    _check_ghost_args(in_chs, out_chs, ratio, dw_size, kernel_size, stride, dilation)
    module.in_chs, module.out_chs = in_chs, out_chs
    module.ratio, module.dw_size = int(ratio), dw_size
    module.init_chs, module.new_chs = ghost_channels(out_chs, module.ratio)


def _check_ghost_args(in_chs: int, out_chs: int, ratio: int, dw_size: int, kernel_size: int, stride: int,
                      dilation: int) -> None:
    if in_chs < 1 or out_chs < 1:
        raise ValueError(f"channel counts must be positive, got in_chs={in_chs}, out_chs={out_chs}")
    if int(ratio) != ratio or ratio < 2:
        raise ValueError(f"ratio s must be an integer >= 2, got {ratio}")
    if dw_size < 1 or dw_size % 2 == 0:
        raise ValueError(f"cheap kernel size d must be a positive odd integer, got {dw_size}")
    if kernel_size < 1 or stride < 1 or dilation < 1:
        raise ValueError(f"kernel_size, stride and dilation must be >= 1, got {kernel_size}, {stride}, {dilation}")


def dfc_attention(short_conv: nn.Module, x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """GhostNetV2's DFC gate: pool 2x, horizontal and vertical FC (depthwise 1x5 / 5x1), sigmoid, nearest upsample.

    The official code pools with floor semantics, which gives an empty map for a 1-pixel side. Pooling with
    ceil_mode and cutting back to max(side // 2, 1) equals the official result for every side >= 2 and keeps
    1-pixel maps working.
    """
    return F.interpolate(torch.sigmoid(short_conv(dfc_pool(x))), size=out_size, mode="nearest")


def dfc_pool(x: torch.Tensor) -> torch.Tensor:
    """DFC attention's 2x average pooling: ceil_mode, cut back to max(side // 2, 1). One opaque node in a `torch.fx`
    graph (its sizes are control flow), computed on the real sizes when the graph runs."""
    h, w = x.shape[-2], x.shape[-1]
    pooled = F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
    return pooled[:, :, : max(h // 2, 1), : max(w // 2, 1)]


torch.fx.wrap("dfc_pool")


def make_short_conv(in_chs: int, out_chs: int, kernel_size: int, stride: int) -> nn.Sequential:
    """The DFC branch's convolutions: 1x1 (or k x k) conv + BN, depthwise 1x5 + BN, depthwise 5x1 + BN."""
    return nn.Sequential(
        *conv_bn(same_conv(in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2), out_chs),
        *conv_bn(same_conv(out_chs, out_chs, (1, 5), padding=(0, 2), groups=out_chs), out_chs),
        *conv_bn(same_conv(out_chs, out_chs, (5, 1), padding=(2, 0), groups=out_chs), out_chs),
    )


def apply_dfc_gate(out: torch.Tensor, x: torch.Tensor, short_conv: Optional[nn.Module]) -> torch.Tensor:
    """`out` times the DFC attention computed from the module input `x` (GhostNetV2), or `out` where there is none."""
    if short_conv is None:
        return out
    return out * dfc_attention(short_conv, x, (out.shape[-2], out.shape[-1]))


class _ConcatDenseGrad(torch.autograd.Function):
    """torch.cat along channels whose backward hands each part a dense channels-last gradient."""

    @staticmethod
    def forward(ctx, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        ctx.split = x1.shape[1]
        # The copy torch.cat(dim=1) makes, 4x faster: as a cat along the last dim of the (N, H, W, C) views (torch's
        # CPU cat of channels-last maps along C is slow). Written into `out`, which is no view (in-place ops follow).
        n, _, h, w = x1.shape
        out = torch.empty((n, x1.shape[1] + x2.shape[1], h, w), dtype=x1.dtype, device=x1.device,
                          memory_format=torch.channels_last)
        torch.cat([x1.permute(0, 2, 3, 1), x2.permute(0, 2, 3, 1)], dim=3, out=out.permute(0, 2, 3, 1))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cl = torch.channels_last
        return grad[:, : ctx.split].contiguous(memory_format=cl), grad[:, ctx.split:].contiguous(memory_format=cl)


def concat_ghost_maps(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """torch.cat([x1, x2], 1), the same numbers in every mode. In channels-last training the parts get dense
    gradients: otherwise each part's gradient is a strided slice of the concat's, on which the BatchNorm before the
    concat takes a slow channels-last backward (4x its dense time for 8 channels), and copying the slices costs
    less (Ghost-ResNet-56's step 1.3x faster in channels-last; docs/training.md). NCHW keeps the plain concat: its
    slices are planes, and copying them cost more than it saved."""
    if (torch.is_grad_enabled() and not is_graph_capture() and (x1.requires_grad or x2.requires_grad)
            and x1.dim() == 4 and x1.is_contiguous(memory_format=torch.channels_last) and not x1.is_contiguous()):
        return _ConcatDenseGrad.apply(x1, x2)
    return torch.cat([x1, x2], dim=1)


def merge_ghost_maps(module: nn.Module, x: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Concatenate intrinsic and ghost maps, cut to `module.out_chs`, and apply the DFC gate if the module has one."""
    out = concat_ghost_maps(x1, x2)
    if module.init_chs + module.new_chs != module.out_chs:
        out = out[:, : module.out_chs]
    return apply_dfc_gate(out, x, module.short_conv)


class GhostModule(nn.Module):
    """Ghost module: `primary_conv` makes ceil(out/s) intrinsic maps, `cheap_operation` makes s-1 ghosts of each.

    Args:
        in_chs, out_chs: channels in and out (any positive count; the concat is cut to `out_chs`).
        kernel_size, stride, dilation, padding: geometry of the primary convolution (padding defaults to "same").
        ratio: s >= 2.  dw_size: the cheap kernel d (odd).
        act_layer: activation class after both halves, or None for a linear module (the bottleneck's ghost2).
        cheap_op: "depthwise" (default), "pointwise", "group" or a factory (in, out, d, dilation) -> nn.Module.
        dfc: add GhostNetV2's DFC attention (`short_conv`) that gates the output.
    """

    #: Train as one autograd function where that applies (`ghostnet.layers.ghost_training.set_ghost_fusion`).
    fused_training = False

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        ratio: int = 2,
        dw_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        padding: Optional[int] = None,
        act_layer: LayerFactory = nn.ReLU,
        cheap_op: Union[str, CheapOpFactory] = "depthwise",
        dfc: bool = False,
    ) -> None:
        super().__init__()
        init_ghost_geometry(self, in_chs, out_chs, ratio, dw_size, kernel_size, stride, dilation)
        self.primary_conv = conv_bn(same_conv(in_chs, self.init_chs, kernel_size, stride, dilation, padding=padding),
                                    self.init_chs, make_act(act_layer))
        self.cheap_operation = conv_bn(resolve_cheap_op(cheap_op)(self.init_chs, self.new_chs, dw_size, dilation),
                                       self.new_chs, make_act(act_layer))
        self.short_conv = make_short_conv(in_chs, out_chs, kernel_size, stride) if dfc else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = ghost_training_spec(self, x)
        if spec is not None:  # channels-last CPU training: the same function in fewer passes
            return ghost_training_forward(self, x, spec)
        x1 = folded_forward(self.primary_conv, x)
        return merge_ghost_maps(self, x, x1, folded_forward(self.cheap_operation, x1))

    def extra_repr(self) -> str:
        dfc = self.short_conv is not None
        return f"in={self.in_chs}, out={self.out_chs}, s={self.ratio}, d={self.dw_size}, dfc={dfc}"
