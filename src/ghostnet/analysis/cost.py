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

from ..constants import DTYPES
from ..layers.dynamic_conv import DynamicConv2d
from ..models.registry import input_size_of
from .g_ghost_cost import GGhostStageRow, g_ghost_rows, g_ghost_summary
from .ghost_cost import GhostModuleRow, ghost_rows, ghost_summary
from .macs import MacCounter
from .memory import (ForwardTrace, MeasuredPeak, PeakEstimate, estimate_peak, measure_peak, trace_forward,
                     weight_bytes)

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
        return ghost_summary(self.ghost_modules, self.macs)

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
        ghost_modules=ghost_rows(model, trace, subtree, batch_size),
        g_ghost_stages=g_ghost_rows(model, {path: f // 2 for path, f in subtree.items()}),
    )
