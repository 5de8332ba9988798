"""The split form of a fused Ghost bottleneck: no concat between its two Ghost modules.

A fused bottleneck's first Ghost module outputs `cat(a, b)`, a the intrinsic maps and b the cheap maps, and every
op after it until the second Ghost module's primary conv reads channels one at a time or sums over them. So each
can read the halves separately, computing exactly the same numbers (up to the order of one float sum):

- the DFC gate (GhostNetV2/V3), computed from the block's input at low resolution: its 1x1 conv's output rows and its
  depthwise convs' channels split into a gate for a and one for b;
- the stride-2 depthwise conv: per channel, so one conv for a's channels and one for b's;
- SE: the pooled vector's reduce conv as two convs over the halves' means, summed (its columns split); the gate's
  expand conv as two convs (its rows split), one gate per half;
- the second Ghost module's primary conv: `conv(a, W[:, :na]) + conv(b, W[:, na:]) + bias`, which runtimes fuse into
  one conv with a summed input (onnxruntime's FusedConv Z input, OpenVINO's sum post-op).

The concat copies every channel of ghost1's output once per pixel; OpenVINO runs it with its `ref` kernel, and about
16% of a fused GhostNet's time went to concats in OpenVINO and onnxruntime (measurements: docs/deployment.md). The
split weights are ordinary Conv2d modules built once here: a state dict, an ONNX file or an OpenVINO model holds
them like any other conv, and nothing slices a weight at run time.

`split_ghost_concats(model)` rewrites, in place, every `FusedGhostBottleneck` for which `can_split` holds; the
blocks it cannot do exactly stay as they are (see `can_split`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.helpers import HardSigmoid, bias_or_zeros, conv_from
from ..layers.squeeze_excite import ClipGate
from ..layers.tracing import is_symbolic_tracing
from .dfc import DeployDFC, _resize_gate, dfc_pool_kernel
from .fusion import FusedGhostBottleneck, FusedGhostModule, FusedSqueezeExcite, _apply_act, _conv, _replace_modules

__all__ = ["GhostFromHalves", "GhostHalves", "SplitDFC", "SplitDepthwise", "SplitGhostBottleneck",
           "SplitSqueezeExcite", "can_split", "split_ghost_concats"]

#: SE gates that act on each number alone, so that gating each half with its own part is the same function.
_ELEMENTWISE_GATES = (HardSigmoid, nn.Hardsigmoid, nn.Sigmoid, ClipGate, nn.Hardtanh, nn.ReLU6)


def _is_depthwise(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels


def _rows(conv: nn.Conv2d, start: int, stop: int, groups: Optional[int] = None) -> nn.Conv2d:
    """The conv computing output channels [start, stop) of `conv` (its weight's rows, its bias's entries)."""
    bias = None if conv.bias is None else conv.bias[start:stop]
    return conv_from(conv, conv.weight[start:stop], bias, groups=groups)


def _depthwise_part(conv: nn.Conv2d, start: int, stop: int) -> nn.Conv2d:
    """A depthwise conv's channels [start, stop), as a depthwise conv of its own."""
    return _rows(conv, start, stop, groups=stop - start)


def _columns(conv: nn.Conv2d, start: int, stop: int, with_bias: bool) -> nn.Conv2d:
    """The dense conv reading only input channels [start, stop) of `conv`; the bias goes to one part only, so that
    the parts' sum is `conv`'s output."""
    return conv_from(conv, conv.weight[:, start:stop], bias_or_zeros(conv) if with_bias else None)


def _dfc_splits(dfc: nn.Module) -> bool:
    """A DeployDFC of a dense 1x1-style conv followed by depthwise convs: each output channel's gate depends on that
    channel's rows alone from the first conv on, so the gate splits into two gates by channel."""
    convs = list(dfc) if isinstance(dfc, DeployDFC) else []
    return (type(dfc) is DeployDFC and len(convs) >= 1 and isinstance(convs[0], nn.Conv2d) and convs[0].groups == 1
            and all(_is_depthwise(c) for c in convs[1:]))


def can_split(block: nn.Module) -> bool:
    """Whether `SplitGhostBottleneck` computes `block`'s function exactly without the concat after its first module.

    Left alone: anything but a `FusedGhostBottleneck`; a first Ghost module in single-path form (it has no concat) or
    sliced (its concat is cut to fewer channels than its halves hold, so b is not whole: the slice would stay); a DFC
    gate that is not a dense conv followed by depthwise convs (its channels would mix); a depthwise conv that is not
    per channel; an SE that is not the fused one or whose gate is not elementwise; a second Ghost module whose
    primary conv is grouped (its groups would straddle the halves) or which has a DFC gate of its own (computed from
    the concatenated input).
    """
    if type(block) is not FusedGhostBottleneck:
        return False
    g1, g2 = block.ghost1, block.ghost2
    if not (isinstance(g1, FusedGhostModule) and isinstance(g2, FusedGhostModule)):
        return False
    if g1.single_path or g1.sliced or (g1.short_conv is not None and not _dfc_splits(g1.short_conv)):
        return False
    channels = g1.primary.out_channels + g1.cheap.out_channels
    if block.conv_dw is not None and not (_is_depthwise(block.conv_dw) and block.conv_dw.in_channels == channels):
        return False
    se = block.se
    if se is not None and not (type(se) is FusedSqueezeExcite and se.conv_reduce.groups == 1
                               and (se.gate is None or isinstance(se.gate, _ELEMENTWISE_GATES))):
        return False
    return g2.short_conv is None and g2.primary.groups == 1 and g2.primary.in_channels == channels


def split_dfc_call(dfc: "SplitDFC", a: torch.Tensor, b: torch.Tensor, x: torch.Tensor):
    """`dfc(a, b, x)` as one opaque node of a `torch.fx` graph (its sizes are control flow, as in `dfc.DeployDFC`)."""
    return dfc(a, b, x)


torch.fx.wrap("split_dfc_call")


class SplitDFC(nn.Module):
    """A DeployDFC gate as two gates, one per Ghost half: the pooled input is shared, the first conv's rows and the
    depthwise convs' channels are split. `(a, b, x) -> (a * gate_a, b * gate_b)`, the deploy form's sizes."""

    def __init__(self, dfc: DeployDFC, split: int) -> None:
        super().__init__()
        first, *rest = list(dfc)
        total = first.out_channels
        self.a = nn.Sequential(_rows(first, 0, split), *[_depthwise_part(c, 0, split) for c in rest])
        self.b = nn.Sequential(_rows(first, split, total), *[_depthwise_part(c, split, total) for c in rest])

    def forward(self, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if is_symbolic_tracing():
            return split_dfc_call(self, a, b, x)
        height, width = int(x.shape[-2]), int(x.shape[-1])  # constants under torch.jit.trace, as in DeployDFC
        kernel = dfc_pool_kernel(height, width)
        pooled = F.avg_pool2d(x, kernel, kernel) if kernel != (1, 1) else x
        out_size = (int(a.shape[-2]), int(a.shape[-1]))
        return self._gated(self.a, pooled, a, out_size), self._gated(self.b, pooled, b, out_size)

    @staticmethod
    def _gated(convs: nn.Sequential, pooled: torch.Tensor, out: torch.Tensor,
               out_size: tuple[int, int]) -> torch.Tensor:
        gate = pooled
        for conv in convs:
            gate = _conv(conv, gate)
        gate = torch.sigmoid(gate)
        if gate.shape[-2:] == (1, 1):
            return out * gate
        return out * _resize_gate(gate, out_size)


class GhostHalves(nn.Module):
    """A Ghost module returning its halves `(a, b)` (intrinsic, cheap maps) instead of their concat, each gated by
    its part of the DFC gate where there is one."""

    def __init__(self, ghost: FusedGhostModule) -> None:
        super().__init__()
        self.primary, self.primary_act = ghost.primary, ghost.primary_act
        self.cheap, self.cheap_act = ghost.cheap, ghost.cheap_act
        self.split = ghost.primary.out_channels
        self.short_conv = None if ghost.short_conv is None else SplitDFC(ghost.short_conv, self.split)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = _apply_act(self.primary_act, _conv(self.primary, x))
        b = _apply_act(self.cheap_act, _conv(self.cheap, a))
        if self.short_conv is None:
            return a, b
        return self.short_conv(a, b, x)


class SplitDepthwise(nn.Module):
    """A depthwise conv over `cat(a, b)` as one depthwise conv per half."""

    def __init__(self, conv: nn.Conv2d, split: int) -> None:
        super().__init__()
        self.a = _depthwise_part(conv, 0, split)
        self.b = _depthwise_part(conv, split, conv.out_channels)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _conv(self.a, a), _conv(self.b, b)


class SplitSqueezeExcite(nn.Module):
    """A fused SE over `cat(a, b)` read as halves: the reduce conv's columns split (the halves' means, summed), the
    expand conv's rows split (a gate per half)."""

    def __init__(self, se: FusedSqueezeExcite, split: int) -> None:
        super().__init__()
        channels = se.conv_reduce.in_channels
        self.reduce_a = _columns(se.conv_reduce, 0, split, with_bias=False)
        self.reduce_b = _columns(se.conv_reduce, split, channels, with_bias=True)
        self.act1 = se.act1
        self.expand_a = _rows(se.conv_expand, 0, split)
        self.expand_b = _rows(se.conv_expand, split, channels)
        self.gate = se.gate  # None: hardsigmoid, as in FusedSqueezeExcite

    def _gate(self, s: torch.Tensor) -> torch.Tensor:
        return F.hardsigmoid(s) if self.gate is None else self.gate(s)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled_a, pooled_b = F.adaptive_avg_pool2d(a, 1), F.adaptive_avg_pool2d(b, 1)
        hidden = _apply_act(self.act1, _conv(self.reduce_a, pooled_a) + _conv(self.reduce_b, pooled_b))
        return a * self._gate(_conv(self.expand_a, hidden)), b * self._gate(_conv(self.expand_b, hidden))


class GhostFromHalves(nn.Module):
    """A Ghost module reading `cat(a, b)` as halves: its primary conv as two convs summed (its columns split, the
    bias in b's), then the module as fused (cheap op, concat of its own halves, slice, single-path form alike)."""

    def __init__(self, ghost: FusedGhostModule, split: int) -> None:
        super().__init__()
        channels = ghost.primary.in_channels
        self.primary_a = _columns(ghost.primary, 0, split, with_bias=False)
        self.primary_b = _columns(ghost.primary, split, channels, with_bias=True)
        self.primary_act, self.cheap, self.cheap_act = ghost.primary_act, ghost.cheap, ghost.cheap_act
        self.out_chs, self.sliced, self.single_path = ghost.out_chs, ghost.sliced, ghost.single_path

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x1 = _apply_act(self.primary_act, _conv(self.primary_a, a) + _conv(self.primary_b, b))
        if self.single_path:
            return _apply_act(self.cheap_act, _conv(self.cheap, x1))
        out = torch.cat([x1, _apply_act(self.cheap_act, _conv(self.cheap, x1))], dim=1)
        return out[:, : self.out_chs] if self.sliced else out


class SplitGhostBottleneck(nn.Module):
    """A fused Ghost bottleneck whose first module's halves go to the second module without a concat (module
    docstring); the same function as the `FusedGhostBottleneck` it is built from (`can_split` must hold)."""

    def __init__(self, block: FusedGhostBottleneck) -> None:
        super().__init__()
        if not can_split(block):
            raise ValueError("this bottleneck cannot be split exactly (see ghostnet.deploy.split.can_split)")
        with torch.no_grad():
            self.ghost1 = GhostHalves(block.ghost1)
            split = self.ghost1.split
            self.conv_dw = None if block.conv_dw is None else SplitDepthwise(block.conv_dw, split)
            self.se = None if block.se is None else SplitSqueezeExcite(block.se, split)
            self.ghost2 = GhostFromHalves(block.ghost2, split)
        self.shortcut = block.shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.ghost1(x)
        if self.conv_dw is not None:
            a, b = self.conv_dw(a, b)
        if self.se is not None:
            a, b = self.se(a, b)
        y = self.ghost2(a, b)
        for conv in self.shortcut:
            x = _conv(conv, x)
        return y + x


def split_ghost_concats(model: nn.Module) -> int:
    """Rewrite, in place, every fused Ghost bottleneck of `model` for which `can_split` holds into its split form
    (`SplitGhostBottleneck`); returns how many were rewritten. The model computes the same function."""
    # `model` itself is not replaced: nothing holds it here to swap it in (wrap a lone block in a Sequential)
    blocks = {module: SplitGhostBottleneck(module) for module in model.modules() if module is not model
              and can_split(module)}
    _replace_modules(model, blocks)
    return len(blocks)
