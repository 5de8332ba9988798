"""The G-Ghost stage (G-GhostNet, Han et al., IJCV 2022): the Ghost idea at the level of a whole stage, for GPUs.

A stage of `depth` blocks normally carries all of its channels through every block. A G-Ghost stage:

1. runs a full-width first block (`base`, which owns the stage's stride) giving x0;
2. sends only the first `raw_chs` channels of x0 through the `depth - 2` remaining inner blocks (`layers`), which are
   narrower: these give the "intrinsic" features;
3. makes the other `cheap_chs` channels ("ghost" features) from the rest of x0 by a cheap 1x1 conv + BN, to which a
   "mix" of everything the stage computed is added: the global average pool of x0 and of every inner block's output
   -> 1x1 conv, BN, ReLU -> 1x1 conv, BN (a per-channel bias for each image), then a ReLU;
4. concatenates intrinsic and ghost features and runs a full-width last block (`end`).

Layout and key names (`base`, `layers`, `merge`, `cheap`, `end`) are those of the official `Stage` in
huawei-noah/Efficient-AI-Backbones `g_ghost_pytorch/g_ghost_regnet.py`, so its checkpoints load unchanged. The
blocks come from a factory, so the stage wraps any residual block; `RegNetXBottleneck` is the official one.
"""
from __future__ import annotations

from typing import Optional, Protocol

import torch
import torch.nn as nn

from .helpers import conv_bn, same_conv


class StageBlockFactory(Protocol):
    """Builds one block of a stage: `narrow` is True for the inner blocks that only see the intrinsic channels.

    The block must map `in_chs` channels to `out_chs` at the given stride and dilation, with its own shortcut
    (a projection where the stride or the channel count changes).
    """

    def __call__(self, in_chs: int, out_chs: int, *, stride: int, dilation: int, narrow: bool) -> nn.Module: ...


class RegNetXBottleneck(nn.Module):
    """RegNetX's residual bottleneck (expansion 1): 1x1, grouped 3x3 (stride, dilation), 1x1, plus a shortcut.

    `group_width` channels per group (groups = out_chs // min(out_chs, group_width), as in the official code). Key
    names are torchvision's and the official code's: conv1/bn1, conv2/bn2, conv3/bn3, downsample.0/1.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, dilation: int = 1, group_width: int = 1) -> None:
        super().__init__()
        if group_width < 1:
            raise ValueError(f"group_width must be >= 1, got {group_width}")
        groups = out_chs // min(out_chs, group_width)
        if out_chs % groups:
            raise ValueError(f"{out_chs} channels cannot be split into groups of {group_width}")
        self.conv1 = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride, dilation, dilation, groups, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv3 = nn.Conv2d(out_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = conv_bn(same_conv(in_chs, out_chs, 1, stride), out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += shortcut  # in place, as torchvision's ResNet: the BN output is not needed for its backward
        return self.relu(out)


class StageMix(nn.Sequential):
    """The "mix" branch: global average pool of the stage's maps -> 1x1 conv, BN, ReLU -> 1x1 conv, BN.

    The official code concatenates the full maps and then pools; pooling each map and concatenating the pooled
    vectors gives the same numbers (the pool is per channel) without the big concatenated map. The layers stay at the
    official indices (0 pool, 1 conv, 2 BN, 3 ReLU, 4 conv, 5 BN), so the keys are `merge.1.weight` etc.
    """

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_chs, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_chs, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
        )

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        pool, *rest = list(self)
        x = torch.cat([pool(m) for m in maps], 1)
        for layer in rest:
            x = layer(x)
        return x


def intrinsic_channels(out_chs: int, cheap_ratio: float, divisor: int = 1) -> int:
    """Channels that go through the inner blocks: (1 - cheap_ratio) of `out_chs`, rounded down to a multiple of
    `divisor` (the official code rounds to the inner blocks' group width, so that they split into whole groups)."""
    return int(out_chs * (1 - cheap_ratio) / divisor) * divisor


class GGhostStage(nn.Module):
    """A G-Ghost stage of `depth` >= 3 blocks (see the module docstring).

    Args:
        in_chs, out_chs: the stage's input and output channels.
        depth: number of blocks, counting `base` and `end` (so `depth - 2` inner blocks).
        block_fn: the block factory (`StageBlockFactory`).
        stride: the first block's stride.  dilation: dilation of every block after the first.
        first_dilation: the first block's dilation (default `dilation`); with output stride 8/16 the block that gives
            up its stride keeps the previous dilation.
        cheap_ratio: the fraction of `out_chs` made by the cheap operation (0.5 in the paper).
        divisor: the intrinsic channel count is rounded down to a multiple of this.
    """

    def __init__(self, in_chs: int, out_chs: int, depth: int, block_fn: StageBlockFactory, stride: int = 1,
                 dilation: int = 1, first_dilation: Optional[int] = None, cheap_ratio: float = 0.5,
                 divisor: int = 1) -> None:
        super().__init__()
        if depth < 3:
            raise ValueError(f"a G-Ghost stage needs at least 3 blocks (first, inner, last), got depth={depth}")
        if not 0.0 < cheap_ratio < 1.0:
            raise ValueError(f"cheap_ratio must be strictly between 0 and 1, got {cheap_ratio}")
        if divisor < 1:
            raise ValueError(f"divisor must be >= 1, got {divisor}")
        raw_chs = intrinsic_channels(out_chs, cheap_ratio, divisor)
        if not 0 < raw_chs < out_chs:
            raise ValueError(f"cheap_ratio={cheap_ratio} with divisor {divisor} leaves {raw_chs} of {out_chs} "
                             "channels for the inner blocks; need between 1 and out_chs - 1")
        self.raw_chs, self.cheap_chs = raw_chs, out_chs - raw_chs
        first_dilation = dilation if first_dilation is None else first_dilation
        self.base = block_fn(in_chs, out_chs, stride=stride, dilation=first_dilation, narrow=False)
        self.end = block_fn(out_chs, out_chs, stride=1, dilation=dilation, narrow=False)
        # Declared in the official order (base, end, merge, cheap, layers) so that parameters() order matches too.
        self.merge = StageMix(out_chs + raw_chs * (depth - 2), self.cheap_chs)
        self.cheap = conv_bn(same_conv(self.cheap_chs, self.cheap_chs, 1), self.cheap_chs)
        self.cheap_relu = nn.ReLU(inplace=True)
        self.layers = nn.Sequential(*[block_fn(raw_chs, raw_chs, stride=1, dilation=dilation, narrow=True)
                                      for _ in range(depth - 2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.base(x)
        intrinsic = x0[:, : self.raw_chs]
        maps = [x0]
        for block in self.layers:
            intrinsic = block(intrinsic)
            maps.append(intrinsic)
        ghost = self.cheap_relu(self.cheap(x0[:, self.raw_chs:]) + self.merge(maps))
        return self.end(torch.cat((intrinsic, ghost), 1))


def plain_stage(in_chs: int, out_chs: int, depth: int, block_fn: StageBlockFactory, stride: int = 1,
                dilation: int = 1, first_dilation: Optional[int] = None) -> nn.Sequential:
    """The ordinary stage the G-Ghost stage replaces: `depth` full-width blocks in a Sequential."""
    first_dilation = dilation if first_dilation is None else first_dilation
    blocks = [block_fn(in_chs, out_chs, stride=stride, dilation=first_dilation, narrow=False)]
    blocks += [block_fn(out_chs, out_chs, stride=1, dilation=dilation, narrow=False) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)

