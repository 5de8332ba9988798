"""RepGhostNet (Chen et al. 2022, arXiv 2211.06088): GhostNet's body with RepGhost modules, any width.

The training form has a BN identity branch in every RepGhost module; `model.reparameterize()` folds it into the
depthwise conv in place (the official `convert_to_deploy()`), and `ghostnet.deploy.fuse(model)` then folds the
remaining batch norms. Key names are those of the official code (ChengpengChen/RepGhost `model/repghost.py`) and timm
(`timm/models/repghost.py`), so the published and timm's checkpoints load unchanged in both forms.

The network reuses GhostNet's forward machinery (stem, stages, taps at the end of every stride, output stride 8/16
by dilation, head, classifier, gradient checkpointing): only the blocks and the width of the last 1x1 conv differ.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import torch.nn as nn

from ..layers import ConvBnAct, SqueezeExcite, make_divisible
from ..layers.repghost import RepGhostBottleneck
from .ghostnet import GLOBAL_POOLS, HEAD_CHANNELS, BlockCfg, GhostNet, _stage
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


class RepGhostNet(GhostNet):
    """RepGhostNet at any width.

    Args:
        width: channel multiplier (channels rounded to multiples of 4 as in the official code).
        num_classes: classifier outputs; 0 removes the classifier (the 1280-d pre-logits are returned).
        in_chans: input channels.  drop_rate: dropout before the classifier.
        global_pool: "avg", "max" or "avgmax".
        output_stride: 32, 16 or 8 (the later strides become dilations).
        stem_stride: 2 as in the paper, 1 for small images such as CIFAR.
        features_only: return the feature maps of `out_indices` instead of logits (no head is built).
        out_indices: which of the taps (last map at each stride 2, 4, 8, 16, 32) to return.
        reparam: build the BN identity branches (False: the official "norep" ablation).
        stages: the stage table.
    """

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        global_pool: str = "avg",
        output_stride: int = 32,
        stem_stride: int = 2,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3, 4),
        reparam: bool = True,
        stages: Sequence[Sequence[BlockCfg]] = REPGHOST_STAGES,
    ) -> None:
        # GhostNet's constructor builds Ghost bottlenecks; this one builds the same attributes with RepGhost
        # bottlenecks, and every other method (forward, taps, head, reparameterize) is GhostNet's.
        nn.Module.__init__(self)
        _check_args(width, output_stride, stem_stride, global_pool, in_chans, num_classes)
        self.version = "repghost"
        self.width, self.num_classes, self.in_chans, self.drop_rate = width, num_classes, in_chans, drop_rate
        self.global_pool_type, self.features_only = global_pool, features_only

        stem_chs = make_divisible(16 * width, 4)
        self.conv_stem = nn.Conv2d(in_chans, stem_chs, 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.act1 = nn.ReLU(inplace=True)

        stage_modules, stage_strides, prev_chs = self._build_stages(stages, width, stem_chs, stem_stride,
                                                                    output_stride, reparam)
        self.num_features = make_divisible(stages[-1][-1].exp * width * FINAL_CONV_MULT, 4)
        stage_modules.append(nn.Sequential(ConvBnAct(prev_chs, self.num_features, 1)))
        stage_strides.append((self.num_features, *stage_strides[-1][1:]))
        self.blocks = nn.Sequential(*stage_modules)

        self.feature_info_all = self._taps(stage_strides)
        if any(not 0 <= i < len(self.feature_info_all) for i in out_indices):
            raise ValueError(f"out_indices must be in 0..{len(self.feature_info_all) - 1}, got {tuple(out_indices)}")
        self.out_indices = tuple(out_indices)
        self.min_input_size = stem_stride * 16  # one pixel per cell of the undilated stride-32 grid
        self.grad_checkpointing = False

        if features_only:
            # Drop the stages after the last requested tap so that no unused parameters remain.
            self.blocks = self.blocks[: self.feature_info_all[max(self.out_indices)].stage + 1]
            self.head_hidden_size = 0
            self.conv_head = self.norm_head = self.act2 = self.classifier = None
            return
        self.head_hidden_size = HEAD_CHANNELS
        self.conv_head = nn.Conv2d(self.num_features, HEAD_CHANNELS, 1, bias=True)
        self.norm_head = nn.Identity()  # GhostNet's forward_head slot; RepGhostNet's head conv has a bias, no BN
        self.act2 = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _build_stages(stages: Sequence[Sequence[BlockCfg]], width: float, in_chs: int, stem_stride: int,
                      output_stride: int, reparam: bool) -> tuple[list[nn.Module], list[tuple[int, int, int]], int]:
        """The stages as Sequentials, (channels, table stride, actual stride) after each, and the last width.

        Strides past `output_stride` become dilation as in GhostNet (DeepLab style: the block that loses its stride
        keeps the old dilation, the blocks after it use the new one).
        """
        se_layer = partial(SqueezeExcite, divisor=4)  # official: rd = make_divisible(c / 4, 4), hard-sigmoid gate
        net_stride, table_stride, dilation, prev_chs = stem_stride, stem_stride, 1, in_chs
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
                layers.append(RepGhostBottleneck(prev_chs, mid_chs, out_chs, cfg.kernel, stride, block_dilation,
                                                 se_ratio=cfg.se, reparam=reparam, has_dw=cfg.stride > 1,
                                                 se_layer=se_layer))
                prev_chs = out_chs
            stage_modules.append(nn.Sequential(*layers))
            stage_strides.append((prev_chs, table_stride, net_stride))
        return stage_modules, stage_strides, prev_chs


def _check_args(width: float, output_stride: int, stem_stride: int, global_pool: str, in_chans: int,
                num_classes: int) -> None:
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
    if in_chans < 1 or num_classes < 0:
        raise ValueError(f"in_chans must be >= 1 and num_classes >= 0, got {in_chans} and {num_classes}")


# Builders named as in timm; docstrings give the official README's deploy-form figures (params / MACs, top-1).
@register_model()
def repghostnet_050(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 0.5x (official: 2.3M params, 43M MACs, 66.9% top-1)."""
    return RepGhostNet(width=0.5, **kwargs)


@register_model()
def repghostnet_058(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 0.58x (official: 2.5M params, 60M MACs, 68.9% top-1)."""
    return RepGhostNet(width=0.58, **kwargs)


@register_model()
def repghostnet_080(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 0.8x (official: 3.3M params, 96M MACs, 72.2% top-1)."""
    return RepGhostNet(width=0.8, **kwargs)


@register_model()
def repghostnet_100(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 1.0x (official: 4.1M params, 142M MACs, 74.2% top-1)."""
    return RepGhostNet(width=1.0, **kwargs)


@register_model()
def repghostnet_111(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 1.11x (official: 4.5M params, 170M MACs, 75.1% top-1)."""
    return RepGhostNet(width=1.11, **kwargs)


@register_model()
def repghostnet_130(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 1.3x (official: 5.5M params, 231M MACs, 76.4% top-1)."""
    return RepGhostNet(width=1.3, **kwargs)


@register_model()
def repghostnet_150(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 1.5x (official: 6.6M params, 301M MACs, 77.5% top-1)."""
    return RepGhostNet(width=1.5, **kwargs)


@register_model()
def repghostnet_200(**kwargs: Any) -> RepGhostNet:
    """RepGhostNet 2.0x (official: 9.8M params, 516M MACs, 78.8% top-1)."""
    return RepGhostNet(width=2.0, **kwargs)
