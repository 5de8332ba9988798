"""GhostNet v1, v2 and v3: one class, the stage table as data.

Layout and key names are those of the official code (huawei-noah/Efficient-AI-Backbones) and timm, so their
checkpoints load unchanged; see docs/models.md for where this implementation goes further (dense-prediction taps at
every stride, output stride 8/16, DFC attention that works on any map size, in-place v3 fusion).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import (SE_GATES, ConvBnAct, GhostBottleneck, GhostBottleneckV3, SqueezeExcite, make_divisible,
                      reparameterize_model)
from ..layers.pooling import GlobalPool, canonical_pool_type
from .backbone import Backbone, DilationSchedule, FeatureInfo, check_io_channels, check_output_stride


@dataclass(frozen=True)
class BlockCfg:
    """One bottleneck row of the table: depthwise kernel k, expansion (mid) and output channels, SE ratio, stride."""

    kernel: int
    exp: int
    out: int
    se: float
    stride: int


def _stage(*rows: tuple) -> tuple[BlockCfg, ...]:
    return tuple(BlockCfg(*row) for row in rows)


#: The official v1 body (ghostnet.py of the official code); v2 and v3 use the same table.
GHOSTNET_STAGES: tuple[tuple[BlockCfg, ...], ...] = (
    _stage((3, 16, 16, 0, 1)),
    _stage((3, 48, 24, 0, 2)),
    _stage((3, 72, 24, 0, 1)),
    _stage((5, 72, 40, 0.25, 2)),
    _stage((5, 120, 40, 0.25, 1)),
    _stage((3, 240, 80, 0, 2)),
    _stage((3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0.25, 1),
           (3, 672, 112, 0.25, 1)),
    _stage((5, 672, 160, 0.25, 2)),
    _stage((5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1)),
)

VERSIONS = ("v1", "v2", "v3")
#: The pools the head takes ("" = none). Not "catavgmax": the 1x1 head conv right after the pool takes exactly
#: num_features channels (timm's GhostNet refuses it too).
GLOBAL_POOLS = ("", "avg", "max", "avgmax")
HEAD_CHANNELS = 1280  # never scaled by width in the official code


class BlockFactory(Protocol):
    """Builds the bottleneck of one table row: channels already scaled by width, `stride` and `dilation` the actual
    ones (after output stride), `has_dw` whether the row's stride is > 1, `index` the block's place in the network."""

    def __call__(self, in_chs: int, mid_chs: int, out_chs: int, *, index: int, dw_kernel_size: int, stride: int,
                 dilation: int, se_ratio: float, has_dw: bool) -> nn.Module: ...


def _conv3x3_stem(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    return nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)


@dataclass(frozen=True)
class SkeletonParts:
    """What the networks on GhostNet's skeleton (GhostNet v1/v2/v3, RepGhostNet, ParameterNet) build differently.

    The skeleton: stem conv + BN + act, the stages of the table (bottlenecks from `block`), a 1x1 conv + BN + act
    (`final_conv`, `final_conv_mult` times the last expansion wide), global pool, 1x1 conv to 1280 [+ BN] + act,
    classifier.
    """

    block: BlockFactory
    stem_conv: Callable[..., nn.Module] = _conv3x3_stem  # (in_chs, out_chs, stride=)
    final_conv: Callable[[int, int], nn.Module] = ConvBnAct  # (in_chs, out_chs)
    final_conv_mult: int = 1
    act_layer: type[nn.Module] = nn.ReLU  # of the stem and the head
    head_norm: bool = False  # a BN between the head conv (then without bias) and its activation


def _ghost_block(in_chs: int, mid_chs: int, out_chs: int, *, index: int, version: str, num_conv_branches: int,
                 **block_args: Any) -> nn.Module:
    """GhostNet's bottleneck: v2 and v3 put DFC attention into ghost1 of every block after the first two."""
    dfc = version != "v1" and index > 1
    if version == "v3":
        return GhostBottleneckV3(in_chs, mid_chs, out_chs, dfc=dfc, num_conv_branches=num_conv_branches, **block_args)
    return GhostBottleneck(in_chs, mid_chs, out_chs, dfc=dfc, **block_args)


def check_skeleton_args(width: float, output_stride: int, stem_stride: int, global_pool: str, in_chans: int,
                        num_classes: int) -> None:
    """The arguments every network on GhostNet's skeleton takes."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    check_output_stride(output_stride)
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
    check_io_channels(in_chans, num_classes)
    if not canonical_pool_type(global_pool, GLOBAL_POOLS) and num_classes > 0:
        raise ValueError(f"global_pool='' leaves the features unpooled, which a classifier cannot take: use "
                         f"num_classes=0 with it (as timm requires), got num_classes={num_classes}")


class GhostNet(Backbone):
    """GhostNet v1/v2/v3 at any width.

    Args:
        version: "v1" (paper), "v2" (DFC attention in ghost1 of blocks 2..15), "v3" (re-parameterizable branches).
        width: channel multiplier (channels rounded to multiples of 4 as in the official code).
        num_classes: classifier outputs; 0 removes the classifier (the 1280-d pre-logits are returned).
        in_chans: input channels.  drop_rate: dropout before the classifier.
        global_pool: "avg", "max", "avgmax" (or timm's "fast" spellings); "" (with num_classes=0) for none: the
            head conv then runs on every pixel and the 1280-channel map is returned, as in timm.
        output_stride: 32, 16 or 8 (the later strides become dilations).
        stem_stride: 2 as in the paper, 1 for small images such as CIFAR.
        features_only: return the feature maps of `out_indices` instead of logits (no head is built).
        out_indices: which of the taps (last map at each stride 2, 4, 8, 16, 32) to return.
        num_conv_branches: v3 only, branches per re-parameterizable conv.
        se_gate: the SE gate, "hard_sigmoid" (official) or "clip" (clip to [0, 1], PaddleClas).
        se_divisor: the SE reduction is rounded to a multiple of this: 4 (official: 72 channels reduce to 20) or 1
            (PaddleClas: in_chs // 4, here always a multiple of 4 divided by 4).
        head_norm: a batch norm between the 1280-channel head conv (then without bias) and its ReLU (PaddleClas).

    RepGhostNet and ParameterNet subclass it: their constructors check their own options and call `_build` with
    their `SkeletonParts`; every other method is this one's.
    """

    pool_types = GLOBAL_POOLS

    def __init__(
        self,
        version: str = "v1",
        width: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        global_pool: str = "avg",
        output_stride: int = 32,
        stem_stride: int = 2,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3, 4),
        num_conv_branches: int = 3,
        stages: Sequence[Sequence[BlockCfg]] = GHOSTNET_STAGES,
        se_gate: str = "hard_sigmoid",
        se_divisor: int = 4,
        head_norm: bool = False,
    ) -> None:
        super().__init__()
        if version not in VERSIONS:
            raise ValueError(f"unknown GhostNet version {version!r}; expected one of {VERSIONS}")
        check_skeleton_args(width, output_stride, stem_stride, global_pool, in_chans, num_classes)
        if se_gate not in SE_GATES:
            raise ValueError(f"se_gate must be one of {tuple(SE_GATES)}, got {se_gate!r}")
        if se_divisor < 1:
            raise ValueError(f"se_divisor must be >= 1, got {se_divisor}")
        self.version = version
        se_layer = partial(SqueezeExcite, divisor=se_divisor, gate_layer=SE_GATES[se_gate])
        block = partial(_ghost_block, version=version, num_conv_branches=num_conv_branches, se_layer=se_layer)
        self._build(SkeletonParts(block, head_norm=head_norm), stages, width, num_classes, in_chans, drop_rate,
                    global_pool, output_stride, stem_stride, features_only, out_indices)

    def _build(self, parts: SkeletonParts, stages: Sequence[Sequence[BlockCfg]], width: float, num_classes: int,
               in_chans: int, drop_rate: float, global_pool: str, output_stride: int, stem_stride: int,
               features_only: bool, out_indices: Sequence[int]) -> None:
        """Build the skeleton from checked arguments: stem, stages, final conv, taps and (unless features_only)
        head, in the official order (so a seeded model starts from the official code's weights)."""
        self.width, self.num_classes, self.in_chans, self.drop_rate = width, num_classes, in_chans, drop_rate
        self.features_only = features_only
        stem_chs = make_divisible(16 * width, 4)
        self.conv_stem = parts.stem_conv(in_chans, stem_chs, stride=stem_stride)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.act1 = parts.act_layer(inplace=True)
        stage_modules, stage_strides = self._build_stages(parts, stages, width, stem_chs, stem_stride, output_stride)
        self.blocks = nn.Sequential(*stage_modules)
        self._set_taps(stage_strides, out_indices, stem_stride)
        if features_only:
            # Drop the stages after the last requested tap so that no unused parameters remain.
            self.blocks = self.blocks[: self.feature_info_all[max(self.out_indices)].stage + 1]
            self.head_hidden_size = 0
            self.global_pool = self.conv_head = self.norm_head = self.act2 = self.classifier = None
            return
        self.head_hidden_size = HEAD_CHANNELS
        self.global_pool = GlobalPool(global_pool, flatten=False)  # flattened after the head conv
        self.conv_head = nn.Conv2d(self.num_features, HEAD_CHANNELS, 1, bias=not parts.head_norm)
        self.norm_head = nn.BatchNorm2d(HEAD_CHANNELS) if parts.head_norm else nn.Identity()
        self.act2 = parts.act_layer(inplace=True)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes > 0 else nn.Identity()

    def _build_stages(self, parts: SkeletonParts, stages: Sequence[Sequence[BlockCfg]], width: float, stem_chs: int,
                      stem_stride: int, output_stride: int) -> tuple[list[nn.Module], list[tuple[int, int, int]]]:
        """The stages of the table and the final 1x1 conv as Sequentials, with (channels, table stride, actual
        stride) after each; sets `num_features`. Strides past `output_stride` become dilation."""
        schedule = DilationSchedule(output_stride, stem_stride)
        prev_chs, block_idx = stem_chs, 0
        stage_modules: list[nn.Module] = []
        stage_strides: list[tuple[int, int, int]] = []
        for stage_cfg in stages:
            layers = []
            for cfg in stage_cfg:
                out_chs = make_divisible(cfg.out * width, 4)
                mid_chs = make_divisible(cfg.exp * width, 4)
                stride, dilation = schedule.step(cfg.stride)
                layers.append(parts.block(prev_chs, mid_chs, out_chs, index=block_idx, dw_kernel_size=cfg.kernel,
                                          stride=stride, dilation=dilation, se_ratio=cfg.se, has_dw=cfg.stride > 1))
                prev_chs, block_idx = out_chs, block_idx + 1
            stage_modules.append(nn.Sequential(*layers))
            stage_strides.append((prev_chs, schedule.table_stride, schedule.net_stride))
        self.num_features = make_divisible(stages[-1][-1].exp * width * parts.final_conv_mult, 4)
        stage_modules.append(nn.Sequential(parts.final_conv(prev_chs, self.num_features)))
        stage_strides.append((self.num_features, schedule.table_stride, schedule.net_stride))
        return stage_modules, stage_strides

    def _set_taps(self, stage_strides: list[tuple[int, int, int]], out_indices: Sequence[int],
                  stem_stride: int) -> None:
        self.feature_info_all = self._taps(stage_strides)
        if any(not 0 <= i < len(self.feature_info_all) for i in out_indices):
            raise ValueError(f"out_indices must be in 0..{len(self.feature_info_all) - 1}, got {tuple(out_indices)}")
        self.out_indices = tuple(out_indices)
        self.min_input_size = stem_stride * 16  # one pixel per cell of the undilated stride-32 grid
        self.grad_checkpointing = False

    @staticmethod
    def _taps(stage_strides: list[tuple[int, int, int]]) -> list[FeatureInfo]:
        """The last stage at each stride of the table is a tap (so stage 6 at /16 and the final conv at /32).

        Taps are chosen by the table's stride, so dilation (output_stride 8/16) keeps all five; their
        `reduction` is the actual one.
        """
        taps = []
        for stage, (channels, table_stride, actual_stride) in enumerate(stage_strides):
            if stage + 1 == len(stage_strides) or stage_strides[stage + 1][1] != table_stride:
                taps.append(FeatureInfo(channels, actual_stride, f"blocks.{stage}", stage))
        return taps

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.act1(self.bn1(self.conv_stem(x)))

    def built_stages(self) -> nn.Sequential:
        return self.blocks

    def tap_depth(self, index: int) -> int:
        return self.feature_info_all[index].stage + 1

    def _truncate_stages(self, depth: int) -> None:
        self.blocks = self.blocks[:depth]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pool -> 1x1 conv to 1280 (bias, or BN with head_norm) -> ReLU -> dropout -> classifier."""
        x = self.act2(self.norm_head(self.conv_head(self.global_pool(x))))
        if not self.global_pool.is_identity():
            x = x.flatten(1)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def _pre_logits_width(self, pool_kind: str) -> int:
        return HEAD_CHANNELS if isinstance(self.conv_head, nn.Conv2d) else self.num_features

    def _drop_head_layers(self) -> None:
        self.conv_head, self.norm_head, self.act2 = nn.Identity(), nn.Identity(), nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups: the stem, each stage (coarse) or block, then the head (head conv and
        classifier, one group: the trainer's layer-wise decay gives it the full lr)."""
        return dict(stem=r"^(?:conv_stem|bn1)\.",
                    blocks=[(r"^blocks\.(\d+)\." if coarse else r"^blocks\.(\d+)\.(\d+)\.", None)],
                    head=r"^(?:conv_head|norm_head|classifier)\.")

    def reparameterize(self) -> "GhostNet":
        """Fuse v3's training branches in place (a no-op for v1/v2); returns self."""
        return reparameterize_model(self)
