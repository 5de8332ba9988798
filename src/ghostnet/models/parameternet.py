"""ParameterNet (Han et al., CVPR 2024, arXiv 2306.14525): GhostNet with dynamic convolutions, more parameters for
large-scale pre-training at almost the same multiply-adds.

The official network (huawei-noah/Efficient-AI-Backbones `parameternet_pytorch/cv/parameternet.py`) is GhostNet at
width 1.9 with Hardswish, its own stage table, and 4-expert dynamic convolutions in place of the stem conv, both convs
of every Ghost module, the projection shortcuts and the last 1x1 conv (`ghostnet.layers.dynamic_conv`). Key names are
the official ones, so its checkpoints load unchanged (none are published: the README says "train it with timm").

The network is built on GhostNet's skeleton (`GhostNet._build`: stem, stages, taps at the end of every stride,
output stride 8/16 by dilation, head, classifier, gradient checkpointing); the blocks, the activation and the table
differ.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import torch.nn as nn

from ..layers import SqueezeExcite
from ..layers.dynamic_conv import DynamicConv2d
from ..layers.parameternet import DynamicConvBnAct, DynamicGhostBottleneck
from .ghostnet import BlockCfg, GhostNet, SkeletonParts, _stage, check_skeleton_args
from .registry import register_model

#: The official `_create_parameternet_600m` table (k, expansion, out, SE ratio, stride). Against GhostNet's: stage 3
#: has two 120-channel blocks (k=3), stage 4 three 200-channel blocks (not 200, 184, 184) and two 672-channel ones,
#: stage 5 five 960-channel blocks, all with SE and k=3. k only matters where a block has a strided depthwise conv
#: or a projection shortcut.
PARAMETERNET_STAGES: tuple[tuple[BlockCfg, ...], ...] = (
    _stage((3, 16, 16, 0, 1)),
    _stage((3, 48, 24, 0, 2)),
    _stage((3, 72, 24, 0, 1)),
    _stage((5, 72, 40, 0.25, 2)),
    _stage((3, 120, 40, 0.25, 1), (3, 120, 40, 0.25, 1)),
    _stage((3, 240, 80, 0, 2)),
    _stage((3, 200, 80, 0, 1), (3, 200, 80, 0, 1), (3, 200, 80, 0, 1), (3, 480, 112, 0.25, 1),
           (3, 672, 112, 0.25, 1), (3, 672, 112, 0.25, 1)),
    _stage((5, 672, 160, 0.25, 2)),
    _stage(*[(3, 960, 160, 0.25, 1)] * 5),
)
NUM_EXPERTS = 4
STEM_STRIDE = 2  # the official network has no stride-1 stem option
#: Official SE: reduction make_divisible(c / 4, 4), hard-sigmoid gate, and the block's activation (Hardswish).
SE_LAYER = partial(SqueezeExcite, divisor=4, act_layer=nn.Hardswish)


def _dynamic_block(in_chs: int, mid_chs: int, out_chs: int, *, index: int, num_experts: int,
                   **block_args: Any) -> DynamicGhostBottleneck:
    del index  # every ParameterNet block is built alike
    return DynamicGhostBottleneck(in_chs, mid_chs, out_chs, num_experts=num_experts, se_layer=SE_LAYER, **block_args)


def _skeleton_parts(num_experts: int) -> SkeletonParts:
    """Dynamic convs for the stem, the blocks and the final 1x1 conv; Hardswish; the head conv stays ordinary."""
    return SkeletonParts(block=partial(_dynamic_block, num_experts=num_experts),
                         stem_conv=partial(DynamicConv2d, kernel_size=3, padding=1, num_experts=num_experts),
                         final_conv=partial(DynamicConvBnAct, num_experts=num_experts), act_layer=nn.Hardswish)


class ParameterNet(GhostNet):
    """ParameterNet: GhostNet-style network whose convolutions (but the strided depthwise and SE ones) are dynamic.

    Args:
        width: channel multiplier (1.9 for ParameterNet-600M; channels rounded to multiples of 4).
        num_classes: classifier outputs; 0 removes the classifier (the 1280-d pre-logits are returned).
        in_chans: input channels.  drop_rate: dropout before the classifier (official default 0.2).
        global_pool: "avg", "max", "avgmax" (or timm's "fast" spellings); "" (with num_classes=0) for none.
        output_stride: 32, 16 or 8 (the later strides become dilations; the official code has 32 only).
        features_only: return the feature maps of `out_indices` instead of logits (no head is built).
        out_indices: which of the taps (last map at each stride 2, 4, 8, 16, 32) to return.
        num_experts: K, the kernels of each dynamic convolution (4 in the paper).
        stages: the stage table.
    """

    def __init__(self, width: float = 1.9, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2,
                 global_pool: str = "avg", output_stride: int = 32, features_only: bool = False,
                 out_indices: Sequence[int] = (0, 1, 2, 3, 4), num_experts: int = NUM_EXPERTS,
                 stages: Sequence[Sequence[BlockCfg]] = PARAMETERNET_STAGES) -> None:
        # GhostNet.__init__ checks and applies GhostNet's own options (version, SE gate, PaddleClas head); the
        # skeleton is GhostNet._build with dynamic convolutions, and every other method is GhostNet's.
        nn.Module.__init__(self)
        check_skeleton_args(width, output_stride, STEM_STRIDE, global_pool, in_chans, num_classes)
        if not isinstance(num_experts, int) or num_experts < 1:
            raise ValueError(f"num_experts must be a positive integer, got {num_experts!r}")
        self.version, self.num_experts = "parameternet", num_experts
        self._build(_skeleton_parts(num_experts), stages, width, num_classes, in_chans, drop_rate, global_pool,
                    output_stride, STEM_STRIDE, features_only, out_indices)


# Named as in the official code; the data config is the official `_cfg` (bilinear, crop 0.875, ImageNet mean/std).
@register_model(interpolation="bilinear", skeleton="ghostnet", dense_backbone=True)
def parameternet_600m(**kwargs: Any) -> ParameterNet:
    """ParameterNet-600M: GhostNet 1.9x with 4-expert dynamic convs (paper: 0.6G MACs, 81.6% top-1 after IN-22K)."""
    return ParameterNet(width=1.9, **kwargs)
