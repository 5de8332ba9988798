"""ImageNet ResNet-50 (torchvision's) and the paper's Ghost-ResNet-50 (s = 2 and s = 4).

Ghost-ResNet-50 is torchvision's ResNet-50 with every convolution of the bottlenecks and of the downsampling
shortcuts, and the BN after it, replaced by a linear GhostModule (BN inside) and an Identity; the ReLUs stay where
they were and the 7x7 stem is kept, as in the official `ghost_resnet.py` (whose unused weights and missing BNs we do
not copy). The paper's parameter counts (13.0M at s=2, 6.5M at s=4) are only reached when the classifier is a
Ghost module too, as happens when every convolution of a ResNet-50 whose logits layer is a 1x1 convolution (as in
TF-slim's) is replaced: with a plain Linear classifier the counts are 13.95M and 8.15M. `ghost_classifier=True`
(the default of the registered models) follows the paper; see docs/ghost-twins.md for the trade-off.

Both are torchvision's `ResNet` (a subclass, `ResNet50`: the same modules, keys and initialization) with timm's
model API on top (`global_pool`, `num_classes=0`, `drop_rate`, `features_only`, `forward_intermediates`, ...).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
from torchvision.models.resnet import Bottleneck, ResNet

from ..layers import GhostModule
from ..layers.pooling import GlobalPool
from ..layers.swap import kaiming_init_, replace_conv_bn
from .backbone import Backbone, FeatureInfo, check_io_channels, check_out_indices
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


class ResNet50(Backbone, ResNet):
    """torchvision's ResNet-50 (v1.5: stride on the 3x3 conv) with any number of classes and input channels, and
    timm's model API.

    Args:
        num_classes: classifier outputs; 0 removes the classifier (the pooled 2048-d features are returned).
        in_chans: input channels (a new, He-initialized stem conv when not 3).
        global_pool: "avg" (torchvision's), "max", "avgmax", "catavgmax" (or timm's "fast" spellings); "" (with
            num_classes=0) for none.  drop_rate: dropout before the classifier (0: none, as torchvision's).
        features_only, out_indices: return the maps of the taps `out_indices` (the stem's ReLU, layer1..layer4 at
            strides 2, 4, 8, 16, 32) instead of logits; the head and the stages after the last tap are not built.
    """

    classifier_name = "fc"

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, global_pool: str = "avg", drop_rate: float = 0.0,
                 features_only: bool = False, out_indices: Sequence[int] = (0, 1, 2, 3, 4)) -> None:
        check_io_channels(in_chans, num_classes)
        pool_kind = self.check_head(num_classes, global_pool)
        ResNet.__init__(self, Bottleneck, [3, 4, 6, 3], num_classes=max(num_classes, 1))
        if in_chans != 3:
            self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
            kaiming_init_(self.conv1)
        self.out_indices = check_out_indices(out_indices, 5)
        self.in_chans, self.num_classes, self.drop_rate = in_chans, num_classes, drop_rate
        self.features_only, self.grad_checkpointing, self.min_input_size = features_only, False, 1
        self.feature_info_all = [FeatureInfo(64, 2, "relu", 0)] + [
            FeatureInfo(256 * 2 ** i, 4 * 2 ** i, f"layer{i + 1}", i + 1) for i in range(4)]
        self.num_features = 2048
        self.ghost_classifier_ratio: Optional[int] = None  # set by ghost_resnet50_model
        del self.avgpool  # torchvision's; the head pools with global_pool
        self.global_pool: Optional[GlobalPool] = GlobalPool(global_pool)
        self.head_hidden_size = self._pre_logits_width(pool_kind)
        if num_classes == 0 or self.head_hidden_size != self.num_features:
            self.fc = self._make_classifier(self.head_hidden_size, num_classes)
        if features_only:
            self._truncate_stages(max(self.out_indices))
            self.global_pool = self.fc = None
            self.head_hidden_size = 0

    @property
    def unbuilt_prefixes(self) -> tuple[str, ...]:
        """Checkpoint keys a features_only model does not build (its head and later stages)."""
        if not self.features_only:
            return ()
        return ("fc.",) + tuple(f"layer{i}." for i in range(1, 5) if getattr(self, f"layer{i}") is None)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.relu(self.bn1(self.conv1(x)))

    def built_stages(self) -> list:
        stages = [(self.maxpool, self.layer1), self.layer2, self.layer3, self.layer4]
        return [s for i, s in enumerate(stages, start=1) if getattr(self, f"layer{i}") is not None]

    def tap_depth(self, index: int) -> int:
        return self.feature_info_all[index].stage  # 0 is the stem's tap

    def _truncate_stages(self, depth: int) -> None:
        for i in range(depth + 1, 5):
            setattr(self, f"layer{i}", None)

    def _make_classifier(self, in_features: int, num_classes: int) -> nn.Module:
        if self.ghost_classifier_ratio is None or num_classes == 0:
            return super()._make_classifier(in_features, num_classes)
        return kaiming_init_(GhostClassifier(in_features, num_classes, self.ghost_classifier_ratio))

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups (those of timm's ResNet): the stem, each stage (coarse) or block, the classifier."""
        return dict(stem=r"^(?:conv1|bn1)\.", blocks=r"^layer(\d+)\." if coarse else r"^layer(\d+)\.(\d+)\.",
                    head=r"^fc\.")


def resnet50_model(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet50:
    """torchvision's ResNet-50 (v1.5: stride on the 3x3 conv) with any number of classes and input channels;
    `kwargs` are ResNet50's timm options (global_pool, drop_rate, features_only, out_indices)."""
    return ResNet50(num_classes, in_chans, **kwargs)


def ghost_resnet50_model(ratio: int = 2, dw_size: int = 3, ghost_classifier: bool = True, num_classes: int = 1000,
                         in_chans: int = 3, **kwargs: Any) -> ResNet50:
    """Ghost-ResNet-50: ResNet-50 with Ghost modules (s = ratio, d = dw_size) for every conv but the stem."""
    model = resnet50_model(num_classes, in_chans, **kwargs)
    for block in model.modules():
        if not isinstance(block, Bottleneck):
            continue
        for i in (1, 2, 3):
            replace_conv_bn(block, f"conv{i}", f"bn{i}", ratio, dw_size)
        if block.downsample is not None:
            replace_conv_bn(block.downsample, "0", "1", ratio, dw_size)
    if ghost_classifier:
        model.ghost_classifier_ratio = ratio
        if isinstance(model.fc, nn.Linear):
            model.fc = model._make_classifier(model.fc.in_features, num_classes)
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
