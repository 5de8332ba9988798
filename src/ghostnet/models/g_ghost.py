"""G-GhostNet: RegNetX with G-Ghost stages (Han et al., "GhostNets on Heterogeneous Devices via Cheap Operations",
IJCV 2022), the GPU member of the Ghost family: no depthwise convolutions, the saving is made stage by stage.

Layout and key names are those of the official `g_ghost_pytorch/g_ghost_regnet.py` (huawei-noah/Efficient-AI-
Backbones, with its 2025 fix of `Stage`), so the released `g_ghost_regnet_*.pth` files load unchanged: a 3x3 stride-2
stem of 32 channels (`conv1`, `bn1`), four stride-2 stages `layer1..layer4`, average pool, dropout and `fc`. Stage 1
is always a plain stack of RegNetX bottlenecks; stage 3 is always a G-Ghost stage; stages 2 and 4 are G-Ghost stages
when they have more than two blocks (the official rule, kept in the table below as data). Inner blocks of a G-Ghost
stage use 3/4 of the group width (`int(0.75 * group_width)`), and their channel count is rounded to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from ..layers.g_ghost import GGhostStage, RegNetXBottleneck, plain_stage
from ..layers.pooling import GlobalPool
from .backbone import Backbone, DilationSchedule, FeatureInfo, check_io_channels, check_output_stride
from .registry import register_model

STEM_CHANNELS = 32
NARROW_GROUP_RATIO = 0.75  # the official `group_width = int(group_width * 0.75)` for the inner blocks
STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class GGhostRegNetCfg:
    """One network of the official table: blocks and width per stage, group width, and which stages are G-Ghost."""

    depths: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    group_width: int
    ghost: tuple[bool, bool, bool, bool]


def g_ghost_cfg(depths: tuple[int, int, int, int], widths: tuple[int, int, int, int],
                group_width: int) -> GGhostRegNetCfg:
    """A configuration with the official choice of G-Ghost stages: stage 3 always, stages 2 and 4 when deeper than 2
    blocks, stage 1 never."""
    ghost = (False, depths[1] > 2, True, depths[3] > 2)
    return GGhostRegNetCfg(depths, widths, group_width, ghost)


#: The official builders `g_ghost_regnetx_XXX` (RegNetX depths and widths, RegNetX-XXX's group width). Only the four
#: with released weights are registered; the others build with `GGhostRegNet(G_GHOST_REGNETX["002"])`.
G_GHOST_REGNETX: dict[str, GGhostRegNetCfg] = {
    "002": g_ghost_cfg((1, 1, 4, 7), (24, 56, 152, 368), 8),
    "004": g_ghost_cfg((1, 2, 7, 12), (32, 64, 160, 384), 16),
    "006": g_ghost_cfg((1, 3, 5, 7), (48, 96, 240, 528), 24),
    "008": g_ghost_cfg((1, 3, 7, 5), (64, 128, 288, 672), 16),
    "016": g_ghost_cfg((2, 4, 10, 2), (72, 168, 408, 912), 24),
    "032": g_ghost_cfg((2, 6, 15, 2), (96, 192, 432, 1008), 48),
    "040": g_ghost_cfg((2, 5, 14, 2), (80, 240, 560, 1360), 40),
    "064": g_ghost_cfg((2, 4, 10, 1), (168, 392, 784, 1624), 56),
    "080": g_ghost_cfg((2, 5, 15, 1), (80, 240, 720, 1920), 120),
    "120": g_ghost_cfg((2, 5, 11, 1), (224, 448, 896, 2240), 112),
    "160": g_ghost_cfg((2, 6, 13, 1), (256, 512, 896, 2048), 128),
    "320": g_ghost_cfg((2, 7, 13, 1), (336, 672, 1344, 2520), 168),
}


def _regnetx_block(in_chs: int, out_chs: int, *, stride: int, dilation: int, narrow: bool, group_width: int,
                   narrow_group_width: int) -> RegNetXBottleneck:
    return RegNetXBottleneck(in_chs, out_chs, stride, dilation, narrow_group_width if narrow else group_width)


class GGhostRegNet(Backbone):
    """G-Ghost RegNetX.

    Args:
        cfg: the stage table (`G_GHOST_REGNETX[...]` or your own `GGhostRegNetCfg`).
        num_classes: classifier outputs; 0 removes the classifier (the pooled features are returned).
        in_chans: input channels.  drop_rate: dropout before the classifier (0.2 in the official code).
        global_pool: "avg" (official), "max", "avgmax", "catavgmax" (or timm's "fast" spellings); "" (with
            num_classes=0) for none: the final map is returned.
        cheap_ratio: fraction of a G-Ghost stage's channels made by the cheap operation (0.5 officially).
        output_stride: 32, 16 or 8 (the later strides become dilations; weights are unchanged).
        features_only: return the maps of `out_indices` instead of logits (no head is built).
        out_indices: which of the taps (stem at stride 2, end of layer1..layer4 at strides 4..32) to return.
    """

    classifier_name = "fc"

    def __init__(self, cfg: GGhostRegNetCfg, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2,
                 cheap_ratio: float = 0.5, output_stride: int = 32, features_only: bool = False,
                 out_indices: Sequence[int] = (0, 1, 2, 3, 4), global_pool: str = "avg") -> None:
        super().__init__()
        if len(cfg.depths) != 4 or len(cfg.widths) != 4 or len(cfg.ghost) != 4:
            raise ValueError(f"a G-Ghost RegNet has 4 stages; got depths {cfg.depths}, widths {cfg.widths}")
        if any(cfg.ghost) and int(cfg.group_width * NARROW_GROUP_RATIO) < 1:
            raise ValueError(f"G-Ghost stages need group_width >= 2 (their inner blocks use int(0.75 * group_width)), "
                             f"got {cfg.group_width}")
        check_output_stride(output_stride)
        check_io_channels(in_chans, num_classes)
        pool_kind = self.check_head(num_classes, global_pool)
        if any(not 0 <= i <= len(STAGE_NAMES) for i in out_indices) or not out_indices:
            raise ValueError(f"out_indices must be a non-empty selection of 0..{len(STAGE_NAMES)}, got "
                             f"{tuple(out_indices)}")
        self.cfg, self.num_classes, self.in_chans, self.drop_rate = cfg, num_classes, in_chans, drop_rate
        self.features_only, self.out_indices = features_only, tuple(out_indices)
        self.grad_checkpointing = False
        self.min_input_size = 32  # one pixel per cell of the undilated stride-32 grid

        self.conv1 = nn.Conv2d(in_chans, STEM_CHANNELS, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info_all = self._build_stages(cfg, cheap_ratio, output_stride,
                                                   last=max(self.out_indices) if features_only else len(STAGE_NAMES))
        self.num_features = cfg.widths[-1]
        self.head_hidden_size = 0 if features_only else self._pre_logits_width(pool_kind)
        self.global_pool: Optional[GlobalPool] = None
        self.fc: Optional[nn.Module] = None
        if not features_only:
            self.global_pool = GlobalPool(global_pool)
            self.fc = self._make_classifier(self.head_hidden_size, num_classes)
        self._init_weights()

    def _build_stages(self, cfg: GGhostRegNetCfg, cheap_ratio: float, output_stride: int,
                      last: int) -> list[FeatureInfo]:
        """Build layer1..layer`last` (the later ones are None: no unused parameters in a features_only backbone);
        returns the taps, the stem's and every stage's."""
        taps = [FeatureInfo(STEM_CHANNELS, 2, "act1", 0)]
        narrow_group_width = int(cfg.group_width * NARROW_GROUP_RATIO)
        block_fn = partial(_regnetx_block, group_width=cfg.group_width, narrow_group_width=narrow_group_width)
        schedule = DilationSchedule(output_stride, stem_stride=2)
        prev_chs = STEM_CHANNELS
        for i, name in enumerate(STAGE_NAMES):
            stride, first_dilation = schedule.step(2)
            taps.append(FeatureInfo(cfg.widths[i], schedule.net_stride, name, i + 1))
            if i + 1 > last:
                setattr(self, name, None)
                continue
            kwargs = dict(stride=stride, dilation=schedule.dilation, first_dilation=first_dilation)
            if cfg.ghost[i]:
                # The intrinsic channels are rounded to the inner blocks' group width, as in the official code.
                stage: nn.Module = GGhostStage(prev_chs, cfg.widths[i], cfg.depths[i], block_fn,
                                               cheap_ratio=cheap_ratio, divisor=narrow_group_width, **kwargs)
            else:
                stage = plain_stage(prev_chs, cfg.widths[i], cfg.depths[i], block_fn, **kwargs)
            setattr(self, name, stage)
            prev_chs = cfg.widths[i]
        return taps

    def _init_weights(self) -> None:
        # The official initialization: He (fan_out) convolutions, unit BN; Linear keeps PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def stages(self) -> list[nn.Module]:
        """The built stages, layer1 first."""
        return [s for s in (getattr(self, n) for n in STAGE_NAMES) if s is not None]

    @property
    def unbuilt_prefixes(self) -> tuple[str, ...]:
        """Checkpoint keys this model does not build (a features_only model's head and later stages), which
        `load_checkpoint` may skip while still checking every other key strictly."""
        if not self.features_only:
            return ()
        return ("fc.",) + tuple(f"{n}." for n in STAGE_NAMES if getattr(self, n) is None)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.act1(self.bn1(self.conv1(x)))

    def built_stages(self) -> list[nn.Module]:
        return self.stages

    def tap_depth(self, index: int) -> int:
        return self.feature_info_all[index].stage  # 0 is the stem's tap

    def _truncate_stages(self, depth: int) -> None:
        for name in STAGE_NAMES[depth:]:
            setattr(self, name, None)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups: the stem, each stage (coarse) or block, then the classifier. A G-Ghost stage's
        blocks in order: `base`, the inner blocks, then `end` with the cheap features and the mix."""
        blocks = [(r"^layer(\d+)\.", None)] if coarse else [
            (r"^layer(\d+)\.(\d+)\.", None),  # an ordinary stage's blocks
            (r"^layer(\d+)\.base\.", (0,)),
            (r"^layer(\d+)\.layers\.(\d+)\.", (1,)),
            (r"^layer(\d+)\.end\.", (99998,)),
            (r"^layer(\d+)\.(?:merge|cheap)\.", (99999,))]  # 99999: timm's "join the group before"
        return dict(stem=r"^(?:conv1|bn1)\.", blocks=blocks, head=r"^fc\.")


# The official training and evaluation follow the PyTorch ImageNet example: Resize(256) + CenterCrop(224) with
# torchvision's default (bilinear) interpolation.
_G_GHOST_CFG = dict(interpolation="bilinear", first_conv="conv1", classifier="fc")


#: The registered builders (the four with released weights) and their descriptions (official figures).
G_GHOST_RELEASED: dict[str, str] = {
    "032": "G-Ghost RegNetX-3.2GF (official: 10.5M params, 1.8B MACs, 77.8% top-1).",
    "040": "G-Ghost RegNetX-4.0GF (official: 15.7M params, 2.2B MACs, 78.6% top-1).",
    "080": "G-Ghost RegNetX-8.0GF (official: 24.6M params, 4.2B MACs, 79.0% top-1).",
    "160": "G-Ghost RegNetX-16GF (official: 32.4M params, 9.0B MACs, 79.9% top-1).",
}


def _register_g_ghost_regnetx(variant: str, description: str) -> None:
    def build(**kwargs: Any) -> GGhostRegNet:
        return GGhostRegNet(G_GHOST_REGNETX[variant], **kwargs)

    build.__name__ = build.__qualname__ = f"g_ghost_regnetx_{variant}"
    build.__doc__ = description
    register_model(skeleton="regnet", **_G_GHOST_CFG)(build)


for _variant, _description in G_GHOST_RELEASED.items():
    _register_g_ghost_regnetx(_variant, _description)
