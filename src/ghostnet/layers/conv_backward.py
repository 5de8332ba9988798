"""A convolution's backward in whichever of its exact forms oneDNN runs fastest for the shape, measured once.

For a stride-1, dilation-1 convolution y = conv(x, W, padding p), two of the backward's sums have a second form:

- the weight gradient is also the weight gradient of the transposed problem (a convolution from y's channels to x's,
  with the kernel transposed and flipped, whose input is the output gradient and whose output gradient is x);
- the input gradient is also a *forward* convolution of the output gradient with that transposed, flipped kernel
  (padding k - 1 - p): a full correlation either way.

They are the same sums in another order, and oneDNN's kernels for them differ: on an AVX-512 Xeon (torch 2.14,
2 threads, batch 128) the transposed weight gradient of 16 -> 8 channels at 32x32 takes half the time of the direct
one and that of 24 -> 12 more; the depthwise 8-channel input gradient as a forward convolution takes 0.28 ms against
0.48. Which of the (up to four) plans runs is therefore measured on the first backward of a shape on this machine
(`backward_plan`) and cached with the other measured choices (`ghostnet.tuning`), so that every step and every later
run computes the same sums. Used by the fused Ghost module (`ghostnet.layers.ghost_training`); equal to
`aten.convolution_backward` in float64 (tests/test_ghost_training.py).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import tuning
from .._version import __version__
from ..hardware import cpu_name

CL = torch.channels_last
CACHE_KIND = "conv-backward"
#: A plan other than oneDNN's own backward is kept only where it is at least this much faster (timing noise aside).
MIN_GAIN = 0.9

__all__ = ["BackwardPlan", "ConvGeometry", "DIRECT", "backward_plan", "conv_backward"]


@dataclass(frozen=True)
class ConvGeometry:
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "ConvGeometry":
        return cls(tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), conv.groups)

    def conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def backward(self, grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 mask: tuple[bool, bool]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """oneDNN's (ATen's) own backward: the gradients `mask` asks for, in one call."""
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, list(self.stride), list(self.padding), list(self.dilation), False, [0, 0],
            self.groups, [mask[0], mask[1], False])
        return grad_x, grad_w

    def _unit_steps(self, weight: torch.Tensor) -> bool:
        return (self.stride == (1, 1) and self.dilation == (1, 1)
                and all(p <= k - 1 for p, k in zip(self.padding, weight.shape[-2:])))

    def transposable(self, weight: torch.Tensor) -> bool:
        """Whether the weight gradient equals that of the transposed problem (`_transposed_weight_grad`)."""
        return self.groups == 1 and self._unit_steps(weight)

    def input_as_forward(self, weight: torch.Tensor) -> bool:
        """Whether the input gradient is a forward convolution (`_input_grad_as_forward`): stride and dilation 1, and
        a dense or depthwise (one filter per channel) kernel."""
        depthwise = weight.shape[0] == self.groups and weight.shape[1] == 1
        return (self.groups == 1 or depthwise) and self._unit_steps(weight)


def _transposed_kernel(weight: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """The kernel of the transposed problem: from the output's channels to the input's (per group), flipped."""
    swapped = weight if geometry.groups > 1 else weight.transpose(0, 1)  # depthwise: a filter per channel already
    return swapped.flip(2, 3).contiguous(memory_format=CL)


def _flipped_padding(weight: torch.Tensor, geometry: ConvGeometry) -> list[int]:
    return [k - 1 - p for k, p in zip(weight.shape[-2:], geometry.padding)]


def _transposed_weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                            geometry: ConvGeometry) -> torch.Tensor:
    """dW of the stride-1 convolution y = conv(x, W, padding p) as the weight gradient of the convolution from y's
    channels to x's with weight flip(W^T) and padding k - 1 - p, whose input is `grad` and whose output gradient
    is `x`: dW[o, i, a, b] = sum g[o, h, w] x[i, h + a - p, w + b - p] is the same sum either way."""
    grad_v = torch.ops.aten.convolution_backward(
        x, grad, _transposed_kernel(weight, geometry), None, [1, 1], _flipped_padding(weight, geometry), [1, 1],
        False, [0, 0], 1, [False, True, False])[1]
    return grad_v.transpose(0, 1).flip(2, 3).contiguous(memory_format=CL)


def _input_grad_as_forward(grad: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """dx of the stride-1 convolution y = conv(x, W, padding p) as the forward convolution of `grad` with flip(W^T)
    (per group) and padding k - 1 - p: dx[i, h, w] = sum g[o, h', w'] W[o, i, h - h' + p, w - w' + p] either way."""
    return F.conv2d(grad, _transposed_kernel(weight, geometry), None, 1, _flipped_padding(weight, geometry), 1,
                    geometry.groups)


@dataclass(frozen=True)
class BackwardPlan:
    """How a convolution's backward computes its two gradients: `input` "direct" (oneDNN's backward-data) or
    "forward" (`_input_grad_as_forward`); `weight` "direct" (oneDNN's backward-weights) or "transposed"
    (`_transposed_weight_grad`). Direct for both is one call."""

    input: str = "direct"
    weight: str = "direct"

    def __str__(self) -> str:
        return f"{self.input}+{self.weight}"


DIRECT = BackwardPlan()


def conv_backward(plan: BackwardPlan, grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                  geometry: ConvGeometry,
                  mask: tuple[bool, bool]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The input and weight gradients `mask` asks for (None for the others) of `geometry.conv(x, weight)`, computed
    as `plan` says (a plan `backward_plan` gave for these shapes)."""
    if (not mask[0] or plan.input == "direct") and (not mask[1] or plan.weight == "direct"):
        return geometry.backward(grad, x, weight, mask)  # one call
    grad_x = grad_w = None
    if mask[0]:
        grad_x = (_input_grad_as_forward(grad, weight, geometry) if plan.input == "forward"
                  else geometry.backward(grad, x, weight, (True, False))[0])
    if mask[1]:
        grad_w = (_transposed_weight_grad(grad, x, weight, geometry) if plan.weight == "transposed"
                  else geometry.backward(grad, x, weight, (False, True))[1])
    return grad_x, grad_w


def candidate_plans(weight: torch.Tensor, geometry: ConvGeometry) -> list[BackwardPlan]:
    """The plans that compute this convolution's gradients exactly, oneDNN's own first."""
    inputs = ["direct"] + (["forward"] if geometry.input_as_forward(weight) else [])
    weights = ["direct"] + (["transposed"] if geometry.transposable(weight) else [])
    return [BackwardPlan(i, w) for i in inputs for w in weights]


def _time_plans(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry,
                plans: list[BackwardPlan], rounds: int = 3) -> dict[str, float]:
    """Median seconds of each plan (both gradients) on these tensors: a warm-up each, then `rounds` interleaved."""
    times: dict[str, list[float]] = {str(plan): [] for plan in plans}
    for round_ in range(rounds + 1):
        for plan in plans:
            start = time.perf_counter()
            conv_backward(plan, grad, x, weight, geometry, (True, True))
            if round_:
                times[str(plan)].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _choose(times: dict[str, float]) -> str:
    fastest = min(times, key=times.get)
    return fastest if times[fastest] < MIN_GAIN * times[str(DIRECT)] else str(DIRECT)


_PLANS: dict[tuple, BackwardPlan] = {}


def _cache_key(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry) -> str:
    return tuning.cache_key({
        "device": cpu_name(), "aten_isa": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
        "ghostnet": __version__, "threads": torch.get_num_threads(), "dtype": str(x.dtype), "input": list(x.shape),
        "weight": list(weight.shape), "output": list(grad.shape), "padding": list(geometry.padding),
        "groups": geometry.groups})


def backward_plan(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry) -> BackwardPlan:
    """The fastest exact plan for this convolution's backward on this machine: measured on the first backward of a
    shape (a few milliseconds), then read from this process's memory or the tuning cache. Convolutions with no
    second form (strided, dilated, grouped) take oneDNN's own backward without a measurement."""
    # What can change within a process, looked up first (the full key, with the machine, only on a miss).
    seen = (x.dtype, tuple(x.shape), tuple(weight.shape), tuple(grad.shape), geometry, torch.get_num_threads(),
            torch.backends.cpu.get_cpu_capability())
    plan = _PLANS.get(seen)
    if plan is None:
        plans = candidate_plans(weight, geometry)
        by_name = {str(p): p for p in plans}
        if len(plans) == 1:
            plan = DIRECT
        else:
            key = _cache_key(grad, x, weight, geometry)
            name = tuning.load_choice(CACHE_KIND, key)
            if name not in by_name:
                name = _choose(_time_plans(grad, x, weight, geometry, plans))
                tuning.store_choice(CACHE_KIND, key, name)
            plan = by_name[name]
        _PLANS[seen] = plan
    return plan
