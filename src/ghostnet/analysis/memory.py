"""Activation memory of an inference pass: a tensor-lifetime trace, the peak it implies, and a measured peak.

The trace records every ATen op of one forward pass (through a `TorchDispatchMode`) with the module that ran it,
the storages it read and the storages it allocated.  From it, `estimate_peak` replays eager PyTorch's memory:
a storage is allocated by the op that creates it and freed after the later of

* its last use by any op, and
* the return of every module call that received it as an argument (`Module.__call__` holds its arguments for
  the whole call, which is why, for example, a `Sequential`'s input lives until the whole `Sequential` returns).

`measure_peak` runs the pass again and reads the allocator: on CUDA `torch.cuda.max_memory_allocated`; on CPU the
PyTorch profiler's memory events.  On CPU it reports two numbers: the peak of all allocations, and the peak of
activation tensors only, leaving out scratch buffers that a kernel allocates and frees inside one op (oneDNN
copies a convolution's input into its blocked layout, for example).  Only the second is comparable to the
lifetime estimate, which sees tensors, not kernel internals.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


def _storage_key(t: torch.Tensor) -> int:
    # The StorageImpl's address: shared by views and in-place results, and defined on the meta device too
    # (where every data pointer is 0).
    return t.untyped_storage()._cdata


@dataclass
class OpRecord:
    """One ATen op of the traced pass."""

    index: int
    name: str  # e.g. "aten.cat"
    module: str  # path of the innermost module running it ("" for the model itself)
    reads: list[int]  # storage ids read (only storages created during the pass)
    allocated: list[tuple[int, int]]  # (storage id, bytes) of new storages
    bytes_written: int  # bytes of output tensors that are not views (in-place outputs included)


@dataclass
class ModuleCall:
    """Where a module ran in the trace (the first call's shapes; op range over all calls)."""

    first_op: int
    last_op: int
    input_shape: Optional[tuple[int, ...]]
    output_shape: Optional[tuple[int, ...]]
    calls: int = 1


@dataclass
class ForwardTrace:
    """Everything `estimate_peak` and the cost report need from one forward pass."""

    ops: list[OpRecord] = field(default_factory=list)
    sizes: dict[int, int] = field(default_factory=dict)  # storage id -> bytes
    last_use: dict[int, int] = field(default_factory=dict)  # storage id -> index of the last op touching it
    pinned_until: dict[int, int] = field(default_factory=dict)  # storage id -> last op of a call holding it
    output_ids: set[int] = field(default_factory=set)
    modules: dict[str, ModuleCall] = field(default_factory=dict)


class _LifetimeTracer(TorchDispatchMode):
    """Records ops and storage lifetimes.  Holds no tensor: keeping one would change the lifetimes it measures."""

    def __init__(self, trace: ForwardTrace) -> None:
        super().__init__()
        self.trace = trace
        self.module_stack: list[str] = [""]
        self._key_to_id: dict[int, int] = {}

    def storage_id(self, t: torch.Tensor) -> Optional[int]:
        return self._key_to_id.get(_storage_key(t))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        in_keys = {_storage_key(t) for t in _tensors((args, kwargs))}
        out = func(*args, **kwargs)
        trace, index = self.trace, len(self.trace.ops)
        reads = [self._key_to_id[k] for k in in_keys if k in self._key_to_id]
        allocated: list[tuple[int, int]] = []
        written = 0
        for t in _tensors(out):
            storage = t.untyped_storage()
            key, nbytes = storage._cdata, storage.nbytes()
            if not func.is_view:
                written += t.numel() * t.element_size()
            if key in in_keys or nbytes == 0:
                continue  # a view or an in-place result: no new memory
            sid = len(trace.sizes)
            # A new storage may reuse the address of one already freed; the address now names the new one.
            self._key_to_id[key] = sid
            trace.sizes[sid] = nbytes
            allocated.append((sid, nbytes))
        for sid in reads + [sid for sid, _ in allocated]:
            trace.last_use[sid] = index
        name = str(func.overloadpacket) if hasattr(func, "overloadpacket") else str(func)
        trace.ops.append(OpRecord(index, name, self.module_stack[-1], reads, allocated, written))
        return out


def _first_shape(obj: Any) -> Optional[tuple[int, ...]]:
    tensors = _tensors(obj)
    return tuple(tensors[0].shape) if tensors else None


@contextlib.contextmanager
def _module_hooks(model: nn.Module, tracer: _LifetimeTracer) -> Iterator[None]:
    """Track the running module (for attribution) and pin module arguments until the call returns."""
    trace, handles = tracer.trace, []
    pins: list[list[int]] = []

    def pre_hook(path: str):
        def hook(module, args, kwargs):
            tracer.module_stack.append(path)
            pins.append([sid for sid in map(tracer.storage_id, _tensors((args, kwargs))) if sid is not None])
            call = trace.modules.get(path)
            if call is None:
                trace.modules[path] = ModuleCall(len(trace.ops), len(trace.ops) - 1, _first_shape(args), None, 0)
            trace.modules[path].calls += 1

        return hook

    def post_hook(path: str):
        def hook(module, args, output):
            tracer.module_stack.pop()
            last = len(trace.ops) - 1
            for sid in pins.pop():
                trace.pinned_until[sid] = max(trace.pinned_until.get(sid, -1), last)
            call = trace.modules[path]
            call.last_op = last
            if call.output_shape is None:
                call.output_shape = _first_shape(output)

        return hook

    try:
        for path, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(pre_hook(path), with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook(path), always_call=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def trace_forward(model: nn.Module, x: torch.Tensor) -> ForwardTrace:
    """Run `model(x)` once under the lifetime tracer and return the trace (the output is dropped)."""
    trace = ForwardTrace()
    tracer = _LifetimeTracer(trace)
    with _module_hooks(model, tracer), tracer:
        out = model(x)
        trace.output_ids = {sid for sid in map(tracer.storage_id, _tensors(out)) if sid is not None}
    return trace


@dataclass(frozen=True)
class PeakEstimate:
    """Peak live activation bytes of the traced pass, the op where it happens, and live bytes after each op."""

    peak_bytes: int
    peak_op: int
    live_bytes: tuple[int, ...]  # live bytes while each op runs (its inputs and new outputs all held)


def estimate_peak(trace: ForwardTrace) -> PeakEstimate:
    """Replay allocations and frees of the trace (see the module docstring for the lifetime rule)."""
    frees: dict[int, list[int]] = {}
    end = len(trace.ops)
    for sid in trace.sizes:
        if sid in trace.output_ids:
            continue  # the result outlives the pass
        freed_after = max(trace.last_use.get(sid, -1), trace.pinned_until.get(sid, -1))
        frees.setdefault(min(freed_after, end - 1), []).append(sid)
    live, peak, peak_op, timeline = 0, 0, -1, []
    for op in trace.ops:
        live += sum(nbytes for _, nbytes in op.allocated)
        timeline.append(live)
        if live > peak:
            peak, peak_op = live, op.index
        live -= sum(trace.sizes[sid] for sid in frees.get(op.index, ()))
    return PeakEstimate(peak, peak_op, tuple(timeline))


@dataclass(frozen=True)
class MeasuredPeak:
    """Peak memory measured on the device.

    `activation_bytes` leaves out allocations freed inside the op that made them (kernel scratch); on CUDA both
    numbers are `max_memory_allocated` over the baseline, scratch included.
    """

    activation_bytes: int
    allocator_bytes: int
    method: str


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence fd 2 for the profiling window: Kineto writes start/stop banners there on every session."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _allocation_events(prof: torch.profiler.profile) -> list[tuple[int, int, int, Optional[int]]]:
    """(time, ptr, bytes (+alloc/-free), id of the enclosing top-level op) for every allocator event."""
    events: list[tuple[int, int, int, Optional[int]]] = []
    stack = [(node, None) for node in prof.profiler.kineto_results.experimental_event_tree()]
    while stack:
        node, root = stack.pop()
        fields = node.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation":
            events.append((node.start_time_ns, fields.ptr, fields.alloc_size, root))
            continue
        node_root = root if root is not None else node.id
        stack.extend((child, node_root) for child in node.children)
    events.sort(key=lambda e: e[0])
    return events


def _peaks_from_events(events: list[tuple[int, int, int, Optional[int]]]) -> tuple[int, int]:
    """(activation peak, allocator peak) from time-ordered allocator events."""
    owner: dict[int, tuple[Optional[int], int, int]] = {}  # ptr -> (root op, bytes, alloc index)
    transient: set[int] = set()
    for i, (_, ptr, nbytes, root) in enumerate(events):
        if nbytes > 0:
            owner[ptr] = (root, nbytes, i)
        elif ptr in owner:
            alloc_root, _, alloc_index = owner.pop(ptr)
            if alloc_root is not None and alloc_root == root:
                transient.add(alloc_index)
    peak_all = peak_act = 0
    for _, live_all, live_act in live_bytes(events, transient):
        peak_all, peak_act = max(peak_all, live_all), max(peak_act, live_act)
    return peak_act, peak_all


def live_bytes(events: list[tuple[int, int, int, Optional[int]]],
               scratch: frozenset[int] | set[int] = frozenset()) -> Iterator[tuple[int, int, int]]:
    """(time, bytes live, bytes live less the `scratch` allocations) after each of the time-ordered allocator events,
    counting only frees of blocks allocated inside the window; `scratch` holds indices of allocation events."""
    live_all = live_act = 0
    open_blocks: dict[int, tuple[int, bool]] = {}
    for i, (time_ns, ptr, nbytes, _) in enumerate(events):
        if nbytes > 0:
            is_scratch = i in scratch
            open_blocks[ptr] = (nbytes, is_scratch)
            live_all += nbytes
            live_act += 0 if is_scratch else nbytes
        elif ptr in open_blocks:
            size, is_scratch = open_blocks.pop(ptr)
            live_all -= size
            live_act -= 0 if is_scratch else size
        yield time_ns, live_all, live_act


@torch.no_grad()
def measure_peak(model: nn.Module, x: torch.Tensor) -> MeasuredPeak:
    """Measure the peak memory of `model(x)` above what was allocated before the call (input excluded)."""
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        out = model(x)
        torch.cuda.synchronize(x.device)
        peak = torch.cuda.max_memory_allocated(x.device) - base
        del out
        return MeasuredPeak(peak, peak, "torch.cuda.max_memory_allocated")
    if x.device.type != "cpu":
        raise ValueError(f"memory can be measured on CPU or CUDA, not on {x.device.type!r}")
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = model(x)
        del out  # freed inside the window, like every other tensor of the pass but the result
    activation, allocator = _peaks_from_events(_allocation_events(prof))
    return MeasuredPeak(activation, allocator, "torch.profiler memory events (CPU)")


def weight_bytes(model: nn.Module) -> tuple[int, int]:
    """(parameter bytes, buffer bytes), each shared tensor counted once."""
    params = {id(p): p.numel() * p.element_size() for p in model.parameters()}
    buffers = {id(b): b.numel() * b.element_size() for b in model.buffers()}
    return sum(params.values()), sum(buffers.values())
