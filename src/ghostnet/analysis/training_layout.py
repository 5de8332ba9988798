"""The memory layout a model trains fastest in on this machine, chosen by timing a few real SGD steps.

Which layout trains fastest depends on the model and the CPU: channels-last made ResNet-56's step 1.3x faster and,
before its BatchNorms were folded (`ghostnet.layers.folded_norm`), Ghost-ResNet-56's 0.7x as fast; the batch fold
of small convolutions (`ghostnet.layers.folded_conv`, NCHW only) won on an AMD EPYC and loses to channels-last on
an Intel Xeon with AVX-512, and to plain NCHW there with PyTorch held to AVX2. So
`choose_training_layout` times each candidate (NCHW or channels-last; for a model with foldable convolutions, NCHW
with and without the fold; for a model with Ghost modules, channels-last with each Ghost module trained as one
autograd function, `ghostnet.layers.ghost_training`, about 5% faster for Ghost-ResNet-56 on the same Xeon and
level to 4% slower for GhostNet-1.0): a copy of the model and its own optimizer per candidate, so that the caller's
model, optimizer and RNG streams are untouched; one warm-up step each, then rounds in which every candidate takes
one step in a rotating order (so load from other processes hits all alike); the median step of each is compared.
Every candidate computes the same function; only the speed differs.

The choice is cached per CPU model, ATen ISA, torch and ghostnet versions, model, batch, input size, threads,
device and mixed precision (`ghostnet.tuning`, kind "train-layout"), so a second run does not measure again. On
CUDA the rule is channels-last (cuDNN's and every published GPU figure's layout; the fold is CPU-only), and a
compiled step keeps NCHW with the fold (Inductor chooses the layouts inside the graph itself; timing eager steps
would say nothing about it). In the analysis layer because the trainer (`ghostnet.train.layout`) and the
benchmark harness (`ghostnet bench --mode train`) both choose with it, and deployment may not import the trainer.
"""
from __future__ import annotations

import contextlib
import copy
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import tuning
from .._version import __version__
from ..hardware import cpu_name
from ..layers.folded_conv import has_folded_convs, set_batch_fold
from ..layers.folded_norm import set_norm_fold
from ..layers.ghost_training import has_fusable_ghost_modules, set_ghost_fusion

CACHE_KIND = "train-layout"
#: Timed steps per candidate after the warm-up (the median is compared), and warm-up steps.
DEFAULT_STEPS = 5
DEFAULT_WARMUP = 1
#: Medians closer than this (relative) are timed again, as many rounds: step times on a shared machine swing by
#: 5-15% from run to run, and a close call decided on five steps flipped between runs.
CLOSE_CALL = 0.05

__all__ = ["CACHE_KIND", "Layout", "LayoutChoice", "candidate_layouts", "choose_training_layout", "layout_key",
           "time_layouts"]


@dataclass(frozen=True)
class Layout:
    """How a model's training steps lay out their maps: channels-last or NCHW, whether the batch fold of its
    small convolutions is on (it only ever applies to NCHW maps, on CPU), and whether its Ghost modules train as
    one autograd function each (`ghostnet.layers.ghost_training`; channels-last CPU maps only)."""

    channels_last: bool = False
    batch_fold: bool = True
    fused_ghost: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        """The memory format of the weights and the input batches."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def name(self) -> str:
        """"channels-last", "channels-last-fused", "nchw" or "nchw-nofold"."""
        if self.channels_last:
            return "channels-last-fused" if self.fused_ghost else "channels-last"
        return "nchw" if self.batch_fold else "nchw-nofold"

    def apply(self, model: nn.Module) -> nn.Module:
        """Put `model` (in place) in this layout; returns it. Channels-last also folds the channels of its
        BatchNorms where ATen's channels-last kernel is slow (`ghostnet.layers.folded_norm`)."""
        model = set_norm_fold(model.to(memory_format=self.memory_format), self.channels_last)
        set_ghost_fusion(model, self.channels_last and self.fused_ghost)
        return set_batch_fold(model, self.batch_fold)

    @classmethod
    def from_name(cls, name: str) -> "Layout":
        """The layout called `name` (see `name`)."""
        layouts = {layout.name: layout
                   for layout in (cls(True), cls(True, True, True), cls(False, True), cls(False, False))}
        if name not in layouts:
            raise ValueError(f"unknown training layout {name!r}; expected one of {', '.join(layouts)}")
        return layouts[name]


@dataclass
class LayoutChoice:
    """A layout and how it was chosen: `source` is "measured", "cache", "rule" (CUDA, compiled, one candidate) or
    "setting" (the run's channels_last); `timings_ms` holds every candidate's median step where measured."""

    layout: Layout
    source: str
    reason: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    key: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (for metrics.jsonl, the checkpoint and the cache)."""
        return {"layout": self.layout.name, "channels_last": self.layout.channels_last,
                "batch_fold": self.layout.batch_fold, "fused_ghost": self.layout.fused_ghost, "source": self.source,
                "reason": self.reason,
                "timings_ms": dict(self.timings_ms), "key": dict(self.key)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Optional[str] = None) -> "LayoutChoice":
        """The choice `to_dict` wrote (with another `source` where given)."""
        layout = Layout(bool(data["channels_last"]), bool(data["batch_fold"]), bool(data.get("fused_ghost", False)))
        timings = {str(k): float(v) for k, v in dict(data.get("timings_ms") or {}).items()}
        return cls(layout, source or str(data["source"]), str(data.get("reason", "")), timings,
                   dict(data.get("key") or {}))

    def describe(self) -> str:
        """One line for the log: the layout, how it was chosen and the candidates' step times."""
        timings = ", ".join(f"{name} {ms:.0f} ms" for name, ms in self.timings_ms.items())
        how = f"{self.source}: {self.reason}" if self.reason else self.source
        return f"training layout {self.layout.name} ({how}" + (f"; step {timings})" if timings else ")")


def candidate_layouts(model: nn.Module) -> list[Layout]:
    """The layouts worth timing for `model` on its device: NCHW and channels-last, NCHW without the batch fold
    where the model has foldable convolutions, and channels-last with fused Ghost modules where it has Ghost modules
    that fuse (on CPU)."""
    layouts = [Layout(False, True)]
    if has_folded_convs(model):
        layouts.append(Layout(False, False))
    layouts.append(Layout(True, True))
    if has_fusable_ghost_modules(model):
        layouts.append(Layout(True, True, True))
    return layouts


def layout_key(model_name: str, example: torch.Tensor, amp: str, layouts: Sequence[Layout],
               extra: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """What a measured choice depends on: machine, software, model and workload (and the caller's `extra`)."""
    device = example.device
    where = cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
    key = {"device": where, "aten_isa": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
           "ghostnet": __version__, "model": model_name, "input": list(example.shape),
           "threads": torch.get_num_threads(), "amp": amp, "candidates": [layout.name for layout in layouts],
           **dict(extra or {})}
    return json.loads(json.dumps(key, default=str))  # plain types only (torch.__version__ is a str subclass)


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


def _step_fn(model: nn.Module, layout: Layout, example: torch.Tensor, targets: torch.Tensor,
             amp: str) -> Callable[[], None]:
    """One SGD step (forward, cross-entropy, backward, momentum update) of a copy of `model` in `layout`."""
    trial = layout.apply(copy.deepcopy(model))
    params = [p for p in trial.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    x = example.contiguous(memory_format=layout.memory_format)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(x.device, amp):
            loss = F.cross_entropy(trial(x).float(), targets)
        loss.backward()
        optimizer.step()

    return step


def time_layouts(model: nn.Module, example: torch.Tensor, targets: torch.Tensor, layouts: Sequence[Layout],
                 steps: int = DEFAULT_STEPS, warmup: int = DEFAULT_WARMUP, amp: str = "none",
                 timer: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds of each timed step of each layout (by name): warm-up steps first, then `steps` rounds in which every
    layout takes one step, in a rotating order. The caller's model and RNG streams are left as they were."""
    sync = torch.cuda.synchronize if example.device.type == "cuda" else (lambda: None)
    devices = [example.device] if example.device.type == "cuda" else []
    times: dict[str, list[float]] = {layout.name: [] for layout in layouts}
    with torch.random.fork_rng(devices=devices):  # dropout in the trial steps draws from a forked stream
        runs = [(layout.name, _step_fn(model, layout, example, targets, amp)) for layout in layouts]
        for _ in range(warmup):
            for _, step in runs:
                step()
        for round_index in range(steps):
            shift = round_index % len(runs)
            for name, step in runs[shift:] + runs[:shift]:
                sync()
                start = timer()
                step()
                sync()
                times[name].append(timer() - start)
    return times


def _targets(model: nn.Module, example: torch.Tensor, num_classes: Optional[int]) -> torch.Tensor:
    if num_classes is None:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            num_classes = int(copy.deepcopy(model)(example[:2]).shape[-1])
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, num_classes, (example.shape[0],), generator=generator).to(example.device)


def choose_training_layout(model: nn.Module, example: torch.Tensor, targets: Optional[torch.Tensor] = None,
                           num_classes: Optional[int] = None, *, model_name: Optional[str] = None,
                           amp: str = "none", compiled: bool = False, steps: int = DEFAULT_STEPS,
                           warmup: int = DEFAULT_WARMUP, use_cache: bool = True,
                           layouts: Optional[Sequence[Layout]] = None, key_extra: Optional[Mapping[str, Any]] = None,
                           timer: Callable[[], float] = time.perf_counter) -> LayoutChoice:
    """The layout `model` (on its device, in the mode it trains in) trains fastest in with batches like `example`
    (module docstring). `targets` (or `num_classes`, or the model's output size) give the loss; `model_name` and
    `key_extra` key the cache (default name: the class and parameter count); `layouts` replaces the candidates."""
    if example.device.type == "cuda":
        return LayoutChoice(Layout(True), "rule", "CUDA trains channels-last")
    if compiled:
        return LayoutChoice(Layout(False, True), "rule", "compiled: Inductor lays out the graph itself")
    layouts = list(layouts or candidate_layouts(model))
    if len(layouts) == 1:
        return LayoutChoice(layouts[0], "rule", "the only candidate")
    name = model_name or f"{type(model).__name__}:{sum(p.numel() for p in model.parameters())}"
    key = layout_key(name, example, amp, layouts, key_extra)
    text_key = tuning.cache_key(key)
    cached = tuning.load_choice(CACHE_KIND, text_key) if use_cache else None
    if isinstance(cached, dict):
        try:
            return LayoutChoice.from_dict(cached, source="cache")
        except (KeyError, TypeError, ValueError):
            pass  # an entry of another form: measure again
    targets = targets if targets is not None else _targets(model, example, num_classes)
    times = time_layouts(model, example, targets, layouts, steps, warmup, amp, timer)
    fastest, second = sorted(statistics.median(values) for values in times.values())[:2]
    if second < fastest * (1 + CLOSE_CALL):  # within the noise of a shared machine: as many rounds again
        for name, values in time_layouts(model, example, targets, layouts, steps, warmup, amp, timer).items():
            times[name] += values
    medians = {name: 1e3 * statistics.median(values) for name, values in times.items()}
    best = min(layouts, key=lambda layout: medians[layout.name])
    rounds = len(times[best.name])
    choice = LayoutChoice(best, "measured", f"fastest of {len(layouts)} by the median of {rounds} steps", medians, key)
    if use_cache:
        tuning.store_choice(CACHE_KIND, text_key, choice.to_dict())
    return choice
