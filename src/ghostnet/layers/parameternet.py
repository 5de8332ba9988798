"""ParameterNet's blocks: the Ghost module and bottleneck with dynamic convolutions (official key names).

In the official code (huawei-noah/Efficient-AI-Backbones `parameternet_pytorch/cv/parameternet.py`) the primary and
cheap convolutions of every Ghost module, both convolutions of a projection shortcut and the last 1x1 conv before
the head are `DynamicConv`s; the strided depthwise conv of a bottleneck and the SE block's convolutions stay
ordinary. The SE block takes the network's activation (Hardswish) where GhostNet's uses ReLU.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn

from .dynamic_conv import DynamicConv2d
from .helpers import LayerFactory, make_act, same_padding
from .squeeze_excite import SqueezeExcite


class DynamicConvBnAct(nn.Module):
    """Dynamic conv + BatchNorm + activation, keys `conv`, `bn1` (the official `ConvBnAct`)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, dilation: int = 1,
                 act_layer: LayerFactory = nn.Hardswish, num_experts: int = 4) -> None:
        super().__init__()
        self.conv = DynamicConv2d(in_chs, out_chs, kernel_size, stride, same_padding(kernel_size, dilation), dilation,
                                  num_experts=num_experts)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = make_act(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv(x)))


class DynamicGhostModule(nn.Module):
    """Ghost module (s = 2) whose primary 1x1 conv and depthwise d x d cheap conv are dynamic convolutions.

    ceil(out/2) intrinsic maps, as many ghost maps, concatenated and cut to `out_chs`, as in GhostNet.
    """

    def __init__(self, in_chs: int, out_chs: int, dw_size: int = 3, dilation: int = 1,
                 act_layer: LayerFactory = nn.Hardswish, num_experts: int = 4) -> None:
        super().__init__()
        if in_chs < 1 or out_chs < 1:
            raise ValueError(f"channel counts must be positive, got in_chs={in_chs}, out_chs={out_chs}")
        if dw_size < 1 or dw_size % 2 == 0:
            raise ValueError(f"cheap kernel size d must be a positive odd integer, got {dw_size}")
        self.out_chs = out_chs
        init_chs = math.ceil(out_chs / 2)
        self.primary_conv = nn.Sequential(
            DynamicConv2d(in_chs, init_chs, 1, num_experts=num_experts),
            nn.BatchNorm2d(init_chs),
            make_act(act_layer),
        )
        self.cheap_operation = nn.Sequential(
            DynamicConv2d(init_chs, init_chs, dw_size, 1, same_padding(dw_size, dilation), dilation, groups=init_chs,
                          num_experts=num_experts),
            nn.BatchNorm2d(init_chs),
            make_act(act_layer),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        out = torch.cat([x1, self.cheap_operation(x1)], dim=1)
        return out if out.shape[1] == self.out_chs else out[:, : self.out_chs]


def make_dynamic_shortcut(in_chs: int, out_chs: int, kernel_size: int, stride: int, dilation: int,
                          needs_projection: bool, num_experts: int = 4) -> nn.Sequential:
    """Identity (empty Sequential) or dynamic depthwise k x k (stride s) + BN + dynamic 1x1 + BN."""
    if not needs_projection:
        return nn.Sequential()
    return nn.Sequential(
        DynamicConv2d(in_chs, in_chs, kernel_size, stride, same_padding(kernel_size, dilation), dilation,
                      groups=in_chs, num_experts=num_experts),
        nn.BatchNorm2d(in_chs),
        DynamicConv2d(in_chs, out_chs, 1, num_experts=num_experts),
        nn.BatchNorm2d(out_chs),
    )


class DynamicGhostBottleneck(nn.Module):
    """ParameterNet's bottleneck: ghost1 -> [strided depthwise + BN] -> [SE] -> ghost2 (linear), plus a shortcut.

    `has_dw` keeps the strided depthwise conv and the projection shortcut when dilation replaces the stride
    (`stride=1, dilation>1`), so that weights keep loading.
    """

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        act_layer: LayerFactory = nn.Hardswish,
        se_ratio: float = 0.0,
        has_dw: Optional[bool] = None,
        num_experts: int = 4,
        se_layer: Callable[..., nn.Module] = SqueezeExcite,
    ) -> None:
        super().__init__()
        has_dw = stride > 1 if has_dw is None else has_dw
        self.stride = stride
        self.ghost1 = DynamicGhostModule(in_chs, mid_chs, dilation=dilation, act_layer=act_layer,
                                         num_experts=num_experts)
        if has_dw:
            self.conv_dw: Optional[nn.Conv2d] = nn.Conv2d(
                mid_chs, mid_chs, dw_kernel_size, stride, same_padding(dw_kernel_size, dilation), dilation=dilation,
                groups=mid_chs, bias=False)
            self.bn_dw: Optional[nn.Module] = nn.BatchNorm2d(mid_chs)
        else:
            self.conv_dw = self.bn_dw = None
        self.se = se_layer(mid_chs, rd_ratio=se_ratio) if se_ratio and se_ratio > 0 else None
        self.ghost2 = DynamicGhostModule(mid_chs, out_chs, dilation=dilation, act_layer=None, num_experts=num_experts)
        self.shortcut = make_dynamic_shortcut(in_chs, out_chs, dw_kernel_size, stride, dilation,
                                              needs_projection=in_chs != out_chs or has_dw, num_experts=num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.ghost1(x)
        if self.conv_dw is not None:
            x = self.bn_dw(self.conv_dw(x))
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        return x + self.shortcut(shortcut)
