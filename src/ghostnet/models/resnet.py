"""ImageNet ResNet-50 (torchvision's) and the paper's Ghost-ResNet-50 (s = 2 and s = 4).

Ghost-ResNet-50 is torchvision's ResNet-50 with every convolution of the bottlenecks and of the downsampling
shortcuts, and the BN after it, replaced by a linear GhostModule (BN inside) and an Identity; the ReLUs stay where
they were and the 7x7 stem is kept, as in the official `ghost_resnet.py` (whose unused weights and missing BNs we do
not copy). The paper's parameter counts (13.0M at s=2, 6.5M at s=4) are only reached when the classifier is a
Ghost module too, as happens when every convolution of a ResNet-50 whose logits layer is a 1x1 convolution (as in
TF-slim's) is replaced: with a plain Linear classifier the counts are 13.95M and 8.15M. `ghost_classifier=True`
(the default of the registered models) follows the paper; see docs/ghost-twins.md for the trade-off.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.models.resnet import resnet50 as tv_resnet50

from ..layers.swap import kaiming_init_, replace_conv_bn
from ..layers import GhostModule
from .registry import register_model

_RESNET_CFG = dict(interpolation="bilinear", first_conv="conv1", classifier="fc")


class GhostClassifier(nn.Module):
    """A linear classifier as a 1x1 Ghost module on the pooled features: (N, C) -> (N, num_classes).

    Only ceil(num_classes / s) logits come from a dense layer; each other logit is an affine function of one of
    them (cheap operation + BN). On a 1x1 map only the centre of a d x d kernel sees data, so d is 1 here.
    """

    def __init__(self, in_features: int, num_classes: int, ratio: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, num_classes
        self.ghost = GhostModule(in_features, num_classes, 1, ratio=ratio, dw_size=1, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost(x[:, :, None, None]).flatten(1)


def _with_in_chans(model: ResNet, in_chans: int) -> ResNet:
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        kaiming_init_(model.conv1)
    return model


def resnet50_model(num_classes: int = 1000, in_chans: int = 3) -> ResNet:
    """torchvision's ResNet-50 (v1.5: stride on the 3x3 conv) with any number of classes and input channels."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return _with_in_chans(tv_resnet50(weights=None, num_classes=num_classes), in_chans)


def ghost_resnet50_model(ratio: int = 2, dw_size: int = 3, ghost_classifier: bool = True, num_classes: int = 1000,
                         in_chans: int = 3) -> ResNet:
    """Ghost-ResNet-50: ResNet-50 with Ghost modules (s = ratio, d = dw_size) for every conv but the stem."""
    model = resnet50_model(num_classes, in_chans)
    for block in model.modules():
        if not isinstance(block, Bottleneck):
            continue
        for i in (1, 2, 3):
            replace_conv_bn(block, f"conv{i}", f"bn{i}", ratio, dw_size)
        if block.downsample is not None:
            replace_conv_bn(block.downsample, "0", "1", ratio, dw_size)
    if ghost_classifier:
        model.fc = GhostClassifier(model.fc.in_features, num_classes, ratio)
        kaiming_init_(model.fc)
    return model


@register_model(skeleton="resnet", **_RESNET_CFG)
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 (torchvision layout; paper: 25.6M params, 4.1B MACs, 75.3% top-1)."""
    return resnet50_model(**kwargs)


@register_model(skeleton="resnet", **_RESNET_CFG)
def ghost_resnet50_s2(dw_size: int = 3, ghost_classifier: bool = True, **kwargs: Any) -> ResNet:
    """Ghost-ResNet-50, s=2 (paper: 13.0M params, 2.2B MACs, 75.0% top-1)."""
    return ghost_resnet50_model(2, dw_size, ghost_classifier, **kwargs)


@register_model(skeleton="resnet", **_RESNET_CFG)
def ghost_resnet50_s4(dw_size: int = 3, ghost_classifier: bool = True, **kwargs: Any) -> ResNet:
    """Ghost-ResNet-50, s=4 (paper: 6.5M params, 1.2B MACs, 74.1% top-1)."""
    return ghost_resnet50_model(4, dw_size, ghost_classifier, **kwargs)
