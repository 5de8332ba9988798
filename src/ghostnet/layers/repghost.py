"""RepGhost (Chen et al. 2022): the Ghost module's feature reuse by re-parameterization instead of concatenation.

A RepGhost module keeps all of its channels in one path: a 1x1 conv (+BN, +ReLU) makes `out_chs` maps, a depthwise
d x d conv + BN of them is *added* to a BN of the same maps (the "identity" branch that replaces the Ghost module's
concat), and the sum goes through the ReLU. Both branches are linear until that ReLU, so `reparameterize()` folds the
BN branch into the depthwise conv (a centre-tap kernel) and the inference module has no add and no concat.

Key names are those of the official code and timm (`primary_conv.0/1`, `fusion_bn.0`, `cheap_operation.0/1`; after
fusion `cheap_operation` is a bare conv with bias, as timm's `switch_to_deploy()` leaves it), so checkpoints of
either form load unchanged.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn

from .bottleneck import BottleneckLayout
from .helpers import conv_bn, conv_from, fuse_conv_bn_weights, identity_kernel, make_act, same_conv
from .squeeze_excite import SqueezeExcite


class RepGhostModule(nn.Module):
    """RepGhost module: primary 1x1 conv -> (depthwise d x d conv + BN) + BN identity -> ReLU (or nothing).

    Args:
        in_chs, out_chs: channels; primary and cheap maps are both `out_chs` wide (no concat, no ratio).
        kernel_size, stride: of the primary conv.  dw_size, dilation: of the depthwise cheap conv.
        relu: ReLU after the primary conv and after the sum (False: the linear module ending a bottleneck).
        reparam: build the BN identity branch (False: the official "norep" ablation, a plain depthwise path).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        dw_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        relu: bool = True,
        reparam: bool = True,
    ) -> None:
        super().__init__()
        if in_chs < 1 or out_chs < 1:
            raise ValueError(f"RepGhostModule needs positive channel counts, got in_chs={in_chs}, out_chs={out_chs}")
        if dw_size % 2 == 0:
            raise ValueError(f"dw_size must be odd (the identity branch is its centre tap), got {dw_size}")
        self.in_chs, self.out_chs, self.dw_size = in_chs, out_chs, dw_size
        self.reparameterized = False
        self.primary_conv = conv_bn(same_conv(in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2),
                                    out_chs, make_act(nn.ReLU if relu else None))
        # A Sequential so that the key is `fusion_bn.0.*` as in the official code and timm; None once fused.
        self.fusion_bn: Optional[nn.Sequential] = nn.Sequential(nn.BatchNorm2d(out_chs)) if reparam else None
        self.cheap_operation: nn.Module = conv_bn(same_conv(out_chs, out_chs, dw_size, 1, dilation, groups=out_chs),
                                                  out_chs)
        self.relu = make_act(nn.ReLU if relu else None)  # in place: the sum (or fused conv output) has no other reader

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        if self.fusion_bn is not None:
            x2 = x2 + self.fusion_bn(x1)
        return self.relu(x2)

    @torch.no_grad()
    def equivalent_cheap_conv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the one depthwise conv equal to the cheap branch plus the BN identity branch."""
        conv, bn = self.cheap_operation[0], self.cheap_operation[1]
        weight, bias = fuse_conv_bn_weights(conv.weight, None, bn)
        if self.fusion_bn is not None:
            ident = identity_kernel(conv.out_channels, conv.groups, conv.kernel_size, conv.weight)
            w, b = fuse_conv_bn_weights(ident, None, self.fusion_bn[0])
            weight, bias = weight + w, bias + b
        return weight, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the depthwise BN and the BN identity branch into `cheap_operation`, a depthwise conv with bias.

        The primary conv's BN stays (as in timm's deploy form, so its checkpoints keep loading);
        `ghostnet.deploy.fuse` folds it afterwards. Uses the running statistics (eval-mode BN); a no-op when
        already fused.
        """
        if self.reparameterized:
            return
        weight, bias = self.equivalent_cheap_conv()
        self.cheap_operation = conv_from(self.cheap_operation[0], weight, bias)
        self.fusion_bn = None
        self.reparameterized = True


class RepGhostBottleneck(BottleneckLayout):
    """RepGhost bottleneck: ghost1 (ReLU) -> [strided depthwise + BN] -> [SE] -> ghost2 (linear), plus a shortcut.

    The Ghost bottleneck's layout with RepGhost modules. `has_dw` keeps the strided depthwise conv and the
    projection shortcut when dilation replaces the stride (`stride=1, dilation>1`), so checkpoints still load.
    """

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        se_ratio: float = 0.0,
        reparam: bool = True,
        has_dw: Optional[bool] = None,
        se_layer: Callable[..., nn.Module] = SqueezeExcite,
    ) -> None:
        super().__init__()
        ghost = partial(RepGhostModule, dilation=dilation, reparam=reparam)
        self._build_layout(in_chs, mid_chs, out_chs, partial(ghost, relu=True), partial(ghost, relu=False),
                           dw_kernel_size, stride, dilation, se_ratio, has_dw, se_layer)
