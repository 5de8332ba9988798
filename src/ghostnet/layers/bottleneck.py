"""Ghost bottleneck (v1/v2): ghost1 -> [strided depthwise] -> [SE] -> ghost2, plus a shortcut.

`BottleneckLayout` is that layout once, for every bottleneck of the family (GhostNet v1/v2/v3, RepGhostNet,
ParameterNet): each names its two modules, the convolution of its projection shortcut and, for v3, its depthwise
part; the attribute names (timm's and the official code's keys) and the forward are the layout's.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn

from .ghost import GhostModule
from .helpers import ConvFactory, LayerFactory, conv_bn, same_conv
from .squeeze_excite import SqueezeExcite

#: Builds a bottleneck's ghost1 or ghost2 from (in_chs, out_chs).
ModuleFactory = Callable[[int, int], nn.Module]


def make_shortcut(in_chs: int, out_chs: int, kernel_size: int, stride: int, dilation: int,
                  needs_projection: bool, conv_layer: ConvFactory = same_conv) -> nn.Sequential:
    """Identity (empty Sequential) or depthwise k x k (stride s) + BN + 1x1 + BN, as in the official code.

    `conv_layer` makes the two convolutions (ParameterNet's are dynamic).
    """
    if not needs_projection:
        return nn.Sequential()
    return nn.Sequential(
        *conv_bn(conv_layer(in_chs, in_chs, kernel_size, stride=stride, dilation=dilation, groups=in_chs), in_chs),
        *conv_bn(conv_layer(in_chs, out_chs, 1), out_chs),
    )


class BottleneckLayout(nn.Module):
    """ghost1 -> [strided depthwise conv + BN] -> [SE] -> ghost2, plus a shortcut: what the family's bottlenecks share.

    A subclass calls `super().__init__()`, sets what its parts need, then `_build_layout(...)`, which creates the
    parts in the official order (so a seeded model gets the same initial weights as the official code's).
    `has_dw` says whether the block owns the strided depthwise conv (True when its table stride is > 1); it stays
    True when dilation replaces the stride (`stride=1, dilation>1`) so that weights keep loading.
    """

    def _build_layout(self, in_chs: int, mid_chs: int, out_chs: int, ghost1: ModuleFactory, ghost2: ModuleFactory,
                      dw_kernel_size: int, stride: int, dilation: int, se_ratio: float, has_dw: Optional[bool],
                      se_layer: Callable[..., nn.Module], shortcut_conv: ConvFactory = same_conv) -> None:
        has_dw = stride > 1 if has_dw is None else has_dw
        self.stride = stride
        self.ghost1 = ghost1(in_chs, mid_chs)
        self._build_depthwise(mid_chs, dw_kernel_size, stride, dilation, has_dw)
        self.se = se_layer(mid_chs, rd_ratio=se_ratio) if se_ratio and se_ratio > 0 else None
        self.ghost2 = ghost2(mid_chs, out_chs)
        self.shortcut = make_shortcut(in_chs, out_chs, dw_kernel_size, stride, dilation,
                                      needs_projection=in_chs != out_chs or has_dw, conv_layer=shortcut_conv)

    def _build_depthwise(self, mid_chs: int, kernel_size: int, stride: int, dilation: int, has_dw: bool) -> None:
        """`conv_dw` and `bn_dw` (plain attributes set to None where the block has no depthwise conv)."""
        if has_dw:
            self.conv_dw: Optional[nn.Module] = same_conv(mid_chs, mid_chs, kernel_size, stride, dilation,
                                                          groups=mid_chs)
            self.bn_dw: Optional[nn.Module] = nn.BatchNorm2d(mid_chs)
        else:
            self.conv_dw = self.bn_dw = None

    def forward_depthwise(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.conv_dw is None else self.bn_dw(self.conv_dw(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.forward_depthwise(self.ghost1(x))
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        return x + self.shortcut(shortcut)


class GhostBottleneck(BottleneckLayout):
    """GhostNet v1/v2 bottleneck with the official key names (ghost1 with the activation and DFC, ghost2 linear)."""

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        act_layer: LayerFactory = nn.ReLU,
        se_ratio: float = 0.0,
        dfc: bool = False,
        has_dw: Optional[bool] = None,
        ratio: int = 2,
        dw_size: int = 3,
        se_layer: Callable[..., nn.Module] = SqueezeExcite,
    ) -> None:
        super().__init__()
        ghost = partial(GhostModule, ratio=ratio, dw_size=dw_size, dilation=dilation)
        self._build_layout(in_chs, mid_chs, out_chs, partial(ghost, act_layer=act_layer, dfc=dfc),
                           partial(ghost, act_layer=None), dw_kernel_size, stride, dilation, se_ratio, has_dw, se_layer)
