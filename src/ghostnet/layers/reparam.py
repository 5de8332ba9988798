"""GhostNetV3's re-parameterizable training form and its in-place fusion into one conv per branch group.

Each conv of the inference form is trained as the sum of several Conv+BN branches (MobileOne style): k x k
branches, a 1x1 "scale" branch and, where shapes allow, a BN-only identity branch. Because all branches are
linear until the shared activation, they sum to one conv with bias. Key names follow the official code / timm.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bottleneck import BottleneckLayout
from .ghost import init_ghost_geometry, make_short_conv, merge_ghost_maps
from .helpers import ConvBnAct, LayerFactory, conv_from, fuse_conv_bn_weights, identity_kernel, make_act
from .squeeze_excite import SqueezeExcite


def _linear_branch(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                   groups: int = 1) -> ConvBnAct:
    """One Conv+BN training branch (keys `conv`, `bn1` as in the official code), linear until the shared act."""
    return ConvBnAct(in_chs, out_chs, kernel_size, stride, dilation, groups, act_layer=None)


@torch.no_grad()
def fuse_branches(convs: Iterable[ConvBnAct], scale: Optional[ConvBnAct], skip: Optional[nn.BatchNorm2d],
                  kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of k x k Conv+BN branches, a 1x1 Conv+BN (padded to k x k) and a BN identity, as one (weight, bias)."""
    convs = list(convs)
    weight, bias = fuse_conv_bn_weights(convs[0].conv.weight, None, convs[0].bn1)
    for branch in convs[1:]:
        w, b = fuse_conv_bn_weights(branch.conv.weight, None, branch.bn1)
        weight, bias = weight + w, bias + b
    if scale is not None:
        w, b = fuse_conv_bn_weights(scale.conv.weight, None, scale.bn1)
        pad = kernel_size // 2
        weight, bias = weight + F.pad(w, [pad, pad, pad, pad]), bias + b
    if skip is not None:
        conv = convs[0].conv
        ident = identity_kernel(conv.out_channels, conv.groups, kernel_size, weight)
        w, b = fuse_conv_bn_weights(ident, None, skip)
        weight, bias = weight + w, bias + b
    return weight, bias


class GhostModuleV3(nn.Module):
    """Ghost module in GhostNetV3's training form; `reparameterize()` turns it into a plain Ghost module in place."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        ratio: int = 2,
        dw_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        act_layer: LayerFactory = nn.ReLU,
        dfc: bool = False,
        num_conv_branches: int = 3,
    ) -> None:
        super().__init__()
        init_ghost_geometry(self, in_chs, out_chs, ratio, dw_size, kernel_size, stride, dilation)
        if num_conv_branches < 1:
            raise ValueError(f"num_conv_branches must be >= 1, got {num_conv_branches}")
        self.reparameterized = False
        # Placeholders of the inference form: parameter-free until reparameterize() fills them.
        self.primary_conv: nn.Module = nn.Identity()
        self.cheap_operation: nn.Module = nn.Identity()
        self.primary_rpr_conv = nn.ModuleList(
            _linear_branch(in_chs, self.init_chs, kernel_size, stride, dilation) for _ in range(num_conv_branches))
        self.primary_activation = make_act(act_layer)
        # The BN identity branch only exists where ghost maps and intrinsic maps match one to one (s = 2).
        self.cheap_rpr_skip = nn.BatchNorm2d(self.init_chs) if self.new_chs == self.init_chs else None
        self.cheap_rpr_conv = nn.ModuleList(
            _linear_branch(self.init_chs, self.new_chs, dw_size, 1, dilation, groups=self.init_chs)
            for _ in range(num_conv_branches))
        self.cheap_rpr_scale = _linear_branch(self.init_chs, self.new_chs, 1, groups=self.init_chs)
        self.cheap_activation = make_act(act_layer)
        self.short_conv = make_short_conv(in_chs, out_chs, kernel_size, stride) if dfc else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparameterized:
            x1 = self.primary_conv(x)
            x2 = self.cheap_operation(x1)
        else:
            x1 = self.primary_activation(sum(branch(x) for branch in self.primary_rpr_conv))
            x2 = self.cheap_rpr_scale(x1)
            if self.cheap_rpr_skip is not None:
                x2 = x2 + self.cheap_rpr_skip(x1)
            for branch in self.cheap_rpr_conv:
                x2 = x2 + branch(x1)
            x2 = self.cheap_activation(x2)
        return merge_ghost_maps(self, x, x1, x2)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fuse every branch into `primary_conv` / `cheap_operation` (Conv with bias + activation), in place."""
        if self.reparameterized:
            return
        template = self.primary_rpr_conv[0].conv
        w, b = fuse_branches(self.primary_rpr_conv, None, None, template.kernel_size[0])
        self.primary_conv = nn.Sequential(conv_from(template, w, b), self.primary_activation)
        template = self.cheap_rpr_conv[0].conv
        w, b = fuse_branches(self.cheap_rpr_conv, self.cheap_rpr_scale, self.cheap_rpr_skip, self.dw_size)
        self.cheap_operation = nn.Sequential(conv_from(template, w, b), self.cheap_activation)
        for name in ("primary_rpr_conv", "primary_activation", "cheap_rpr_skip", "cheap_rpr_conv",
                     "cheap_rpr_scale", "cheap_activation"):
            delattr(self, name)
        self.reparameterized = True


class GhostBottleneckV3(BottleneckLayout):
    """GhostNetV3 bottleneck: v1/v2 layout with re-parameterizable ghost modules and strided depthwise conv.

    The depthwise part is trained as k x k branches plus a 1x1 scale branch (`dw_rpr_conv`, `dw_rpr_scale`);
    `reparameterize()` fuses them into `conv_dw` (with bias; `bn_dw` becomes an Identity).
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
        num_conv_branches: int = 3,
        se_layer: Callable[..., nn.Module] = SqueezeExcite,
    ) -> None:
        super().__init__()
        self.dw_kernel_size = dw_kernel_size
        self.num_conv_branches = num_conv_branches
        self.reparameterized = False
        ghost = partial(GhostModuleV3, dilation=dilation, num_conv_branches=num_conv_branches)
        self._build_layout(in_chs, mid_chs, out_chs, partial(ghost, act_layer=act_layer, dfc=dfc),
                           partial(ghost, act_layer=None), dw_kernel_size, stride, dilation, se_ratio, has_dw, se_layer)

    def _build_depthwise(self, mid_chs: int, kernel_size: int, stride: int, dilation: int, has_dw: bool) -> None:
        """The training branches; `conv_dw` / `bn_dw` stay None until `reparameterize()` fills them."""
        self.conv_dw: Optional[nn.Module] = None
        self.bn_dw: Optional[nn.Module] = None
        if has_dw:
            self.dw_rpr_conv = nn.ModuleList(
                _linear_branch(mid_chs, mid_chs, kernel_size, stride, dilation, groups=mid_chs)
                for _ in range(self.num_conv_branches))
            self.dw_rpr_scale = _linear_branch(mid_chs, mid_chs, 1, stride, groups=mid_chs)
        else:
            self.dw_rpr_conv = None
            self.dw_rpr_scale = None

    def forward_depthwise(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_dw is not None:  # fused: one conv with bias
            return self.conv_dw(x)
        if self.dw_rpr_conv is None:
            return x
        y = self.dw_rpr_scale(x)
        for branch in self.dw_rpr_conv:
            y = y + branch(x)
        return y

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fuse the depthwise branches into `conv_dw` (with bias; `bn_dw` becomes Identity) and both ghost modules."""
        self.ghost1.reparameterize()
        self.ghost2.reparameterize()
        if self.reparameterized:
            return
        if self.dw_rpr_conv is not None:
            template = self.dw_rpr_conv[0].conv
            w, b = fuse_branches(self.dw_rpr_conv, self.dw_rpr_scale, None, self.dw_kernel_size)
            self.conv_dw = conv_from(template, w, b)
            self.bn_dw = nn.Identity()
        del self.dw_rpr_conv, self.dw_rpr_scale
        self.dw_rpr_conv = self.dw_rpr_scale = None
        self.reparameterized = True


def reparameterize_model(model: nn.Module) -> nn.Module:
    """Fuse every re-parameterizable module of `model` in place and return it."""
    for module in list(model.modules()):
        if module is not model and hasattr(module, "reparameterize") and callable(module.reparameterize):
            module.reparameterize()
    return model
