"""Channel alignment of a fused GhostNet: every tensor padded with zero channels to a multiple of 16.

onnxruntime's CPU provider runs convolutions in a blocked layout (NCHWc, 16 channels per block with AVX-512, 8 with
AVX2) and keeps tensors in it from one op to the next only when their channel counts are block multiples; any
other tensor is reordered out of the blocked layout and back around every Concat, Add and depthwise conv. GhostNet's
Ghost halves have 8, 12, 20, 36, 60, 92, ... channels, so a fused ghostnet_100 spends about a quarter of its
onnxruntime time in those reorders.

`align_channels` inserts zero channels so that every Ghost half (and SE hidden layer) is a block multiple. The
function computed is unchanged: padded channels are exactly zero everywhere (zero weights and biases in, zero
activations because ReLU(0) = 0, and zero weights out), and consumers ignore them. Each tensor's layout records
where its real channels sit inside the padded tensor.

Where a Ghost module's h intrinsic maps are not a block multiple (h = 8, 24, 36, ... in ghostnet_100), padding
each half separately wastes channels; where that waste is most of what the duplicates need, the module is written
in its single-path form instead (`FusedGhostModule.to_single_path`): the duplicated intrinsic maps fill channels
that padding would waste, the concat disappears, and in a bottleneck's second module onnxruntime fuses the
residual add into the last conv. On this project's CPU that takes 10-30% off GhostNet in onnxruntime
(docs/benchmarks.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn as nn

from ..layers.helpers import bias_or_zeros, conv_from
from . import machine
from .dfc import DeployDFC
from .fusion import FusedGhostBottleneck, FusedGhostModule, FusedSqueezeExcite

__all__ = ["AUTO", "Layout", "align_channels", "can_align", "nchwc_block_size", "resolve_alignment"]


#: `align_channels` / `--align-channels` value that picks the block of the CPU the export runs on.
AUTO = "auto"


def nchwc_block_size(isa: Optional[str] = None) -> int:
    """onnxruntime's NCHWc block on this CPU (or for `isa`): 16 with AVX-512, 8 on any other x86-64 CPU, 0 elsewhere
    (no blocked kernels to align for).

    Read from the CPU's flags (`machine.cpu_isa`), as onnxruntime's MLAS reads cpuid: 8 by default on x86-64, 16
    where AVX-512F is usable. Not from PyTorch's ATen capability, which ATEN_CPU_CAPABILITY=avx2 lowers without
    changing onnxruntime's kernels: an export aligned to 8 on an AVX-512 CPU leaves half its channel groups
    misaligned.
    """
    isa = machine.cpu_isa() if isa is None else isa
    return 16 if isa == "AVX-512" else 8 if isa in ("AVX2", "AVX", "SSE") else 0


def resolve_alignment(value: Union[int, str, None]) -> int:
    """A channel alignment from `AUTO` (or None): this CPU's NCHWc block; from an integer: itself (0: none)."""
    if value is None or value == AUTO:
        return nchwc_block_size()
    if isinstance(value, str) and not value.isdigit():
        raise ValueError(f"channel alignment must be an integer >= 0 or {AUTO!r}, got {value!r}")
    if int(value) < 0:
        raise ValueError(f"channel alignment must be an integer >= 0 or {AUTO!r}, got {value!r}")
    return int(value)


def _padded(channels: int, multiple: int) -> int:
    return math.ceil(channels / multiple) * multiple


@dataclass(frozen=True)
class Layout:
    """Real channel c of a tensor lives at padded position `positions[c]`; the padded tensor has `size` channels."""

    positions: tuple[int, ...]
    size: int

    @staticmethod
    def canonical(channels: int) -> "Layout":
        return Layout(tuple(range(channels)), channels)

    @staticmethod
    def padded(channels: int, multiple: int) -> "Layout":
        return Layout(tuple(range(channels)), _padded(channels, multiple))

    def concat(self, other: "Layout") -> "Layout":
        return Layout(self.positions + tuple(p + self.size for p in other.positions), self.size + other.size)

    def index(self, device: torch.device) -> torch.Tensor:
        return torch.tensor(self.positions, dtype=torch.long, device=device)


@torch.no_grad()
def _remap(conv: nn.Conv2d, inputs: Optional[Layout] = None, outputs: Optional[Layout] = None) -> nn.Conv2d:
    """A dense conv (groups=1) reading channels laid out as `inputs` and writing them laid out as `outputs`."""
    weight, bias = conv.weight, bias_or_zeros(conv)
    if inputs is not None:
        padded = weight.new_zeros(weight.shape[0], inputs.size, *weight.shape[2:])
        padded[:, inputs.index(weight.device)] = weight
        weight = padded
    if outputs is not None:
        padded = weight.new_zeros(outputs.size, *weight.shape[1:])
        padded[outputs.index(weight.device)] = weight
        padded_bias = bias.new_zeros(outputs.size)
        padded_bias[outputs.index(bias.device)] = bias
        weight, bias = padded, padded_bias
    return conv_from(conv, weight, bias, groups=1)


@torch.no_grad()
def _remap_depthwise(conv: nn.Conv2d, layout: Layout) -> nn.Conv2d:
    """A depthwise conv over channels laid out as `layout` (padded channels: zero filter, zero bias)."""
    index = layout.index(conv.weight.device)
    weight = conv.weight.new_zeros(layout.size, *conv.weight.shape[1:])
    weight[index] = conv.weight
    bias = conv.weight.new_zeros(layout.size)
    bias[index] = bias_or_zeros(conv)
    return conv_from(conv, weight, bias, groups=layout.size)


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels


def _keeps_zero(act: Optional[nn.Module]) -> bool:
    if act is None:
        return True
    zero = torch.zeros(1, 1, 1, 1)
    return bool(torch.equal(act(zero.clone()), zero))


def _ghost_ok(ghost: nn.Module) -> bool:
    """A fused Ghost module with s = 2, a depthwise cheap op, no output slice and zero-preserving activations."""
    return (isinstance(ghost, FusedGhostModule) and not ghost.sliced and ghost.primary.groups == 1
            and _is_depthwise(ghost.cheap) and ghost.cheap.in_channels == ghost.primary.out_channels
            and _keeps_zero(ghost.primary_act) and _keeps_zero(ghost.cheap_act)
            and (ghost.short_conv is None or (ghost.short_conv[0].groups == 1
                                              and all(_is_depthwise(c) for c in ghost.short_conv[1:]))))


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [block for stage in model.blocks[:-1] for block in stage]


def can_align(model: nn.Module) -> bool:
    """Whether `model` is a fused GhostNet classifier whose every block `align_channels` knows how to pad."""
    from ..models import GhostNet

    if not isinstance(model, GhostNet) or model.features_only:
        return False
    blocks = _blocks(model)
    last = list(model.blocks[-1])
    if not blocks or len(last) != 1 or not isinstance(getattr(last[0], "conv", None), nn.Conv2d):
        return False
    for block in blocks:
        if not (isinstance(block, FusedGhostBottleneck) and _ghost_ok(block.ghost1) and _ghost_ok(block.ghost2)):
            return False
        if block.conv_dw is not None and not _is_depthwise(block.conv_dw):
            return False
        if block.se is not None and not (isinstance(block.se, FusedSqueezeExcite) and _keeps_zero(block.se.act1)):
            return False
        if len(block.shortcut) not in (0, 2) or (len(block.shortcut) == 2 and not _is_depthwise(block.shortcut[0])):
            return False
    return True


#: The single-path form adds primary outputs (the duplicates, less the padding they replace), each costing per pixel
#: its conv's input channels x kernel area plus the cheap kernel's area in multiply-adds, and saves the concat, which
#: copies each of its channels once per pixel. It is chosen where the added multiply-adds are at most this many per
#: copied channel: measured in onnxruntime (AVX-512, 1 and 2 threads), 16 and 32 gave the same latencies on
#: ghostnet_050, ghostnet_100 and ghostnetv2_100 (10-30% below keeping every concat) and both kept ghostnet_130's
#: concats, where filling all the padding instead made it 14% slower.
MACS_PER_COPIED_CHANNEL = 32


def _use_single_path(ghost: FusedGhostModule, multiple: int, single_path: Optional[bool]) -> bool:
    """Whether the module is aligned in its single-path form (see `align_channels`)."""
    if ghost.single_path:
        return True
    if single_path is False or not ghost.can_be_single_path():
        return False
    if single_path:
        return True
    half = _padded(ghost.primary.out_channels, multiple)
    added = _padded(2 * ghost.primary.out_channels, multiple) - half  # primary outputs beyond the padded half
    if added >= half:  # no padding to fill: the duplicates would double the primary conv
        return False
    per_output = (_padded(ghost.primary.in_channels, multiple) * math.prod(ghost.primary.kernel_size)
                  + math.prod(ghost.cheap.kernel_size))
    return added * per_output <= MACS_PER_COPIED_CHANNEL * 2 * half


def _ghost_output_layout(ghost: FusedGhostModule, multiple: int, single: bool) -> Layout:
    if single:
        return Layout.padded(ghost.out_chs, multiple)
    half = Layout.padded(ghost.primary.out_channels, multiple)
    return half.concat(half)


def _form_for_layout(ghost: FusedGhostModule, layout: Layout, multiple: int, preferred: bool) -> bool:
    """The form (True: single path) whose output layout is `layout`, `preferred` where both are, for a module that
    must match its input (an identity shortcut adds them); ValueError if neither form gives it."""
    for single in (preferred, not preferred):
        possible = ghost.single_path or ghost.can_be_single_path() if single else not ghost.single_path
        if possible and _ghost_output_layout(ghost, multiple, single) == layout:
            return single
    raise ValueError(f"identity shortcut between different layouts: the block reads {layout.size} channels and no "
                     f"form of its last Ghost module writes them in that layout")


def _align_ghost(ghost: FusedGhostModule, inputs: Layout, multiple: int, single: bool) -> Layout:
    out = _ghost_output_layout(ghost, multiple, single)
    if single:
        if not ghost.single_path:
            ghost.to_single_path()
        ghost.primary = _remap(ghost.primary, inputs, out)
        ghost.cheap = _remap_depthwise(ghost.cheap, out)
    else:
        half = Layout.padded(ghost.primary.out_channels, multiple)
        ghost.primary = _remap(ghost.primary, inputs, half)
        ghost.cheap = _remap_depthwise(ghost.cheap, half)
    ghost.out_chs = out.size
    if ghost.short_conv is not None:
        convs = [_remap(ghost.short_conv[0], inputs, out)] + [_remap_depthwise(c, out) for c in ghost.short_conv[1:]]
        ghost.short_conv = DeployDFC(*convs)
    return out


def _align_block(block: FusedGhostBottleneck, inputs: Layout, multiple: int, single_path: Optional[bool]) -> Layout:
    mid = _align_ghost(block.ghost1, inputs, multiple, _use_single_path(block.ghost1, multiple, single_path))
    if block.conv_dw is not None:
        block.conv_dw = _remap_depthwise(block.conv_dw, mid)
    if block.se is not None:
        hidden = Layout.padded(block.se.conv_reduce.out_channels, multiple)
        block.se.conv_reduce = _remap(block.se.conv_reduce, mid, hidden)
        block.se.conv_expand = _remap(block.se.conv_expand, hidden, mid)
    if len(block.shortcut):
        out = _align_ghost(block.ghost2, mid, multiple, _use_single_path(block.ghost2, multiple, single_path))
        block.shortcut = nn.Sequential(_remap_depthwise(block.shortcut[0], inputs),
                                       _remap(block.shortcut[1], inputs, out))
    else:  # the residual stream keeps one layout: the form of the stage's first module decides
        preferred = _use_single_path(block.ghost2, multiple, single_path)
        out = _align_ghost(block.ghost2, mid, multiple, _form_for_layout(block.ghost2, inputs, multiple, preferred))
    return out


@torch.no_grad()
def align_channels(model: nn.Module, multiple: int = 16, single_path: Optional[bool] = None) -> nn.Module:
    """Pad every channel count of a fused GhostNet (from `fuse`) to a multiple of `multiple`, in place.

    `single_path`: write Ghost modules without their concat (`FusedGhostModule.to_single_path`) everywhere that
    applies (True), nowhere (False), or (None) where the duplicated maps mostly fill channels that padding would
    waste anyway: the 2h maps padded once take fewer channels than the two halves padded separately (h = 8, 24,
    36, ...) and the few primary outputs this adds cost less than the concat saves (`MACS_PER_COPIED_CHANNEL`).
    Modules already in single-path form stay so; along an identity shortcut every block follows the form of the
    stage's first, so that the residual stream keeps one layout.

    Raises ValueError when the model is not a fused GhostNet that `can_align` accepts.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if not can_align(model):
        raise ValueError(f"align_channels needs a fused GhostNet classifier (ghostnet.deploy.fuse of a registered "
                         f"GhostNet), got {type(model).__name__}")
    blocks = _blocks(model)
    # The stem writes what the first block reads; with an identity shortcut that must be the block's own layout.
    first = blocks[0].ghost2
    stem_layout = (_ghost_output_layout(first, multiple, _use_single_path(first, multiple, single_path))
                   if not len(blocks[0].shortcut) else Layout.canonical(model.conv_stem.out_channels))
    model.conv_stem = _remap(model.conv_stem, None, stem_layout)
    layout = stem_layout
    for block in blocks:
        layout = _align_block(block, layout, multiple, single_path)
    final = model.blocks[-1][0]
    final.conv = _remap(final.conv, layout, None)
    model.aligned_channels = multiple
    return model
