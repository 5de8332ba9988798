"""What the Ghost modules of a model cost: the paper's formulas (`formulas`) next to the counted values, per module.

A row per Ghost module that ran: its channels, kernels and map sizes, the formula's MACs and parameters beside
those counted on the module as built (every branch of a v3 training-form module), the ordinary convolution it
stands in for, and the bytes its concat needs. `profile()` builds them from one traced, counted forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch.nn as nn

from ..layers.helpers import conv_output_size
from . import formulas
from .memory import ForwardTrace

__all__ = ["GhostModuleRow", "ghost_modules", "ghost_rows", "ghost_summary", "is_ghost_module"]


@dataclass
class GhostModuleRow:
    """One Ghost module: the paper's formula next to the counted values."""

    path: str
    type: str
    in_chs: int  # c
    out_chs: int  # n
    init_chs: int  # intrinsic maps, ceil(n/s)
    new_chs: int  # ghost maps, (s-1) ceil(n/s)
    ratio: int  # s
    kernel_size: tuple[int, int]  # k
    dw_size: tuple[int, int]  # d
    cheap_groups: int
    stride: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    formula_macs: int
    counted_macs: int  # primary + cheap convolutions as built (all branches of a v3 training-form module)
    extra_macs: int  # everything else inside the module (GhostNetV2's DFC attention)
    ordinary_macs: int
    formula_params: int
    counted_params: int  # primary + cheap conv weights as built
    ordinary_params: int
    speedup: float  # r_s from the formula
    compression: float  # r_c from the formula
    paper_ratio: Optional[float]  # the closed form; None when the cheap op is not depthwise
    concat_eager_bytes: int  # intrinsic + ghost + concatenated tensors, all live at the concat
    concat_fused_bytes: int  # the concatenated tensor alone (what an in-place concat needs)
    blog_macs: int  # H W C n k^2 + H W n m k^2 (input size, n outputs, m intrinsic)
    blog_memory_bytes: int  # H W (n + m) 4


def is_ghost_module(module: nn.Module) -> bool:
    """True for GhostModule, GhostModuleV3 and anything else exposing their channel attributes."""
    return all(hasattr(module, a) for a in ("in_chs", "out_chs", "init_chs", "new_chs", "ratio", "dw_size"))


def ghost_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every Ghost module, in registration order."""
    return [(path, m) for path, m in model.named_modules() if is_ghost_module(m)]


def _first_conv(module: nn.Module, prefix: str) -> tuple[Optional[nn.Conv2d], list[str]]:
    """The first Conv2d under children named `prefix*`, and the paths (relative) of those children."""
    conv, names = None, []
    for name, child in module.named_children():
        if not name.startswith(prefix):
            continue
        names.append(name)
        for sub in child.modules():
            if conv is None and isinstance(sub, nn.Conv2d):
                conv = sub
    return conv, names


def ghost_rows(model: nn.Module, trace: ForwardTrace, subtree: dict[str, int], batch: int) -> list[GhostModuleRow]:
    """A row per Ghost module of `model` that ran in `trace`, from every module's subtree FLOPs (by module path)."""
    rows = []
    for path, module in ghost_modules(model):
        call = trace.modules.get(path)
        if call is None or call.input_shape is None:
            continue
        primary, primary_names = _first_conv(module, "primary")
        cheap, cheap_names = _first_conv(module, "cheap")
        if primary is None or cheap is None:
            continue
        in_hw = (call.input_shape[-2], call.input_shape[-1])
        out_hw = tuple(conv_output_size(size, k, s, p, d) for size, k, s, p, d in zip(
            in_hw, primary.kernel_size, primary.stride, primary.padding, primary.dilation))
        g = formulas.GhostGeometry(module.in_chs, module.out_chs, module.init_chs, module.new_chs, module.ratio,
                                   tuple(primary.kernel_size), tuple(cheap.kernel_size), out_hw,
                                   primary.groups, cheap.groups)
        prefix = f"{path}." if path else ""
        counted_flops = sum(subtree[prefix + name] for name in primary_names + cheap_names)
        counted_params = sum(sub.weight.numel() for name in primary_names + cheap_names
                             for sub in getattr(module, name).modules() if isinstance(sub, nn.Conv2d))
        concat = [op for op in trace.ops if op.module == path and op.name == "aten.cat"]
        concat_out = sum(nbytes for op in concat for _, nbytes in op.allocated)
        concat_in = sum(trace.sizes[sid] for op in concat for sid in set(op.reads))
        paper = (float(formulas.paper_ratio(g.in_chs // g.primary_groups, g.kernel_size[0] * g.kernel_size[1],
                                            g.ratio, g.dw_size[0] * g.dw_size[1])) if g.is_depthwise else None)
        rows.append(GhostModuleRow(
            path=path, type=type(module).__name__, in_chs=g.in_chs, out_chs=g.out_chs, init_chs=g.init_chs,
            new_chs=g.new_chs, ratio=g.ratio, kernel_size=g.kernel_size, dw_size=g.dw_size,
            cheap_groups=g.cheap_group_count, stride=primary.stride[0], in_hw=in_hw, out_hw=out_hw,
            formula_macs=formulas.ghost_macs(g, batch), counted_macs=counted_flops // 2,
            extra_macs=(subtree[path] - counted_flops) // 2,
            ordinary_macs=formulas.ordinary_conv_macs(g, batch),
            formula_params=formulas.ghost_params(g), counted_params=counted_params,
            ordinary_params=formulas.ordinary_conv_params(g),
            speedup=float(formulas.speedup_ratio(g)), compression=float(formulas.compression_ratio(g)),
            paper_ratio=paper, concat_eager_bytes=concat_in + concat_out, concat_fused_bytes=concat_out,
            blog_macs=batch * formulas.blog_macs(in_hw[0], in_hw[1], g.in_chs, g.out_chs, g.init_chs,
                                                 g.kernel_size[0]),
            blog_memory_bytes=batch * formulas.blog_memory_bytes(in_hw[0], in_hw[1], g.out_chs, g.init_chs),
        ))
    return rows


def ghost_summary(rows: list[GhostModuleRow], model_macs: int) -> dict[str, Any]:
    """Totals over all Ghost modules, and the model's MACs with ordinary convolutions in their place."""
    counted = sum(r.counted_macs for r in rows)
    ordinary = sum(r.ordinary_macs for r in rows)
    return dict(
        count=len(rows),
        formula_macs=sum(r.formula_macs for r in rows),
        counted_macs=counted,
        ordinary_macs=ordinary,
        blog_macs=sum(r.blog_macs for r in rows),
        formula_params=sum(r.formula_params for r in rows),
        counted_params=sum(r.counted_params for r in rows),
        ordinary_params=sum(r.ordinary_params for r in rows),
        model_macs_without_ghost=model_macs - counted + ordinary,
        concat_eager_bytes=max((r.concat_eager_bytes for r in rows), default=0),
    )
