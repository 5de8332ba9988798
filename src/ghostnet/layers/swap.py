"""Ghost modules in place of ordinary convolutions: the building blocks that the Ghost twins (models/cifar.py,
models/resnet.py) and `ghostify()` (surgery/) share. A convolution becomes a *linear* GhostModule (no activation
inside) with the same channels and geometry, so every output shape stays the same."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .ghost import GhostModule


class OrderedGhostModule(GhostModule):
    """A GhostModule whose output channels are put in the order given by the buffer `channel_order`.

    `ghostify(init_from_weights=True)` uses it so that each filter copied from the original convolution keeps its
    channel position, and the layers after it still find every channel where they expect it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("channel_order", torch.arange(self.out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).index_select(1, self.channel_order)


def kaiming_init_(module: nn.Module) -> nn.Module:
    """He initialisation for every conv (fan-out per group, ReLU gain) and ones/zeros for every BatchNorm."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            # Counting fan-out per group keeps depthwise filters (the cheap operation) from starting near zero.
            fan_out = m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def unconvertible_reason(module: nn.Module) -> Optional[str]:
    """Why `module` cannot be replaced by a Ghost module at all, or None if it can."""
    if not isinstance(module, nn.Conv2d):
        return f"{type(module).__name__} is not an nn.Conv2d"
    if type(module).forward is not nn.Conv2d.forward:
        return (f"{type(module).__name__} overrides Conv2d.forward (e.g. dynamic 'same' padding), so its geometry "
                "cannot be copied")
    if module.groups != 1:
        return f"grouped or depthwise convolution (groups={module.groups}); Ghost modules replace dense convolutions"
    return None


def ghost_module_like(conv: nn.Conv2d, ratio: int = 2, dw_size: int = 3, ordered: bool = False) -> GhostModule:
    """A linear, He-initialised GhostModule with `conv`'s channels and geometry (so its output shape is the same)."""
    reason = unconvertible_reason(conv)
    if reason is not None:
        raise ValueError(f"cannot build a Ghost module like this convolution: {reason}")
    # The cheap operation follows a dilated primary conv (DeepLab-style networks); it has one dilation for both axes.
    dilation = conv.dilation[0] if conv.dilation[0] == conv.dilation[1] else 1
    cls = OrderedGhostModule if ordered else GhostModule
    ghost = cls(conv.in_channels, conv.out_channels, kernel_size=1, ratio=ratio, dw_size=dw_size,
                dilation=dilation, padding=0, act_layer=None)
    # Copy the geometry verbatim: non-square kernels, tuple or string padding and padding modes included.
    ghost.primary_conv[0] = nn.Conv2d(conv.in_channels, ghost.init_chs, conv.kernel_size, conv.stride, conv.padding,
                                      conv.dilation, bias=False, padding_mode=conv.padding_mode)
    kaiming_init_(ghost)
    return ghost.to(device=conv.weight.device, dtype=conv.weight.dtype)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule `name` (dotted path) is."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def replace_conv_bn(parent: nn.Module, conv_name: str, bn_name: str, ratio: int, dw_size: int) -> GhostModule:
    """Replace the pair parent.<conv_name> -> parent.<bn_name> by a linear Ghost module and an Identity."""
    ghost = ghost_module_like(getattr(parent, conv_name), ratio, dw_size)
    setattr(parent, conv_name, ghost)
    setattr(parent, bn_name, nn.Identity())
    return ghost
