"""ParameterNet (Han et al., CVPR 2024, arXiv 2306.14525): GhostNet with dynamic convolutions, more parameters for
large-scale pre-training at almost the same multiply-adds.

The official network (huawei-noah/Efficient-AI-Backbones `parameternet_pytorch/cv/parameternet.py`) is GhostNet at
width 1.9 with Hardswish, its own stage table, and 4-expert dynamic convolutions in place of the stem conv, both convs
of every Ghost module, the projection shortcuts and the last 1x1 conv (`ghostnet.layers.dynamic_conv`). Key names are
the official ones, so its checkpoints load unchanged (none are published: the README says "train it with timm").

The network reuses GhostNet's forward machinery (stem, stages, taps at the end of every stride, output stride 8/16
by dilation, head, classifier, gradient checkpointing); the blocks, the activation and the table differ.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import torch.nn as nn

from ..layers import SqueezeExcite, make_divisible
from ..layers.dynamic_conv import DynamicConv2d
from ..layers.parameternet import DynamicConvBnAct, DynamicGhostBottleneck
from .ghostnet import GLOBAL_POOLS, HEAD_CHANNELS, BlockCfg, GhostNet, _stage
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


class ParameterNet(GhostNet):
    """ParameterNet: GhostNet-style network whose convolutions (but the strided depthwise and SE ones) are dynamic.

    Args:
        width: channel multiplier (1.9 for ParameterNet-600M; channels rounded to multiples of 4).
        num_classes: classifier outputs; 0 removes the classifier (the 1280-d pre-logits are returned).
        in_chans: input channels.  drop_rate: dropout before the classifier (official default 0.2).
        global_pool: "avg", "max" or "avgmax".
        output_stride: 32, 16 or 8 (the later strides become dilations; the official code has 32 only).
        features_only: return the feature maps of `out_indices` instead of logits (no head is built).
        out_indices: which of the taps (last map at each stride 2, 4, 8, 16, 32) to return.
        num_experts: K, the kernels of each dynamic convolution (4 in the paper).
        stages: the stage table.
    """

    def __init__(
        self,
        width: float = 1.9,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        global_pool: str = "avg",
        output_stride: int = 32,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3, 4),
        num_experts: int = NUM_EXPERTS,
        stages: Sequence[Sequence[BlockCfg]] = PARAMETERNET_STAGES,
    ) -> None:
        # GhostNet's constructor builds static Ghost bottlenecks; this one builds the same attributes with dynamic
        # ones, and every other method (forward, taps, head, reset_classifier) is GhostNet's.
        nn.Module.__init__(self)
        _check_args(width, output_stride, global_pool, in_chans, num_classes, num_experts)
        self.version = "parameternet"
        self.width, self.num_classes, self.in_chans, self.drop_rate = width, num_classes, in_chans, drop_rate
        self.global_pool_type, self.features_only, self.num_experts = global_pool, features_only, num_experts

        stem_chs = make_divisible(16 * width, 4)
        self.conv_stem = DynamicConv2d(in_chans, stem_chs, 3, 2, 1, num_experts=num_experts)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.act1 = nn.Hardswish(inplace=True)

        stage_modules, stage_strides, prev_chs = self._build_stages(stages, width, stem_chs, output_stride,
                                                                    num_experts)
        self.num_features = make_divisible(stages[-1][-1].exp * width, 4)
        stage_modules.append(nn.Sequential(DynamicConvBnAct(prev_chs, self.num_features, 1, num_experts=num_experts)))
        stage_strides.append((self.num_features, *stage_strides[-1][1:]))
        self.blocks = nn.Sequential(*stage_modules)

        self.feature_info_all = self._taps(stage_strides)
        if any(not 0 <= i < len(self.feature_info_all) for i in out_indices):
            raise ValueError(f"out_indices must be in 0..{len(self.feature_info_all) - 1}, got {tuple(out_indices)}")
        self.out_indices = tuple(out_indices)
        self.min_input_size = 32  # one pixel per cell of the undilated stride-32 grid
        self.grad_checkpointing = False

        if features_only:
            # Drop the stages after the last requested tap so that no unused parameters remain.
            self.blocks = self.blocks[: self.feature_info_all[max(self.out_indices)].stage + 1]
            self.head_hidden_size = 0
            self.conv_head = self.norm_head = self.act2 = self.classifier = None
            return
        self.head_hidden_size = HEAD_CHANNELS
        self.conv_head = nn.Conv2d(self.num_features, HEAD_CHANNELS, 1, bias=True)  # ordinary in the official code
        self.norm_head = nn.Identity()  # GhostNet's forward_head slot: the head conv has a bias, no BN
        self.act2 = nn.Hardswish(inplace=True)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _build_stages(stages: Sequence[Sequence[BlockCfg]], width: float, in_chs: int, output_stride: int,
                      num_experts: int) -> tuple[list[nn.Module], list[tuple[int, int, int]], int]:
        """The stages as Sequentials, (channels, table stride, actual stride) after each, and the last width.

        Strides past `output_stride` become dilation as in GhostNet (DeepLab style: the block that loses its stride
        keeps the old dilation, the blocks after it use the new one).
        """
        # Official SE: reduction make_divisible(c / 4, 4), hard-sigmoid gate, and the block's activation (Hardswish).
        se_layer = partial(SqueezeExcite, divisor=4, act_layer=nn.Hardswish)
        net_stride, table_stride, dilation, prev_chs = 2, 2, 1, in_chs
        stage_modules: list[nn.Module] = []
        stage_strides: list[tuple[int, int, int]] = []
        for stage_cfg in stages:
            layers = []
            for cfg in stage_cfg:
                out_chs = make_divisible(cfg.out * width, 4)
                mid_chs = make_divisible(cfg.exp * width, 4)
                stride, block_dilation = cfg.stride, dilation
                table_stride *= cfg.stride
                if cfg.stride > 1 and net_stride * cfg.stride > output_stride:
                    dilation, stride = dilation * cfg.stride, 1
                else:
                    net_stride *= cfg.stride
                layers.append(DynamicGhostBottleneck(prev_chs, mid_chs, out_chs, cfg.kernel, stride, block_dilation,
                                                     se_ratio=cfg.se, has_dw=cfg.stride > 1, num_experts=num_experts,
                                                     se_layer=se_layer))
                prev_chs = out_chs
            stage_modules.append(nn.Sequential(*layers))
            stage_strides.append((prev_chs, table_stride, net_stride))
        return stage_modules, stage_strides, prev_chs


def _check_args(width: float, output_stride: int, global_pool: str, in_chans: int, num_classes: int,
                num_experts: int) -> None:
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
    if in_chans < 1 or num_classes < 0:
        raise ValueError(f"in_chans must be >= 1 and num_classes >= 0, got {in_chans} and {num_classes}")
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be a positive integer, got {num_experts!r}")


# Named as in the official code; the data config is the official `_cfg` (bilinear, crop 0.875, ImageNet mean/std).
@register_model(interpolation="bilinear")
def parameternet_600m(**kwargs: Any) -> ParameterNet:
    """ParameterNet-600M: GhostNet 1.9x with 4-expert dynamic convs (paper: 0.6G MACs, 81.6% top-1 after IN-22K)."""
    return ParameterNet(width=1.9, **kwargs)
