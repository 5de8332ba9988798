"""`profile()`: parameters, multiply-accumulates, bytes and memory per layer, per stage and in total.

Operation counts come from the one counter (`macs.MacCounter`, PyTorch's `FlopCounterMode`) and its per-module
attribution: PyTorch's count by construction, conv + linear multiply-accumulates as in the paper and
docs/cost-analysis.md.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Union

import torch
import torch.nn as nn

from ..layers.dynamic_conv import DynamicConv2d
from ..models.registry import input_size_of
from . import formulas
from .g_ghost_cost import GGhostStageRow, g_ghost_rows, g_ghost_summary
from .macs import MacCounter
from .memory import (ForwardTrace, MeasuredPeak, PeakEstimate, estimate_peak, measure_peak, trace_forward,
                     weight_bytes)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ROOT = "(model)"  # display name of ops run by the model's own forward


@dataclass
class LayerRow:
    """One leaf module, or the ops a container runs itself (a concat, an add, a pooling mean)."""

    path: str
    type: str
    stage: str
    ops: str  # distinct ATen ops, comma-separated
    output_shape: Optional[tuple[int, ...]]
    params: int
    macs: int
    flops: int
    bytes_written: int  # output bytes the layer's ops write (in-place results included, views not)
    bytes_allocated: int  # new memory those outputs take (0 for in-place ops and views)


@dataclass
class StageRow:
    """Totals of one stage (stem, each top-level block, head) and its peak live activation bytes."""

    name: str
    output_shape: Optional[tuple[int, ...]]
    params: int
    macs: int
    flops: int
    bytes_written: int
    peak_live_bytes: int


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


@dataclass
class MemorySummary:
    """Weights and activation memory of one inference pass at the profiled batch size and dtype."""

    device: str
    param_bytes: int
    buffer_bytes: int
    input_bytes: int
    output_bytes: int
    peak_estimated_bytes: int
    peak_op: str  # "aten.cat in blocks.1.0.ghost1"
    peak_measured_bytes: Optional[int] = None  # activation tensors (kernel scratch left out on CPU)
    peak_allocator_bytes: Optional[int] = None  # every allocation, scratch included
    measure_method: Optional[str] = None


@dataclass
class Profile:
    """The result of `profile()`: per-layer rows, per-stage totals, Ghost modules, memory and totals."""

    model: str
    input_size: tuple[int, int, int]
    batch_size: int
    dtype: str
    params: int
    macs: int
    flops: int
    memory: MemorySummary
    stages: list[StageRow] = field(default_factory=list)
    layers: list[LayerRow] = field(default_factory=list)
    ghost_modules: list[GhostModuleRow] = field(default_factory=list)
    g_ghost_stages: list[GGhostStageRow] = field(default_factory=list)

    def ghost_summary(self) -> dict[str, Any]:
        """Totals over all Ghost modules, and the model's MACs with ordinary convolutions in their place."""
        rows = self.ghost_modules
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
            model_macs_without_ghost=self.macs - counted + ordinary,
            concat_eager_bytes=max((r.concat_eager_bytes for r in rows), default=0),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists for tuples), ready for JSON."""
        data = asdict(self)
        data["ghost_summary"] = self.ghost_summary()
        data["g_ghost_summary"] = g_ghost_summary(self.g_ghost_stages, self.macs)
        return data


def build_model(spec: str) -> nn.Module:
    """The model a spec names (NAME, timm:NAME, torchvision:NAME or package.module:callable), random weights."""
    from ..models.spec import create_from_spec

    return create_from_spec(spec)


def stage_names(model: nn.Module) -> Callable[[str], str]:
    """Map a module path to its stage.

    Every child of a top-level `Sequential`/`ModuleList` of blocks is a stage ("blocks.3", "features.12"); other
    top-level containers are one stage each ("classifier"); top-level leaves before the first container are the
    "stem", those after it the "head". A dynamic convolution (ParameterNet's stem) is one layer, not a container,
    although its routing and experts are child modules.
    """
    def has_children(module: nn.Module) -> bool:
        return not isinstance(module, DynamicConv2d) and any(True for _ in module.children())

    stages: dict[str, str] = {}
    seen_container = False
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and any(has_children(c) for c in child):
            stages[name] = "*"
            seen_container = True
        elif has_children(child):
            stages[name] = name
            seen_container = True
        else:
            stages[name] = "head" if seen_container else "stem"

    def stage_of(path: str) -> str:
        if not path:
            return ROOT
        parts = path.split(".")
        stage = stages.get(parts[0], parts[0])
        if stage == "*":
            return ".".join(parts[:2])
        return stage

    return stage_of


def _resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _check_input_size(input_size: Any, batch_size: int) -> tuple[int, int, int]:
    size = tuple(input_size)
    if len(size) != 3 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ValueError(f"input_size must be three positive integers (C, H, W), got {input_size!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return size  # type: ignore[return-value]


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _subtree_flops(model: nn.Module, flops: dict[str, int]) -> dict[str, int]:
    """FLOPs of every module's subtree.  A container that is never called itself (a ModuleList) gets no entry
    from the counter, so its subtree is the sum of its children's."""
    totals: dict[str, int] = {}

    def visit(path: str, module: nn.Module) -> int:
        children = sum(visit(f"{path}.{name}" if path else name, child) for name, child in module.named_children())
        totals[path] = flops.get(path, children)
        return totals[path]

    visit("", model)
    return totals


def _layer_rows(model: nn.Module, trace: ForwardTrace, subtree: dict[str, int],
                stage_of: Callable[[str], str]) -> list[LayerRow]:
    ops_by_module: dict[str, list] = {}
    for op in trace.ops:
        ops_by_module.setdefault(op.module, []).append(op)
    rows: list[tuple[int, LayerRow]] = []
    unrun_order = len(trace.ops)
    for path, module in model.named_modules():
        children = [f"{path}.{name}" if path else name for name, _ in module.named_children()]
        own_flops = subtree[path] - sum(subtree[child] for child in children)
        own_ops = ops_by_module.get(path, [])
        params = _own_params(module)
        if children and not own_ops and not params and not own_flops:
            continue
        call = trace.modules.get(path)
        if call is None and not params:
            continue  # never ran and owns nothing (e.g. a placeholder Identity)
        # A leaf's output is the module's output; a container row's output is its last own op's.
        shape = call.output_shape if call is not None and not children else None
        written = sum(op.bytes_written for op in own_ops)
        allocated = sum(nbytes for op in own_ops for _, nbytes in op.allocated)
        # Ops that neither read nor write anything (BN's empty saved-statistics tensors) are left out of the list.
        names = ",".join(dict.fromkeys(op.name.removeprefix("aten.") for op in own_ops
                                       if op.reads or op.bytes_written))
        row = LayerRow(path or ROOT, type(module).__name__, stage_of(path), names, shape, params,
                       own_flops // 2, own_flops, written, allocated)
        order = own_ops[0].index if own_ops else call.first_op if call is not None else unrun_order
        rows.append((order, row))
    rows.sort(key=lambda item: item[0])
    return [row for _, row in rows]


def _stage_rows(layers: list[LayerRow], trace: ForwardTrace, peak: PeakEstimate,
                stage_of: Callable[[str], str]) -> list[StageRow]:
    stages: dict[str, StageRow] = {}
    for row in layers:
        stage = stages.setdefault(row.stage, StageRow(row.stage, None, 0, 0, 0, 0, 0))
        stage.params += row.params
        stage.macs += row.macs
        stage.flops += row.flops
        stage.bytes_written += row.bytes_written
        if row.output_shape is not None:
            stage.output_shape = row.output_shape
    for op in trace.ops:
        stage = stages.get(stage_of(op.module))
        if stage is not None:
            stage.peak_live_bytes = max(stage.peak_live_bytes, peak.live_bytes[op.index])
    for name, stage in stages.items():
        call = trace.modules.get(name)
        if call is not None and call.output_shape is not None:
            stage.output_shape = call.output_shape
    return list(stages.values())


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


def _ghost_rows(model: nn.Module, trace: ForwardTrace, subtree: dict[str, int], batch: int) -> list[GhostModuleRow]:
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
        out_hw = tuple(formulas.conv_output_size(size, k, s, p, d) for size, k, s, p, d in zip(
            in_hw, primary.kernel_size, primary.stride, primary.padding, primary.dilation))
        g = formulas.GhostGeometry(module.in_chs, module.out_chs, module.init_chs, module.new_chs, module.ratio,
                                   tuple(primary.kernel_size), tuple(cheap.kernel_size), out_hw,
                                   primary.groups, cheap.groups)
        join = (lambda name: f"{path}.{name}") if path else (lambda name: name)
        counted_flops = sum(subtree[join(name)] for name in primary_names + cheap_names)
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


def _model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The model's `pretrained_cfg["input_size"]` where it has one, else (3, 224, 224)."""
    return input_size_of(model)


def profile(
    model: Union[nn.Module, str],
    input_size: Optional[tuple[int, int, int]] = None,
    batch_size: int = 1,
    dtype: Union[str, torch.dtype] = torch.float32,
    measure_memory: bool = True,
) -> Profile:
    """Profile one inference pass of `model` (an nn.Module or a `build_model` spec) on its device.

    `input_size` is (C, H, W); by default the model's own (`default_input_size`).  The model is not changed:
    it runs in eval mode (its mode is restored) and a copy is cast when `dtype` differs from its parameters'.
    On the meta device nothing is computed (counts and the lifetime estimate need shapes only) and memory is
    not measured; `measure_memory=False` skips the measured pass elsewhere too.
    """
    name = model if isinstance(model, str) else getattr(model, "model_name", type(model).__name__)
    if isinstance(model, str):
        model = build_model(model)
    input_size = _check_input_size(default_input_size(model) if input_size is None else input_size, batch_size)
    torch_dtype = _resolve_dtype(dtype)
    float_params = [p for p in model.parameters() if p.is_floating_point()]
    if any(p.dtype != torch_dtype for p in float_params):
        model = copy.deepcopy(model).to(torch_dtype)
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(batch_size, *input_size, device=device, dtype=torch_dtype)
        try:
            with MacCounter(model) as counter:  # one pass under both the flop counter and the lifetime tracer
                trace = trace_forward(model, x)
            flops, total_flops = counter.flops_by_module(), counter.get_total_flops()
        except RuntimeError as exc:
            # Almost always an input the network cannot take (too small, wrong channels): say which.
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{name} cannot run on input {tuple(x.shape)}: {first_line}") from exc
        peak = estimate_peak(trace)
        measured: Optional[MeasuredPeak] = None
        if measure_memory and device.type in ("cpu", "cuda"):
            measured = measure_peak(model, x)
    finally:
        model.train(was_training)

    stage_of = stage_names(model)
    subtree = _subtree_flops(model, flops)  # every module's FLOPs, its children's included
    layers = _layer_rows(model, trace, subtree, stage_of)
    param_bytes, buffer_bytes = weight_bytes(model)
    peak_op = trace.ops[peak.peak_op] if peak.peak_op >= 0 else None
    memory = MemorySummary(
        device=str(device), param_bytes=param_bytes, buffer_bytes=buffer_bytes,
        input_bytes=x.numel() * x.element_size(),
        output_bytes=sum(trace.sizes[sid] for sid in trace.output_ids),
        peak_estimated_bytes=peak.peak_bytes,
        peak_op=f"{peak_op.name} in {peak_op.module or ROOT}" if peak_op is not None else "",
        peak_measured_bytes=measured.activation_bytes if measured else None,
        peak_allocator_bytes=measured.allocator_bytes if measured else None,
        measure_method=measured.method if measured else None,
    )
    return Profile(
        model=name, input_size=input_size, batch_size=batch_size, dtype=str(torch_dtype).removeprefix("torch."),
        params=sum(p.numel() for p in model.parameters()), macs=total_flops // 2, flops=total_flops,
        memory=memory, stages=_stage_rows(layers, trace, peak, stage_of), layers=layers,
        ghost_modules=_ghost_rows(model, trace, subtree, batch_size),
        g_ghost_stages=g_ghost_rows(model, {path: f // 2 for path, f in subtree.items()}),
    )
