"""Small building blocks shared by every GhostNet variant."""
from __future__ import annotations

from typing import Callable, Optional, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

LayerFactory = Optional[Type[nn.Module]]
#: Builds a bias-free conv with "same" padding from (in_chs, out_chs, kernel_size, stride=, dilation=, groups=):
#: `same_conv`, or ParameterNet's `DynamicConv2d` (whose padding defaults to "same").
ConvFactory = Callable[..., nn.Module]


def make_divisible(v: float, divisor: int = 4, min_value: Optional[int] = None, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of `divisor`, never dropping more than 10% (official `_make_divisible`)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the spatial size of an odd kernel at stride 1."""
    return dilation * (kernel_size - 1) // 2


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution along one axis (PyTorch's floor rule)."""
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise ValueError(f"a {kernel}-tap kernel (stride {stride}, padding {padding}, dilation {dilation}) "
                         f"leaves no output from size {size}")
    return out


def same_conv(in_chs: int, out_chs: int, kernel_size: Union[int, tuple[int, int]], stride: int = 1,
              dilation: int = 1, groups: int = 1, padding: Union[None, int, tuple[int, int]] = None) -> nn.Conv2d:
    """A bias-free Conv2d, as every conv followed by a batch norm here is; padding defaults to "same" (odd kernel)."""
    padding = same_padding(kernel_size, dilation) if padding is None else padding
    return nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False)


def conv_bn(conv: nn.Module, out_chs: int, *after: nn.Module) -> nn.Sequential:
    """`conv`, a BatchNorm2d of its `out_chs` maps, then `after` (an activation), as one Sequential.

    The official code's layout: keys `.0.*` (conv) and `.1.*` (BN), so checkpoints load unchanged.
    """
    return nn.Sequential(conv, nn.BatchNorm2d(out_chs), *after)


def make_act(act_layer: LayerFactory) -> nn.Module:
    """Instantiate an activation class (in place where it accepts `inplace`); None gives Identity."""
    if act_layer is None or act_layer is nn.Identity:
        return nn.Identity()
    try:
        return act_layer(inplace=True)
    except TypeError:
        return act_layer()


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """relu6(x + 3) / 6, the gate of the official SE block."""
    return F.relu6(x + 3.0) / 6.0


class HardSigmoid(nn.Module):
    """Module form of `hard_sigmoid` (identical to torch's Hardsigmoid, kept for clarity of the official code)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hard_sigmoid(x)


class ConvBnAct(nn.Module):
    """Conv + BatchNorm + activation with timm's key names (`conv`, `bn1`); `conv_layer` makes the conv."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        act_layer: LayerFactory = nn.ReLU,
        conv_layer: ConvFactory = same_conv,
    ) -> None:
        super().__init__()
        self.conv = conv_layer(in_chs, out_chs, kernel_size, stride=stride, dilation=dilation, groups=groups)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = make_act(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv(x)))


@torch.no_grad()
def fuse_conv_bn_weights(conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor], bn: nn.BatchNorm2d):
    """Return (weight, bias) of one conv equal to conv followed by `bn` in eval mode."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std if bn.affine else 1.0 / std
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv_bias if conv_bias is not None else torch.zeros_like(bn.running_mean)
    weight = conv_weight * scale.reshape(-1, 1, 1, 1)
    return weight, (bias - bn.running_mean) * scale + shift


def conv_from(template: nn.Conv2d, weight: torch.Tensor, bias: Optional[torch.Tensor],
              groups: Optional[int] = None) -> nn.Conv2d:
    """A new Conv2d with `template`'s kernel geometry and the given weight and bias; the channel counts follow from
    the weight's shape and `groups` (default: the template's)."""
    groups = template.groups if groups is None else groups
    conv = nn.Conv2d(
        weight.shape[1] * groups, weight.shape[0], template.kernel_size, template.stride,
        template.padding, template.dilation, groups, bias=bias is not None,
        padding_mode=template.padding_mode, device=weight.device, dtype=weight.dtype,
    )
    conv.weight.data.copy_(weight)
    if bias is not None:
        conv.bias.data.copy_(bias)
    return conv


def bias_or_zeros(conv: nn.Conv2d) -> torch.Tensor:
    """The conv's bias, or zeros where it has none."""
    return conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)


def identity_kernel(channels: int, groups: int, kernel_size: Union[int, tuple[int, int]],
                    like: torch.Tensor) -> torch.Tensor:
    """Conv weight that maps each channel to itself (grouped conv with `groups` groups, 'same' padding)."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    in_per_group = channels // groups
    kernel = torch.zeros(channels, in_per_group, kh, kw, dtype=like.dtype, device=like.device)
    for c in range(channels):
        kernel[c, c % in_per_group, kh // 2, kw // 2] = 1.0
    return kernel


ActFactory = Callable[..., nn.Module]
