"""ParameterNet's blocks: the Ghost module and bottleneck with dynamic convolutions (official key names).

In the official code (huawei-noah/Efficient-AI-Backbones `parameternet_pytorch/cv/parameternet.py`) the primary and
cheap convolutions of every Ghost module, both convolutions of a projection shortcut and the last 1x1 conv before
the head are `DynamicConv`s; the strided depthwise conv of a bottleneck and the SE block's convolutions stay
ordinary. The SE block takes the network's activation (Hardswish) where GhostNet's uses ReLU.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn

from .bottleneck import BottleneckLayout
from .dynamic_conv import DynamicConv2d
from .helpers import ConvBnAct, LayerFactory, conv_bn, make_act
from .squeeze_excite import SqueezeExcite


class DynamicConvBnAct(ConvBnAct):
    """Dynamic conv + BatchNorm + activation, keys `conv`, `bn1` (the official `ConvBnAct`)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, dilation: int = 1,
                 act_layer: LayerFactory = nn.Hardswish, num_experts: int = 4) -> None:
        super().__init__(in_chs, out_chs, kernel_size, stride, dilation, act_layer=act_layer,
                         conv_layer=partial(DynamicConv2d, num_experts=num_experts))


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
        self.init_chs = init_chs = math.ceil(out_chs / 2)
        self.primary_conv = conv_bn(DynamicConv2d(in_chs, init_chs, 1, num_experts=num_experts), init_chs,
                                    make_act(act_layer))
        self.cheap_operation = conv_bn(DynamicConv2d(init_chs, init_chs, dw_size, dilation=dilation, groups=init_chs,
                                                     num_experts=num_experts), init_chs, make_act(act_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        out = torch.cat([x1, self.cheap_operation(x1)], dim=1)
        return out if 2 * self.init_chs == self.out_chs else out[:, : self.out_chs]


class DynamicGhostBottleneck(BottleneckLayout):
    """ParameterNet's bottleneck: ghost1 -> [strided depthwise + BN] -> [SE] -> ghost2 (linear), plus a shortcut.

    The Ghost bottleneck's layout with dynamic Ghost modules and a projection shortcut of dynamic convs; the strided
    depthwise conv stays ordinary. `has_dw` keeps it and the projection shortcut when dilation replaces the stride
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
        ghost = partial(DynamicGhostModule, dilation=dilation, num_experts=num_experts)
        # DynamicConv2d pads "same" by default, as the official shortcut does.
        self._build_layout(in_chs, mid_chs, out_chs, partial(ghost, act_layer=act_layer),
                           partial(ghost, act_layer=None), dw_kernel_size, stride, dilation, se_ratio, has_dw,
                           se_layer, shortcut_conv=partial(DynamicConv2d, num_experts=num_experts))
