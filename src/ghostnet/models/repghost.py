"""RepGhostNet (Chen et al. 2022, arXiv 2211.06088): GhostNet's body with RepGhost modules, any width.

The training form has a BN identity branch in every RepGhost module; `model.reparameterize()` folds it into the
depthwise conv in place (the official `convert_to_deploy()`), and `ghostnet.deploy.fuse(model)` then folds the
remaining batch norms. Key names are those of the official code (ChengpengChen/RepGhost `model/repghost.py`) and timm
(`timm/models/repghost.py`), so the published and timm's checkpoints load unchanged in both forms.

The network is built on GhostNet's skeleton (`GhostNet._build`: stem, stages, taps at the end of every stride,
output stride 8/16 by dilation, head, classifier, gradient checkpointing): only the blocks and the width of the last
1x1 conv differ.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import torch.nn as nn

from ..layers import SqueezeExcite
from ..layers.repghost import RepGhostBottleneck
from .ghostnet import BlockCfg, GhostNet, SkeletonParts, _stage, check_skeleton_args
from .registry import register_model

#: The official body (k, expansion, out, SE ratio, stride): GhostNet's table with every expansion halved (a Ghost
#: module concatenates its primary and cheap maps, a RepGhost module adds them, so the same expansion needs half the
#: primary channels), except stage 4's two 184s, which become 120 rather than 92.
REPGHOST_STAGES: tuple[tuple[BlockCfg, ...], ...] = (
    _stage((3, 8, 16, 0, 1)),
    _stage((3, 24, 24, 0, 2)),
    _stage((3, 36, 24, 0, 1)),
    _stage((5, 36, 40, 0.25, 2)),
    _stage((5, 60, 40, 0.25, 1)),
    _stage((3, 120, 80, 0, 2)),
    _stage((3, 100, 80, 0, 1), (3, 120, 80, 0, 1), (3, 120, 80, 0, 1), (3, 240, 112, 0.25, 1),
           (3, 336, 112, 0.25, 1)),
    _stage((5, 336, 160, 0.25, 2)),
    _stage((5, 480, 160, 0, 1), (5, 480, 160, 0.25, 1), (5, 480, 160, 0, 1), (5, 480, 160, 0.25, 1)),
)
FINAL_CONV_MULT = 2  # the last 1x1 conv is twice the last expansion wide (960 at 1.0x), as in the official code
SE_LAYER = partial(SqueezeExcite, divisor=4)  # official: rd = make_divisible(c / 4, 4), hard-sigmoid gate


def _repghost_block(in_chs: int, mid_chs: int, out_chs: int, *, index: int, reparam: bool,
                    **block_args: Any) -> RepGhostBottleneck:
    del index  # every RepGhost block is built alike
    return RepGhostBottleneck(in_chs, mid_chs, out_chs, reparam=reparam, se_layer=SE_LAYER, **block_args)


class RepGhostNet(GhostNet):
    """RepGhostNet at any width.

    Args:
        width: channel multiplier (channels rounded to multiples of 4 as in the official code).
        num_classes: classifier outputs; 0 removes the classifier (the 1280-d pre-logits are returned).
        in_chans: input channels.  drop_rate: dropout before the classifier.
        global_pool: "avg", "max", "avgmax" (or timm's "fast" spellings); "" (with num_classes=0) for none.
        output_stride: 32, 16 or 8 (the later strides become dilations).
        stem_stride: 2 as in the paper, 1 for small images such as CIFAR.
        features_only: return the feature maps of `out_indices` instead of logits (no head is built).
        out_indices: which of the taps (last map at each stride 2, 4, 8, 16, 32) to return.
        reparam: build the BN identity branches (False: the official "norep" ablation).
        stages: the stage table.
    """

    def __init__(self, width: float = 1.0, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2,
                 global_pool: str = "avg", output_stride: int = 32, stem_stride: int = 2, features_only: bool = False,
                 out_indices: Sequence[int] = (0, 1, 2, 3, 4), reparam: bool = True,
                 stages: Sequence[Sequence[BlockCfg]] = REPGHOST_STAGES) -> None:
        # GhostNet.__init__ checks and applies GhostNet's own options (version, SE gate, PaddleClas head); the
        # skeleton is GhostNet._build with RepGhost bottlenecks, and every other method is GhostNet's.
        nn.Module.__init__(self)
        check_skeleton_args(width, output_stride, stem_stride, global_pool, in_chans, num_classes)
        self.version = "repghost"
        parts = SkeletonParts(partial(_repghost_block, reparam=reparam), final_conv_mult=FINAL_CONV_MULT)
        self._build(parts, stages, width, num_classes, in_chans, drop_rate, global_pool, output_stride, stem_stride,
                    features_only, out_indices)


# Builders named as in timm; docstrings give the official README's deploy-form figures (params / MACs, top-1).
@register_model(skeleton="ghostnet", dense_backbone=True)
def repghostnet_050(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 0.5x (official: 2.3M params, 43M MACs, 66.9% top-1)."""
    return RepGhostNet(width=0.5, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def repghostnet_058(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 0.58x (official: 2.5M params, 60M MACs, 68.9% top-1)."""
    return RepGhostNet(width=0.58, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def repghostnet_080(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 0.8x (official: 3.3M params, 96M MACs, 72.2% top-1)."""
    return RepGhostNet(width=0.8, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def repghostnet_100(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 1.0x (official: 4.1M params, 142M MACs, 74.2% top-1)."""
    return RepGhostNet(width=1.0, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def repghostnet_111(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 1.11x (official: 4.5M params, 170M MACs, 75.1% top-1)."""
    return RepGhostNet(width=1.11, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def repghostnet_130(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 1.3x (official: 5.5M params, 231M MACs, 76.4% top-1)."""
    return RepGhostNet(width=1.3, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def repghostnet_150(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 1.5x (official: 6.6M params, 301M MACs, 77.5% top-1)."""
    return RepGhostNet(width=1.5, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def repghostnet_200(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 2.0x (official: 9.8M params, 516M MACs, 78.8% top-1)."""
    return RepGhostNet(width=2.0, **kwargs)
