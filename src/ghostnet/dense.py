"""GhostNet as the backbone of torchvision's detection and segmentation models.

The official code has none of this (Efficient-AI-Backbones #21, #171, #180); users wire `features_only` taps into
detectors by hand. These builders do it the way torchvision builds its MobileNetV3 variants, so GhostNet drops into
the same training scripts:

- `fasterrcnn_ghostnet_fpn`: Faster R-CNN on an FPN over the stride-16 and stride-32 taps (plus a max-pooled level),
  as `fasterrcnn_mobilenet_v3_large_fpn`.
- `deeplabv3_ghostnet` and `lraspp_ghostnet`: DeepLabV3 / LR-ASPP at output stride 16 (the last stage dilated), as
  `deeplabv3_mobilenet_v3_large` and `lraspp_mobilenet_v3_large`.

With a pretrained backbone, batch norms are frozen (torchvision's `FrozenBatchNorm2d`: detection batches are too small
for batch statistics) and only the last `trainable_layers` of the six stage groups train (default 3), as in
torchvision; from scratch everything trains with ordinary batch norms.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from .models.ghostnet import GhostNet
from .models.registry import create_model, list_models

Pretrained = Union[None, bool, str]
NUM_LAYER_GROUPS = 6  # the stem and the five taps' stage groups (strides 2, 4, 8, 16, 32)


def convert_to_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d with the same statistics and affine parameters (in place).

    Not the trainer's `freeze_bn` (`ghostnet.train.engine.set_batchnorm_eval`), which keeps the BatchNorm layers and
    only puts them in eval mode: here the layers are swapped for torchvision's fixed affine ones, for good.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            # On the layer's own device and dtype: a float64 or CUDA model stays one (the buffers' defaults would not).
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps).to(child.running_mean.device,
                                                                              child.running_mean.dtype)
            with torch.no_grad():
                frozen.weight.copy_(child.weight if child.affine else torch.ones_like(frozen.weight))
                frozen.bias.copy_(child.bias if child.affine else torch.zeros_like(frozen.bias))
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            convert_to_frozen_batchnorm(child)
    return module


def layer_groups(model: GhostNet) -> list[list[nn.Module]]:
    """The stem, then the stages ending at each tap: six groups, earliest first (torchvision's "layers")."""
    groups: list[list[nn.Module]] = [[model.conv_stem, model.bn1]]
    start = 0
    for tap in model.feature_info_all:
        if tap.stage >= len(model.blocks):
            break
        groups.append(list(model.blocks[start: tap.stage + 1]))
        start = tap.stage + 1
    return groups


def set_trainable_layers(model: GhostNet, trainable_layers: int) -> GhostNet:
    """Freeze all but the last `trainable_layers` of the six layer groups (0: all frozen, 6: all trainable)."""
    if not 0 <= trainable_layers <= NUM_LAYER_GROUPS:
        raise ValueError(f"trainable_layers must be in 0..{NUM_LAYER_GROUPS}, got {trainable_layers}")
    groups = layer_groups(model)
    for group in groups[: max(len(groups) - trainable_layers, 0)]:
        for module in group:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
    return model


def ghostnet_body(name: str, pretrained: Pretrained, out_indices: Sequence[int], trainable_layers: Optional[int],
                  output_stride: int = 32, **model_kwargs: Any) -> GhostNet:
    """A features_only GhostNet with torchvision's conventions for pretrained backbones (frozen BN, frozen stages).

    The registry says which models qualify (`ModelInfo.dense_backbone`): those built on GhostNet's skeleton
    (conv_stem/bn1, blocks, a tap at every stride end), GhostNet v1/v2/v3 and PaddleClas's form, RepGhostNet and
    ParameterNet. G-Ghost RegNet has taps too, but another skeleton (layer1..4).
    """
    ghostnets = list_models(dense_backbone=True)
    if name not in ghostnets:
        raise ValueError(f"{name!r} is not a GhostNet; dense-prediction backbones are built from the models with "
                         f"GhostNet's stem, stages and taps: {', '.join(ghostnets)}")
    is_trained = bool(pretrained)
    if trainable_layers is None:
        trainable_layers = 3 if is_trained else NUM_LAYER_GROUPS
    body = create_model(name, pretrained=pretrained, features_only=True, out_indices=tuple(out_indices),
                        output_stride=output_stride, **model_kwargs)
    set_trainable_layers(body, trainable_layers)
    return convert_to_frozen_batchnorm(body) if is_trained else body


class GhostNetFPN(nn.Module):
    """A GhostNet body and a feature pyramid: returns {"0": ..., "1": ..., "pool": ...} with `out_channels` each."""

    def __init__(self, body: GhostNet, out_channels: int = 256, extra_blocks: Optional[ExtraFPNBlock] = None,
                 norm_layer: Optional[type[nn.Module]] = None) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork([f.num_chs for f in body.feature_info], out_channels,
                                         extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks,
                                         norm_layer=norm_layer)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def ghostnet_fpn_backbone(name: str = "ghostnet_100", pretrained: Pretrained = None,
                          out_indices: Sequence[int] = (3, 4), trainable_layers: Optional[int] = None,
                          out_channels: int = 256, extra_blocks: Optional[ExtraFPNBlock] = None,
                          **model_kwargs: Any) -> GhostNetFPN:
    """An FPN backbone for torchvision detectors; `out_indices` picks the taps (default: strides 16 and 32)."""
    body = ghostnet_body(name, pretrained, out_indices, trainable_layers, **model_kwargs)
    return GhostNetFPN(body, out_channels, extra_blocks)


def fasterrcnn_ghostnet_fpn(num_classes: int = 91, backbone: str = "ghostnet_100",
                            pretrained_backbone: Pretrained = None, trainable_layers: Optional[int] = None,
                            **kwargs: Any) -> nn.Module:
    """Faster R-CNN with a GhostNet FPN backbone, laid out as torchvision's `fasterrcnn_mobilenet_v3_large_fpn`.

    `kwargs` go to torchvision's FasterRCNN (min_size, max_size, box_score_thresh, ...).
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    fpn = ghostnet_fpn_backbone(backbone, pretrained_backbone, trainable_layers=trainable_layers)
    levels = len(fpn.body.feature_info) + 1  # the taps and the max-pooled level
    anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * levels, ((0.5, 1.0, 2.0),) * levels)
    kwargs = {"rpn_score_thresh": 0.05, **kwargs}
    return FasterRCNN(fpn, num_classes, rpn_anchor_generator=anchors, **kwargs)


class _NamedTaps(nn.Module):
    """A features_only body whose taps come back as a dict, as torchvision's segmentation models expect."""

    def __init__(self, body: GhostNet, names: Sequence[str]) -> None:
        super().__init__()
        self.body, self.names = body, tuple(names)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict(zip(self.names, self.body(x)))


# Taps used by the segmentation heads: stride 8 (40 channels at 1.0x) for detail, the last map for context.
LOW_TAP, HIGH_TAP = 2, 4


def deeplabv3_ghostnet(num_classes: int = 21, backbone: str = "ghostnet_100", pretrained_backbone: Pretrained = None,
                       aux_loss: bool = False, output_stride: int = 16,
                       trainable_layers: Optional[int] = None) -> nn.Module:
    """DeepLabV3 on a dilated GhostNet (output stride 16 or 8), as torchvision's `deeplabv3_mobilenet_v3_large`."""
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
    from torchvision.models.segmentation.fcn import FCNHead

    taps = (LOW_TAP, HIGH_TAP) if aux_loss else (HIGH_TAP,)
    body = ghostnet_body(backbone, pretrained_backbone, taps, trainable_layers, output_stride=output_stride)
    channels = [f.num_chs for f in body.feature_info]
    aux = FCNHead(channels[0], num_classes) if aux_loss else None
    return DeepLabV3(_NamedTaps(body, ("aux", "out") if aux_loss else ("out",)),
                     DeepLabHead(channels[-1], num_classes), aux)


def lraspp_ghostnet(num_classes: int = 21, backbone: str = "ghostnet_100", pretrained_backbone: Pretrained = None,
                    inter_channels: int = 128, trainable_layers: Optional[int] = None) -> nn.Module:
    """LR-ASPP on a GhostNet dilated to output stride 16, as torchvision's `lraspp_mobilenet_v3_large`."""
    from torchvision.models.segmentation.lraspp import LRASPP

    body = ghostnet_body(backbone, pretrained_backbone, (LOW_TAP, HIGH_TAP), trainable_layers, output_stride=16)
    low, high = (f.num_chs for f in body.feature_info)
    return LRASPP(_NamedTaps(body, ("low", "high")), low, high, num_classes, inter_channels)
