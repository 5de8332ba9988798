"""GhostNet v1, v2 and v3: one class, the stage table as data.

Layout and key names are those of the official code (huawei-noah/Efficient-AI-Backbones) and timm, so their
checkpoints load unchanged; see docs/models.md for where this implementation goes further (dense-prediction taps at
every stride, output stride 8/16, DFC attention that works on any map size, in-place v3 fusion).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import (SE_GATES, ConvBnAct, GhostBottleneck, GhostBottleneckV3, SqueezeExcite, make_divisible,
                      reparameterize_model)
from ..layers.checkpointing import run_stage


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
GLOBAL_POOLS = ("avg", "max", "avgmax")
HEAD_CHANNELS = 1280  # never scaled by width in the official code


@dataclass(frozen=True)
class FeatureInfo:
    """A dense-prediction tap: channels, total stride (reduction) and the module whose output it is."""

    num_chs: int
    reduction: int
    module: str
    stage: int


class GhostNet(nn.Module):
    """GhostNet v1/v2/v3 at any width.

    Args:
        version: "v1" (paper), "v2" (DFC attention in ghost1 of blocks 2..15), "v3" (re-parameterizable branches).
        width: channel multiplier (channels rounded to multiples of 4 as in the official code).
        num_classes: classifier outputs; 0 removes the classifier (the 1280-d pre-logits are returned).
        in_chans: input channels.  drop_rate: dropout before the classifier.
        global_pool: "avg", "max" or "avgmax".
        output_stride: 32, 16 or 8 (the later strides become dilations).
        stem_stride: 2 as in the paper, 1 for small images such as CIFAR.
        features_only: return the feature maps of `out_indices` instead of logits (no head is built).
        out_indices: which of the taps (last map at each stride 2, 4, 8, 16, 32) to return.
        num_conv_branches: v3 only, branches per re-parameterizable conv.
        se_gate: the SE gate, "hard_sigmoid" (official) or "clip" (clip to [0, 1], PaddleClas).
        se_divisor: the SE reduction is rounded to a multiple of this: 4 (official: 72 channels reduce to 20) or 1
            (PaddleClas: in_chs // 4, here always a multiple of 4 divided by 4).
        head_norm: a batch norm between the 1280-channel head conv (then without bias) and its ReLU (PaddleClas).
    """

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
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        if se_gate not in SE_GATES:
            raise ValueError(f"se_gate must be one of {tuple(SE_GATES)}, got {se_gate!r}")
        if se_divisor < 1:
            raise ValueError(f"se_divisor must be >= 1, got {se_divisor}")
        if in_chans < 1 or num_classes < 0:
            raise ValueError(f"in_chans must be >= 1 and num_classes >= 0, got {in_chans} and {num_classes}")
        self.version, self.width = version, width
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.global_pool_type = global_pool
        self.features_only = features_only

        se_layer = partial(SqueezeExcite, divisor=se_divisor, gate_layer=SE_GATES[se_gate])
        stem_chs = make_divisible(16 * width, 4)
        self.conv_stem = nn.Conv2d(in_chans, stem_chs, 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.act1 = nn.ReLU(inplace=True)

        # Walk the table once, turning strides past `output_stride` into dilation (DeepLab style: the block that
        # loses its stride keeps the old dilation, the blocks after it use the new one).
        net_stride, table_stride, dilation, prev_chs, block_idx = stem_stride, stem_stride, 1, stem_chs, 0
        stage_modules: list[nn.Module] = []
        stage_strides: list[tuple[int, int, int]] = []  # (channels, table stride, actual stride) after each stage
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
                kwargs = dict(dw_kernel_size=cfg.kernel, stride=stride, dilation=block_dilation, se_ratio=cfg.se,
                              dfc=version != "v1" and block_idx > 1, has_dw=cfg.stride > 1, se_layer=se_layer)
                if version == "v3":
                    layers.append(GhostBottleneckV3(prev_chs, mid_chs, out_chs, num_conv_branches=num_conv_branches,
                                                    **kwargs))
                else:
                    layers.append(GhostBottleneck(prev_chs, mid_chs, out_chs, **kwargs))
                prev_chs, block_idx = out_chs, block_idx + 1
            stage_modules.append(nn.Sequential(*layers))
            stage_strides.append((prev_chs, table_stride, net_stride))
        self.num_features = make_divisible(stages[-1][-1].exp * width, 4)
        stage_modules.append(nn.Sequential(ConvBnAct(prev_chs, self.num_features, 1)))
        stage_strides.append((self.num_features, table_stride, net_stride))
        self.blocks = nn.Sequential(*stage_modules)

        self.feature_info_all = self._taps(stage_strides)
        if any(not 0 <= i < len(self.feature_info_all) for i in out_indices):
            raise ValueError(f"out_indices must be in 0..{len(self.feature_info_all) - 1}, got {tuple(out_indices)}")
        self.out_indices = tuple(out_indices)
        self.min_input_size = stem_stride * 16  # one pixel per cell of the undilated stride-32 grid
        self.grad_checkpointing = False

        if features_only:
            # Drop the stages after the last requested tap so that no unused parameters remain.
            last_stage = self.feature_info_all[max(self.out_indices)].stage
            self.blocks = self.blocks[: last_stage + 1]
            self.head_hidden_size = 0
            self.conv_head = self.norm_head = self.act2 = self.classifier = None
            return
        self.head_hidden_size = HEAD_CHANNELS
        self.conv_head = nn.Conv2d(self.num_features, HEAD_CHANNELS, 1, bias=not head_norm)
        self.norm_head = nn.BatchNorm2d(HEAD_CHANNELS) if head_norm else nn.Identity()
        self.act2 = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes > 0 else nn.Identity()

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

    @property
    def feature_info(self) -> list[FeatureInfo]:
        """The taps returned by `features_only` (all five when the model is a classifier)."""
        taps = self.feature_info_all
        return [taps[i] for i in self.out_indices] if self.features_only else list(taps)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D batch (N, C, H, W), got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got {x.shape[1]} (input shape "
                             f"{tuple(x.shape)}); build the model with in_chans={x.shape[1]} to accept it")
        if x.shape[-2] < self.min_input_size or x.shape[-1] < self.min_input_size:
            raise ValueError(f"input {x.shape[-2]}x{x.shape[-1]} is too small: this network needs at least "
                             f"{self.min_input_size}x{self.min_input_size} pixels")

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.act1(self.bn1(self.conv_stem(x)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass instead of storing them: less activation memory
        for about one more forward pass of compute; outputs, gradients and BN statistics stay those of a plain step."""
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and all stages: the final (num_features)-channel map."""
        x = self.forward_stem(x)
        for stage in self.blocks:
            x = run_stage(stage, x, self.grad_checkpointing)
        return x

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Sequence[int]] = None) -> list[torch.Tensor]:
        """Feature maps at the requested taps (default: `out_indices`)."""
        indices = self.out_indices if indices is None else tuple(indices)
        wanted = {self.feature_info_all[i].stage: i for i in indices}
        outputs: dict[int, torch.Tensor] = {}
        x = self.forward_stem(x)
        last = max(wanted)
        for stage_idx, stage in enumerate(self.blocks):
            x = run_stage(stage, x, self.grad_checkpointing)
            if stage_idx in wanted:
                outputs[wanted[stage_idx]] = x
            if stage_idx == last:
                break
        return [outputs[i] for i in indices]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        # Adaptive pools rather than mean/amax: the same numbers, exported as GlobalAveragePool / GlobalMaxPool,
        # which onnxruntime runs in its blocked layout (a ReduceMean costs two layout reorders there).
        if self.global_pool_type == "avg":
            return F.adaptive_avg_pool2d(x, 1)
        if self.global_pool_type == "max":
            return F.adaptive_max_pool2d(x, 1)
        return 0.5 * (F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pool -> 1x1 conv to 1280 (bias, or BN with head_norm) -> ReLU -> dropout -> classifier."""
        x = self.act2(self.norm_head(self.conv_head(self.pool(x)))).flatten(1)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_intermediates(x)
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (0 removes it)."""
        if self.features_only:
            raise ValueError("a features_only model has no classifier")
        self.num_classes = num_classes
        device = self.conv_head.weight.device
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes, device=device) if num_classes > 0 else nn.Identity()

    def reparameterize(self) -> "GhostNet":
        """Fuse v3's training branches in place (a no-op for v1/v2); returns self."""
        return reparameterize_model(self)
