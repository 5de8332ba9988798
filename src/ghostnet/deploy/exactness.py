"""Whether a float32 candidate (an exported file, a rewritten form) computes the model's function, judged against a
float64 run of the model rather than a fixed tolerance.

A float32 network's output carries rounding error whose size depends on the machine (AVX-512 or AVX2 kernels,
oneDNN's or MLAS's blocking, how many threads split a sum) as much as on the network: a bound such as
`max|onnx - eager| <= 1e-4`, tuned on one machine, failed on an AVX2-only EPYC where the float32 eager model itself
was 9.5e-5 away from the exact function. So:

1. The truth is the same model run in float64 (a deep copy, `.double()`). Float64 rounding is 2**29 times finer
   than float32's; even amplified by a deep network it sits orders of magnitude below anything compared here.
2. The float32 eager model's own error against that truth, measured here and now, is the yardstick.
3. A float32 candidate computing the same function by another path goes through a similar number of roundings in
   another order, so its error must be within `FACTOR` times the eager error, with a floor of `ULPS` float32 ulps
   of the output's scale (the eager error is one sample and can happen to be tiny). A real bug (a wrong or dropped
   weight, a missing bias, an unfolded batch norm) adds an error unrelated to rounding and fails the check; the
   tests that add 1e-3 to one weight of millions show that even that is caught.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7

#: A float32 candidate's error may be this many times the float32 eager model's. Measured for every registered
#: model (tests/test_export.py inputs), natively (AVX-512) and with ATen, oneDNN and MKL held to AVX2: onnxruntime,
#: TorchScript, torch.export and fused float32 outputs were at most 2.6x the eager error (fused ghostnet_050_paddle on
#: AVX2; onnxruntime at most 2.2x), at most 0.53 of the whole bound. The AVX2 EPYC case that broke the fixed
#: tolerance was 0.6x (ghostnet_130_paddle: eager 9.5e-5, onnxruntime 5.5e-5 from float64).
FACTOR = 4.0
#: Floor of the float32 bound, in float32 ulps of the output's scale (eps32 * max|truth|): what cannot be told from
#: rounding when the eager error happens to be tiny. PaddleClas's stored logits are 8 ulps from our float64 run while
#: our float32 run is 2 ulps from it; shallow feature maps (an FPN's first tap) have eager errors of 1-2 ulps.
ULPS = 32.0

__all__ = ["EPS32", "FACTOR", "ULPS", "GroupedConvAsEinsum", "Parity", "eager_and_reference", "float32_parity",
           "float64_copy", "max_abs", "max_error", "run_float64"]


class GroupedConvAsEinsum(TorchFunctionMode):
    """Run float64 grouped convolutions as unfold + einsum.

    ATen has no fast float64 path for grouped convs on CPU and loops over the groups (55,000 conv calls for one
    ghostnetv3_160 forward); the einsum computes the same sums in another order, so a comparison is unchanged.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            x, weight = args[0], args[1]
            params = dict(zip(("bias", "stride", "padding", "dilation", "groups"), args[2:]), **kwargs)
            if params.get("groups", 1) > 1 and x.dtype == torch.float64 and not isinstance(params.get("padding"), str):
                return _grouped_conv(x, weight, **params)
        return func(*args, **kwargs)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _grouped_conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    n, _, h, w = x.shape
    out_chs, in_per_group, kh, kw = weight.shape
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    out_h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    cols = cols.view(n, groups, in_per_group * kh * kw, out_h * out_w)
    out = torch.einsum("ngkl,gok->ngol", cols, weight.reshape(groups, out_chs // groups, -1))
    out = out.reshape(n, out_chs, out_h, out_w)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 deep copy of `model` (the original is left alone)."""
    return copy.deepcopy(model).double()


def run_float64(model: nn.Module, x: torch.Tensor):
    """`model` (already float64) on `x` as float64, without gradients, grouped convs through einsum (fast)."""
    with torch.no_grad(), GroupedConvAsEinsum():
        return model(x.double())


def eager_and_reference(model: nn.Module, x: torch.Tensor):
    """(float32 eager output, float64 reference output) of `model` on `x`: the yardstick and the truth."""
    with torch.no_grad():
        eager = model(x)
    return eager, run_float64(float64_copy(model), x)


def max_abs(t: torch.Tensor) -> float:
    """max |t| in float64."""
    return t.detach().double().abs().max().item()


def max_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected|; AssertionError if their shapes differ."""
    if got.shape != expected.shape:
        raise AssertionError(f"shape {tuple(got.shape)} != expected {tuple(expected.shape)}")
    return max_abs(got.detach().double() - expected.detach().double())


@dataclass(frozen=True)
class Parity:
    """How far a float32 candidate is from the truth, against what float32 rounding alone explains."""

    error: float  # max |candidate - truth|
    eager_error: float  # max |float32 eager - truth|: this machine's float32 noise for this model and input
    scale: float  # max |truth|
    bound: float

    @property
    def ok(self) -> bool:
        """Within the bound (and finite)."""
        return math.isfinite(self.error) and self.error <= self.bound

    def __str__(self) -> str:
        return (f"error {self.error:.3g} vs bound {self.bound:.3g} (eager float32 error {self.eager_error:.3g}, "
                f"ratio {self.error / max(self.eager_error, 1e-300):.2f}; output scale {self.scale:.3g})")


def float32_parity(candidate: torch.Tensor, eager: torch.Tensor, reference: torch.Tensor, *,
                   factor: float = FACTOR, ulps: float = ULPS) -> Parity:
    """Compare a float32 candidate with the float64 `reference`, against the float32 `eager` output's own error."""
    eager_error = max_error(eager, reference)
    scale = max_abs(reference)
    bound = factor * eager_error + ulps * EPS32 * scale
    return Parity(max_error(candidate, reference), eager_error, scale, bound)
