"""Ghost bottleneck (v1/v2): ghost1 -> [strided depthwise] -> [SE] -> ghost2, plus a shortcut."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from .ghost import GhostModule
from .helpers import LayerFactory, same_padding
from .squeeze_excite import SqueezeExcite


def make_shortcut(in_chs: int, out_chs: int, kernel_size: int, stride: int, dilation: int,
                  needs_projection: bool) -> nn.Sequential:
    """Identity (empty Sequential) or depthwise k x k (stride s) + BN + 1x1 + BN, as in the official code."""
    if not needs_projection:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_chs, in_chs, kernel_size, stride, same_padding(kernel_size, dilation),
                  dilation=dilation, groups=in_chs, bias=False),
        nn.BatchNorm2d(in_chs),
        nn.Conv2d(in_chs, out_chs, 1, bias=False),
        nn.BatchNorm2d(out_chs),
    )


class GhostBottleneck(nn.Module):
    """GhostNet v1/v2 bottleneck with the official key names.

    `has_dw` says whether the block owns the strided depthwise conv (True when its table stride is > 1); it stays
    True when dilation replaces the stride (`stride=1, dilation>1`) so that weights keep loading.
    """

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
        has_dw = stride > 1 if has_dw is None else has_dw
        self.stride = stride
        self.ghost1 = GhostModule(in_chs, mid_chs, ratio=ratio, dw_size=dw_size, dilation=dilation,
                                  act_layer=act_layer, dfc=dfc)
        if has_dw:
            self.conv_dw = nn.Conv2d(mid_chs, mid_chs, dw_kernel_size, stride, same_padding(dw_kernel_size, dilation),
                                     dilation=dilation, groups=mid_chs, bias=False)
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        else:
            self.conv_dw = None
            self.bn_dw = None
        self.se = se_layer(mid_chs, rd_ratio=se_ratio) if se_ratio and se_ratio > 0 else None
        self.ghost2 = GhostModule(mid_chs, out_chs, ratio=ratio, dw_size=dw_size, dilation=dilation, act_layer=None)
        self.shortcut = make_shortcut(in_chs, out_chs, dw_kernel_size, stride, dilation,
                                      needs_projection=in_chs != out_chs or has_dw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.ghost1(x)
        if self.conv_dw is not None:
            x = self.bn_dw(self.conv_dw(x))
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        return x + self.shortcut(shortcut)
