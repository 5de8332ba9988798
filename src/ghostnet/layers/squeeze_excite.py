"""Squeeze-and-Excitation as GhostNet uses it: hard-sigmoid gate, reduction rounded to a multiple of 4.

PaddleClas's GhostNet differs in two details that its weights depend on: the gate clips to [0, 1] (`ClipGate`) and
the reduction is `in_chs // 4` without rounding (`divisor=1`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .helpers import HardSigmoid, LayerFactory, make_act, make_divisible


class ClipGate(nn.Module):
    """clip(x, 0, 1): PaddleClas's SE gate (not a hard sigmoid: no +3, /6)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, 1.0)


SE_GATES: dict[str, type[nn.Module]] = {"hard_sigmoid": HardSigmoid, "clip": ClipGate}


class SqueezeExcite(nn.Module):
    """SE block; `rd_channels = make_divisible(in_chs * rd_ratio, 4)` so 72 channels reduce to 20, not 18."""

    def __init__(
        self,
        in_chs: int,
        rd_ratio: float = 0.25,
        divisor: int = 4,
        act_layer: LayerFactory = nn.ReLU,
        gate_layer: type[nn.Module] = HardSigmoid,
    ) -> None:
        super().__init__()
        rd_channels = make_divisible(in_chs * rd_ratio, divisor)
        self.conv_reduce = nn.Conv2d(in_chs, rd_channels, 1, bias=True)
        self.act1 = make_act(act_layer)
        self.conv_expand = nn.Conv2d(rd_channels, in_chs, 1, bias=True)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.conv_expand(self.act1(self.conv_reduce(x_se)))
        return x * self.gate(x_se)
