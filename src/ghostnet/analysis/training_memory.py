"""Memory of one training step: what the forward pass keeps for backward, per stage, and the step's measured peak.

Training needs far more memory than inference because every layer's inputs (or outputs) stay alive until the
backward pass uses them; in a Ghost module the intrinsic and ghost maps before and after their batch norms and the
concatenated map (the next layer's input) are all kept. Two views:

* `saved_by_module`: the tensors autograd saves for backward (`torch.autograd.graph.saved_tensors_hooks`), each
  storage counted once and given to the top-level module (stage) whose forward saved it; parameters are left out
  (they are the weights). With gradient checkpointing, a checkpointed stage saves nothing here: what it keeps is
  its input, which is in the measured numbers.
* `retained_bytes` / `peak_bytes`: measured from the allocator (CUDA statistics, or the profiler's memory events
  on CPU): the activation memory alive when backward starts, and the peak of the whole forward + backward above
  what was allocated before the step (gradients included, kernel scratch included).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn

from .memory import _allocation_events, _quiet_native_stderr, live_bytes, weight_bytes

BACKWARD_MARK = "ghostnet::backward"  # profiler range around the backward pass


@dataclass
class TrainingMemory:
    """Memory of one SGD step (momentum) on a batch; bytes."""

    batch_size: int
    input_size: tuple[int, ...]
    grad_checkpointing: bool
    weights_bytes: int
    gradient_bytes: int
    momentum_bytes: int
    autocast: Optional[str] = None  # mixed-precision dtype of the forward pass, if any
    saved_by_module: dict[str, int] = field(default_factory=dict)
    retained_bytes: int = 0
    peak_bytes: int = 0
    method: str = ""

    @property
    def saved_bytes(self) -> int:
        return sum(self.saved_by_module.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists for tuples), ready for JSON, with the saved total."""
        return {**asdict(self), "input_size": list(self.input_size), "saved_bytes": self.saved_bytes}


@contextlib.contextmanager
def _saved_tensor_attribution(model: nn.Module, totals: dict[str, int], depth: int = 2) -> Iterator[None]:
    """Add the bytes of every tensor saved for backward to `totals` under the innermost running module whose
    qualified name has at most `depth` parts ("blocks.3", "layer1.0", "conv_stem"); "(model)" for the rest."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    current: list[str] = []

    def enter(name: str):
        return lambda *_: current.append(name)

    def leave(*_):
        current.pop()

    handles = []
    for name, module in model.named_modules():
        if name and name.count(".") < depth:
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in param_storages and key not in seen and storage.nbytes() > 0:
            seen.add(key)
            owner = current[-1] if current else "(model)"
            totals[owner] = totals.get(owner, 0) + storage.nbytes()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
    finally:
        for handle in handles:
            handle.remove()


def _step(model: nn.Module, x: torch.Tensor, optimizer: torch.optim.Optimizer, autocast_dtype=None,
          backward_context=contextlib.nullcontext) -> None:
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = model(x)
    loss = (out if isinstance(out, torch.Tensor) else torch.stack([o.float().mean() for o in out])).float().mean()
    with backward_context():
        loss.backward()
    optimizer.step()


def training_memory(model: nn.Module, input_size: tuple[int, int, int], batch_size: int = 32,
                    grad_checkpointing: bool = False, device: str = "cpu",
                    autocast_dtype: Optional[torch.dtype] = None) -> TrainingMemory:
    """Measure one training step of `model` (train mode, SGD with momentum, a mean-of-outputs loss) on a random
    batch, in float32 or with mixed precision (`autocast_dtype`, e.g. torch.bfloat16; weights stay float32).
    The model is changed (its gradients, its BN statistics and one SGD step); pass a copy to keep it."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = model.to(device).train()
    if grad_checkpointing:
        from ..layers.checkpointing import set_grad_checkpointing

        set_grad_checkpointing(model)
    x = torch.randn(batch_size, *input_size, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    params, _ = weight_bytes(model)
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    result = TrainingMemory(batch_size, tuple(input_size), grad_checkpointing, params, grads, grads,
                            autocast=None if autocast_dtype is None else str(autocast_dtype).replace("torch.", ""))

    # Attribution pass (also creates the momentum buffers, so that the measured step below allocates no state).
    with _saved_tensor_attribution(model, result.saved_by_module):
        _step(model, x, optimizer, autocast_dtype)
    optimizer.zero_grad(set_to_none=True)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        at_backward: list[int] = []

        @contextlib.contextmanager
        def note_allocated() -> Iterator[None]:
            at_backward.append(torch.cuda.memory_allocated(x.device))
            yield

        _step(model, x, optimizer, autocast_dtype, note_allocated)
        torch.cuda.synchronize(x.device)
        result.retained_bytes = at_backward[0] - base
        result.peak_bytes = torch.cuda.max_memory_allocated(x.device) - base
        result.method = "torch.cuda.memory_allocated / max_memory_allocated"
        return result
    if x.device.type != "cpu":
        raise ValueError(f"memory can be measured on CPU or CUDA, not on {x.device.type!r}")
    from torch.profiler import ProfilerActivity, profile, record_function

    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(model, x, optimizer, autocast_dtype, lambda: record_function(BACKWARD_MARK))
    result.retained_bytes, result.peak_bytes = _live_at_mark_and_peak(prof, BACKWARD_MARK)
    result.method = "torch.profiler memory events (CPU)"
    return result


def _live_at_mark_and_peak(prof, mark: str) -> tuple[int, int]:
    """(bytes live when the op named `mark` starts, peak bytes) over the profiled window, from allocator events."""
    start = None
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.name == mark:
            start = node.start_time_ns if start is None else min(start, node.start_time_ns)
        stack.extend(node.children)
    if start is None:
        raise RuntimeError(f"profiler mark {mark!r} not found")
    live = peak = 0
    live_at_mark = None
    for time_ns, live_now, _ in live_bytes(_allocation_events(prof)):
        if live_at_mark is None and time_ns >= start:
            live_at_mark = live  # before this event
        live, peak = live_now, max(peak, live_now)
    return (live if live_at_mark is None else live_at_mark), peak
