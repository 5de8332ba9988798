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
from ..layers import GhostModule
from ..layers.pooling import GlobalPool
from ..layers.swap import kaiming_init_
from ..layers.tracing import is_symbolic_tracing
from .backbone import Backbone, FeatureInfo, check_io_channels, check_out_indices
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
    if is_symbolic_tracing():  # shapes are graph nodes there
        return
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


class CifarResNet(Backbone):
    """The CIFAR ResNet of He et al. (depth 6n+2), or its Ghost twin when `ratio` is given.

    Args:
        depth: 20, 32, 44, 56, 110 or any 6n + 2.
        num_classes, in_chans: classifier outputs (0: none, the pooled features are returned) and input channels.
        shortcut: "A" (identity / zero padding, He et al.'s CIFAR choice) or "B" (1x1 projections).
        ratio, dw_size: s and d of the Ghost modules; ratio=None builds the plain network.
        zero_init_last_bn: start every residual branch at zero (the last BN's scale, or in a Ghost twin the scales
            of the last Ghost module's two BNs), so that each block begins as its shortcut (Goyal et al., 2017).
            Off by default, as in He et al. and the paper; it steadies the first steps of short schedules.
        global_pool: "avg" (He et al.), "max", "avgmax", "catavgmax" (or timm's "fast" spellings); "" (with
            num_classes=0) for none.  drop_rate: dropout before the classifier (0: none, as He et al.).
        features_only, out_indices: return the maps of the taps `out_indices` (stem, layer1..3 at strides 1, 1, 2,
            4) instead of logits; the head and the stages after the last tap are not built.
    """

    classifier_name = "fc"

    def __init__(self, depth: int = 56, num_classes: int = 10, in_chans: int = 3, shortcut: str = "A",
                 ratio: Optional[int] = None, dw_size: int = 3, zero_init_last_bn: bool = False,
                 global_pool: str = "avg", drop_rate: float = 0.0, features_only: bool = False,
                 out_indices: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        check_io_channels(in_chans, num_classes)
        pool_kind = self.check_head(num_classes, global_pool)
        self.out_indices = check_out_indices(out_indices, len(RESNET_STAGE_CHANNELS) + 1)
        self.depth, self.in_chans, self.num_classes, self.drop_rate = depth, in_chans, num_classes, drop_rate
        self.features_only, self.grad_checkpointing, self.min_input_size = features_only, False, 1
        self.ratio, self.dw_size = ratio, dw_size
        conv_bn = conv_bn_factory(ratio, dw_size)
        blocks_per_stage = (depth - 2) // 6

        # The stem stays an ordinary convolution in the twin too (ghostify's default; 0.05% of the MACs).
        chs = RESNET_STAGE_CHANNELS[0]
        self.conv1, self.bn1 = plain_conv_bn(in_chans, chs, 3, 1)
        self.relu = nn.ReLU(inplace=True)
        self.feature_info_all = [FeatureInfo(chs, 1, "relu", 0)]
        stages = []
        for i, out_chs in enumerate(RESNET_STAGE_CHANNELS):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(CifarBasicBlock(chs, out_chs, stride, conv_bn, shortcut))
                chs = out_chs
            stages.append(nn.Sequential(*blocks))
            self.feature_info_all.append(FeatureInfo(out_chs, 2 ** i, f"layer{i + 1}", i + 1))
        self.layer1, self.layer2, self.layer3 = stages
        self.global_pool: Optional[GlobalPool] = GlobalPool(global_pool)
        self.num_features = chs
        self.head_hidden_size = self._pre_logits_width(pool_kind)
        self.fc: Optional[nn.Module] = self._make_classifier(self.head_hidden_size, num_classes)
        kaiming_init_(self)
        if zero_init_last_bn:
            for block in self.modules():
                if isinstance(block, CifarBasicBlock):
                    block.zero_init_last_bn()
        if features_only:
            self._truncate_stages(max(self.out_indices))
            self.global_pool = self.fc = None
            self.head_hidden_size = 0

    def _check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.in_chans, self.min_input_size)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.relu(self.bn1(self.conv1(x)))

    def built_stages(self) -> list[nn.Module]:
        return [s for s in (self.layer1, self.layer2, self.layer3) if s is not None]

    def tap_depth(self, index: int) -> int:
        return self.feature_info_all[index].stage  # 0 is the stem's tap

    def _truncate_stages(self, depth: int) -> None:
        for i in range(depth + 1, len(RESNET_STAGE_CHANNELS) + 1):
            setattr(self, f"layer{i}", None)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups: the stem, each stage (coarse) or block, then the classifier."""
        return dict(stem=r"^(?:conv1|bn1)\.", blocks=r"^layer(\d+)\." if coarse else r"^layer(\d+)\.(\d+)\.",
                    head=r"^fc\.")


def _vgg_layers(cfg: Sequence[Union[int, str]], in_chans: int, conv_bn: ConvBnFactory
                ) -> tuple[list[nn.Module], list[FeatureInfo], list[int]]:
    """The layers of a VGG table, its taps (the last ReLU before each max-pool, and the last one if no pool ends the
    table) and the end of each stage (a stage ends at its tap; the layers after the last tap make the last stage)."""
    layers: list[nn.Module] = []
    taps: list[FeatureInfo] = []
    chs, stride = in_chans, 1
    for v in cfg:
        if v == "M":
            if isinstance(layers[-1], nn.ReLU):
                taps.append(FeatureInfo(chs, stride, f"features.{len(layers) - 1}", len(taps)))
            layers.append(nn.MaxPool2d(2))
            stride *= 2
            continue
        # The first conv is the stem and stays ordinary in the twin (ghostify's default).
        layers.extend((plain_conv_bn if not layers else conv_bn)(chs, v, 3, 1))
        layers.append(nn.ReLU(inplace=True))
        chs = v
    if isinstance(layers[-1], nn.ReLU):
        taps.append(FeatureInfo(chs, stride, f"features.{len(layers) - 1}", len(taps)))
    ends = [int(t.module.split(".")[1]) + 1 for t in taps]
    return layers, taps, ends + ([len(layers)] if ends[-1] < len(layers) else [])


class CifarVGG(Backbone):
    """VGG with BN for CIFAR (Li et al.'s form of VGG-16 by default), or its Ghost twin when `ratio` is given.

    Args:
        cfg: conv widths and "M" (max-pool) entries; VGG16_CFG gives the 13-conv VGG-16.
        num_classes, in_chans: classifier outputs (0: none, the 512-d pre-logits are returned) and input channels.
        ratio, dw_size: s and d of the Ghost modules; ratio=None builds the plain network.
        global_pool: "avg", "max", "avgmax" (or timm's "fast" spellings); "" (with num_classes=0) for none: the
            512-512 layer, BN and ReLU then run on every pixel (as timm's conv heads do) and a 512-channel map is
            returned.  drop_rate: dropout before the last Linear (0: none, as Li et al.).
        features_only, out_indices: return the maps of the taps `out_indices` (the last ReLU before each max-pool,
            strides 1, 2, 4, 8, 16) instead of logits.
    """

    classifier_name = "classifier.3"
    pool_types = ("", "avg", "max", "avgmax")  # the first Linear after the pool takes num_features channels

    def __init__(self, cfg: Sequence[Union[int, str]] = VGG16_CFG, num_classes: int = 10, in_chans: int = 3,
                 ratio: Optional[int] = None, dw_size: int = 3, global_pool: str = "avg", drop_rate: float = 0.0,
                 features_only: bool = False, out_indices: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        check_io_channels(in_chans, num_classes)
        if not cfg or not isinstance(cfg[0], int) or any(v != "M" and not isinstance(v, int) for v in cfg):
            raise ValueError(f"cfg must list conv widths (int) and 'M' entries, starting with a width; got {cfg}")
        pool_kind = self.check_head(num_classes, global_pool)
        layers, self.feature_info_all, self.stage_ends = _vgg_layers(cfg, in_chans, conv_bn_factory(ratio, dw_size))
        taps = len(self.feature_info_all)
        self.out_indices = check_out_indices(tuple(range(taps)) if out_indices is None else out_indices, taps)
        self.in_chans, self.num_classes, self.drop_rate = in_chans, num_classes, drop_rate
        self.ratio, self.dw_size, self.features_only, self.grad_checkpointing = ratio, dw_size, features_only, False
        self.features = nn.Sequential(*layers)
        self.min_input_size = 2 ** sum(v == "M" for v in cfg)
        self.global_pool: Optional[GlobalPool] = GlobalPool(global_pool)
        self.num_features = chs = self.feature_info_all[-1].num_chs
        self.classifier: Optional[nn.Sequential] = nn.Sequential(
            nn.Linear(chs, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), self._make_classifier(512, num_classes))
        self.head_hidden_size = self._pre_logits_width(pool_kind)
        kaiming_init_(self)
        if features_only:
            self._truncate_stages(self.tap_depth(max(self.out_indices)))
            self.global_pool = self.classifier = None
            self.head_hidden_size = 0

    def _check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.in_chans, self.min_input_size)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)  # the first conv is part of the first stage
        return x

    def built_stages(self) -> list[tuple[nn.Module, ...]]:
        layers = list(self.features)
        return [tuple(layers[start:end]) for start, end in zip([0] + self.stage_ends, self.stage_ends)]

    def tap_depth(self, index: int) -> int:
        return index + 1

    def _truncate_stages(self, depth: int) -> None:
        self.stage_ends = self.stage_ends[:depth]
        self.features = self.features[: self.stage_ends[-1] if depth else 0]

    def _pre_logits_width(self, pool_kind: str) -> int:
        return self.classifier[0].out_features if isinstance(self.classifier[0], nn.Linear) else self.num_features

    def _drop_head_layers(self) -> None:
        for i in range(3):
            self.classifier[i] = nn.Identity()

    def _pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        linear, norm, act = list(self.classifier)[:3]
        if not self.global_pool.is_identity():
            return act(norm(linear(x)))
        # Unpooled: the same layers on every pixel, (N, C, H, W) -> (N, C, HW) for the BN.
        y = linear(x.flatten(2).transpose(1, 2)).transpose(1, 2)
        return act(norm(y)).reshape(x.shape[0], -1, x.shape[2], x.shape[3])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pool -> Linear 512, BN, ReLU -> dropout -> classifier (Linear 512 -> num_classes)."""
        x = self._pre_logits(self.global_pool(x))
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.get_classifier()(x)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups: the first conv and its BN, then each stage (coarse: the layers up to a max-pool)
        or conv layer, then the head (the 512-512 layer, its BN and the classifier)."""
        blocks, stage, conv = [], 0, 0
        for index, layer in enumerate(self.features):
            stage += index in self.stage_ends
            conv = index if isinstance(layer, (nn.Conv2d, GhostModule)) else conv  # a conv's BN joins its group
            if index > 1 and any(True for _ in layer.parameters()):
                blocks.append((rf"^features\.{index}\.", (stage,) if coarse else (conv,)))
        return dict(stem=r"^features\.[01]\.", blocks=blocks, head=r"^classifier\.")


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
