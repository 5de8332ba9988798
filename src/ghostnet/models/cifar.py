"""CIFAR networks of the GhostNet paper's Table 3 and their Ghost twins.

- ResNet-20/32/44/56/110: the three-stage CIFAR ResNet of He et al. (2016, section 4.2): a 3x3 stem with 16
  channels, 3 stages of n basic blocks with 16/32/64 channels at 32/16/8 pixels, global pooling and a linear
  classifier, depth = 6n + 2. Shortcuts are option A (identity; stride-2 subsampling and zero channels when the
  shape changes), which is what He et al. used on CIFAR and gives the paper's 0.85M parameters for ResNet-56;
  option B (1x1 conv + BN projections) is available with `shortcut="B"`.
- VGG-16 in the CIFAR form of the pruning papers the GhostNet paper compares with (Li et al., "Pruning Filters for
  Efficient ConvNets", 2017): 13 conv 3x3 + BN + ReLU layers, 5 max-pools, then Linear 512-512, BN, ReLU and
  Linear 512-classes. With this classifier both VGG-16 (15.0M / 313M) and every Ghost-VGG-16 of the paper's
  ablation (s = 2..5, d = 1..7) come out at the paper's figures.

A Ghost twin replaces every convolution after the stem, and the BN that follows it, by a linear GhostModule
(which carries its own BNs) and an `nn.Identity`; the ReLUs stay where they were. This is exactly what
`ghostify()` does to the plain network, so the two have the same structure and state_dict keys.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..constants import CIFAR10_MEAN, CIFAR10_STD
from ..layers.swap import kaiming_init_
from ..layers import GhostModule
from ..layers.checkpointing import run_stage
from .registry import register_model

#: The data config of every CIFAR model: 32x32 inputs used as they are, CIFAR-10 statistics, 10 classes.
CIFAR_CFG = dict(input_size=(3, 32, 32), crop_pct=1.0, interpolation="bilinear", mean=CIFAR10_MEAN,
                 std=CIFAR10_STD, num_classes=10, first_conv="conv1", classifier="fc")

CIFAR_RESNET_DEPTHS = (20, 32, 44, 56, 110)
#: Parameters of the plain CIFAR ResNets as published (He et al. 2016, Table 6).
CIFAR_RESNET_PARAMS = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6}
RESNET_STAGE_CHANNELS = (16, 32, 64)
SHORTCUTS = ("A", "B")

#: The VGG-16 feature table: conv widths, "M" for a 2x2 max-pool.
VGG16_CFG: tuple[Union[int, str], ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                          512, 512, 512, "M")

#: Builds the (conv, norm) pair of a layer from (in_chs, out_chs, kernel_size, stride).
ConvBnFactory = Callable[[int, int, int, int], tuple[nn.Module, nn.Module]]


def plain_conv_bn(in_chs: int, out_chs: int, kernel_size: int, stride: int) -> tuple[nn.Module, nn.Module]:
    """An ordinary conv (no bias, "same" padding) and its BatchNorm."""
    return (nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_chs))


def ghost_conv_bn(ratio: int = 2, dw_size: int = 3) -> ConvBnFactory:
    """A factory of linear Ghost modules (BN inside) with an Identity where the BN was."""

    def make(in_chs: int, out_chs: int, kernel_size: int, stride: int) -> tuple[nn.Module, nn.Module]:
        return (GhostModule(in_chs, out_chs, kernel_size, ratio=ratio, dw_size=dw_size, stride=stride,
                            act_layer=None), nn.Identity())

    return make


def conv_bn_factory(ratio: Optional[int], dw_size: int) -> ConvBnFactory:
    """Plain conv + BN when `ratio` is None, else Ghost modules with s = ratio and d = dw_size."""
    return plain_conv_bn if ratio is None else ghost_conv_bn(ratio, dw_size)


def check_input(x: torch.Tensor, in_chans: int, min_size: int = 1) -> None:
    """Raise a clear ValueError for an input that is not (N, in_chans, H, W) with H, W >= min_size."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected input of shape (N, {in_chans}, H, W), got {tuple(x.shape)}")
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f"input {tuple(x.shape[-2:])} is too small: this network needs at least "
                         f"{min_size}x{min_size} pixels")


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by the stride and append zero channels (no parameters)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = out_chs - in_chs, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # Zero channels split around the original ones, as in the reference CIFAR implementations.
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class CifarBasicBlock(nn.Module):
    """conv3x3 - BN - ReLU - conv3x3 - BN, plus the shortcut, then ReLU."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, conv_bn: ConvBnFactory, shortcut: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_chs, out_chs, 3, stride)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv_bn(out_chs, out_chs, 3, 1)
        if stride == 1 and in_chs == out_chs:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_chs, out_chs, stride)
        else:
            self.shortcut = nn.Sequential(*conv_bn(in_chs, out_chs, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))

    @torch.no_grad()
    def zero_init_last_bn(self) -> None:
        """Zero the scale of the residual branch's last batch norm(s): the branch then outputs exactly zero."""
        last = [self.bn2] if isinstance(self.bn2, nn.BatchNorm2d) else [
            m for m in self.conv2.modules() if isinstance(m, nn.BatchNorm2d)]  # a Ghost module: both halves' BNs
        for bn in last:
            bn.weight.zero_()


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (depth 6n+2), or its Ghost twin when `ratio` is given.

    Args:
        depth: 20, 32, 44, 56, 110 or any 6n + 2.
        num_classes, in_chans: classifier outputs and input channels.
        shortcut: "A" (identity / zero padding, He et al.'s CIFAR choice) or "B" (1x1 projections).
        ratio, dw_size: s and d of the Ghost modules; ratio=None builds the plain network.
        zero_init_last_bn: start every residual branch at zero (the last BN's scale, or in a Ghost twin the scales
            of the last Ghost module's two BNs), so that each block begins as its shortcut (Goyal et al., 2017).
            Off by default, as in He et al. and the paper; it steadies the first steps of short schedules.
    """

    def __init__(self, depth: int = 56, num_classes: int = 10, in_chans: int = 3, shortcut: str = "A",
                 ratio: Optional[int] = None, dw_size: int = 3, zero_init_last_bn: bool = False) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        if num_classes < 1 or in_chans < 1:
            raise ValueError(f"num_classes and in_chans must be >= 1, got {num_classes} and {in_chans}")
        self.depth, self.in_chans, self.num_classes = depth, in_chans, num_classes
        self.grad_checkpointing = False
        self.ratio, self.dw_size = ratio, dw_size
        conv_bn = conv_bn_factory(ratio, dw_size)
        blocks_per_stage = (depth - 2) // 6

        # The stem stays an ordinary convolution in the twin too (ghostify's default; 0.05% of the MACs).
        chs = RESNET_STAGE_CHANNELS[0]
        self.conv1, self.bn1 = plain_conv_bn(in_chans, chs, 3, 1)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        for i, out_chs in enumerate(RESNET_STAGE_CHANNELS):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(CifarBasicBlock(chs, out_chs, stride, conv_bn, shortcut))
                chs = out_chs
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = chs
        self.fc = nn.Linear(chs, num_classes)
        kaiming_init_(self)
        if zero_init_last_bn:
            for block in self.modules():
                if isinstance(block, CifarBasicBlock):
                    block.zero_init_last_bn()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass instead of storing them (see GhostNet's)."""
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 64-channel map before pooling."""
        check_input(x, self.in_chans)
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3):
            x = run_stage(stage, x, self.grad_checkpointing)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.forward_features(x)), 1))


class CifarVGG(nn.Module):
    """VGG with BN for CIFAR (Li et al.'s form of VGG-16 by default), or its Ghost twin when `ratio` is given.

    Args:
        cfg: conv widths and "M" (max-pool) entries; VGG16_CFG gives the 13-conv VGG-16.
        num_classes, in_chans: classifier outputs and input channels.
        ratio, dw_size: s and d of the Ghost modules; ratio=None builds the plain network.
    """

    def __init__(self, cfg: Sequence[Union[int, str]] = VGG16_CFG, num_classes: int = 10, in_chans: int = 3,
                 ratio: Optional[int] = None, dw_size: int = 3) -> None:
        super().__init__()
        if num_classes < 1 or in_chans < 1:
            raise ValueError(f"num_classes and in_chans must be >= 1, got {num_classes} and {in_chans}")
        if not cfg or not isinstance(cfg[0], int) or any(v != "M" and not isinstance(v, int) for v in cfg):
            raise ValueError(f"cfg must list conv widths (int) and 'M' entries, starting with a width; got {cfg}")
        self.in_chans, self.num_classes = in_chans, num_classes
        self.ratio, self.dw_size = ratio, dw_size
        conv_bn = conv_bn_factory(ratio, dw_size)
        layers: list[nn.Module] = []
        chs = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            # The first conv is the stem and stays ordinary in the twin (ghostify's default).
            layers.extend((plain_conv_bn if not layers else conv_bn)(chs, v, 3, 1))
            layers.append(nn.ReLU(inplace=True))
            chs = v
        self.features = nn.Sequential(*layers)
        self.min_input_size = 2 ** sum(v == "M" for v in cfg)
        self.pool = nn.AdaptiveAvgPool2d(1)  # a no-op at 32x32; lets larger inputs through
        self.num_features = chs
        self.classifier = nn.Sequential(nn.Linear(chs, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                        nn.Linear(512, num_classes))
        kaiming_init_(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map before pooling."""
        check_input(x, self.in_chans, self.min_input_size)
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.forward_features(x)), 1))


def _register_resnets(depth: int) -> None:
    """Register resnet<depth>_cifar and ghost_resnet<depth>_cifar."""

    def plain(**kwargs: Any) -> CifarResNet:
        return CifarResNet(depth, **kwargs)

    def ghost(ratio: int = 2, dw_size: int = 3, **kwargs: Any) -> CifarResNet:
        return CifarResNet(depth, ratio=ratio, dw_size=dw_size, **kwargs)

    params = CIFAR_RESNET_PARAMS[depth] / 1e6
    plain.__doc__ = f"ResNet-{depth} for CIFAR, option-A shortcuts (He et al.: {params:g}M params)."
    ghost.__doc__ = f"Ghost-ResNet-{depth} for CIFAR: every conv after the stem a Ghost module (s=2, d=3 default)."
    if depth == 56:
        plain.__doc__ = "ResNet-56 for CIFAR, option-A shortcuts (paper: 0.85M params, 125M MACs, 93.0%)."
        ghost.__doc__ = "Ghost-ResNet-56 for CIFAR, s=2, d=3 (paper: 0.43M params, 63M MACs, 92.7%)."
    register_model(f"resnet{depth}_cifar", skeleton="cifar_resnet", **CIFAR_CFG)(plain)
    register_model(f"ghost_resnet{depth}_cifar", skeleton="cifar_resnet", **CIFAR_CFG)(ghost)


for _depth in CIFAR_RESNET_DEPTHS:
    _register_resnets(_depth)

_VGG_CFG = dict(CIFAR_CFG, first_conv="features.0", classifier="classifier.3")


@register_model(skeleton="vgg", **_VGG_CFG)
def vgg16_cifar(**kwargs: Any) -> CifarVGG:
    """VGG-16 for CIFAR, 13 conv + BN, Li et al.'s classifier (paper: 15M params, 313M MACs, 93.6%)."""
    return CifarVGG(VGG16_CFG, **kwargs)


@register_model(skeleton="vgg", **_VGG_CFG)
def ghost_vgg16_cifar(ratio: int = 2, dw_size: int = 3, **kwargs: Any) -> CifarVGG:
    """Ghost-VGG-16 for CIFAR, s=2, d=3 (paper: 7.7M params, 158M MACs, 93.7%)."""
    return CifarVGG(VGG16_CFG, ratio=ratio, dw_size=dw_size, **kwargs)
