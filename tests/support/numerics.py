"""Parity checks for float32 outputs that mean the same on every CPU, and float64 checks where the candidate runs
in float64 too.

Why not a fixed tolerance: a float32 network's output carries rounding error whose size depends on the machine
(AVX-512 or AVX2 kernels, oneDNN's or MLAS's blocking, how many threads split a sum) as much as on the network. A
bound such as `max|onnx - eager| <= 1e-4`, tuned on one machine, failed on an AVX2-only EPYC where the float32
eager model itself was 9.5e-5 away from the exact (float64) function: the tolerance measured the machine, not the
exporter.

What these helpers do instead:

1. The truth is the same model run in float64 (a deep copy, `.double()`, on the input cast to float64). Float64
   rounding is 2**29 times finer than float32's, so even amplified by a deep network it sits many orders of
   magnitude below anything compared here.
2. The float32 eager model's own error against that truth, measured here and now, is the yardstick: it is what
   float32 rounding does to this model on this input with this machine's kernels.
3. A float32 candidate that computes the same function by another path (ONNX in onnxruntime, TorchScript,
   torch.export, the fused model, ...) goes through a similar number of float32 roundings in a different order, so
   its own error against the truth is of the same order: it must be within `FACTOR` times the eager error. The
   eager error is one sample, though, and can happen to be small; so the bound also has a floor of `ULPS` float32
   ulps of the output's scale (max |truth|). A real bug (a wrong or dropped weight, a missing bias, an unfolded
   batch norm) adds an error unrelated to rounding and fails the check unless it hides below float32 noise; the
   tests that add 1e-3 to a single weight (of millions) show that even that is caught.
4. Where the candidate can itself run in float64 (fusing, reparameterizing, converted or timm-loaded weights),
   there is no float32 noise to allow for: float64 against float64, within `FLOAT64_REL` of the output's scale.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7
EPS64 = torch.finfo(torch.float64).eps  # 2.22e-16

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
#: Float64 against float64, relative to the output's scale. Float64 rounding amplified by a deep, randomly initialized
#: network stays below 1e-12 (measured: at most 5e-13, ghost_resnet110_cifar fused); one weight off by 1e-3 moves a
#: GhostNet's output by 2e-7 of its scale or more; any float32 rounding in the candidate by about 1e-7.
FLOAT64_REL = 1e-10

# What ATen/oneDNN/MKL ISA caps cannot reproduce, and so what FACTOR's margin is for: onnxruntime (MLAS) picks its
# kernels from cpuid with no switch to hold it to AVX2, and its block sizes follow the ISA; oneDNN tiles by the
# cache sizes it reads from cpuid; MKL dispatches by CPU vendor as well as ISA; the thread count changes how
# reductions are split (the export tests run one thread); ARM CPUs run other kernels altogether.


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
    return t.detach().double().abs().max().item()


def max_error(got: torch.Tensor, expected: torch.Tensor) -> float:
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


def _log(what: str, text: str) -> None:
    """With $GHOSTNET_PARITY_LOG set, append each check's numbers there: the margins on a new machine, at a glance."""
    path = os.environ.get("GHOSTNET_PARITY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]}\t{what}\t{text}\n")


def assert_float32_parity(candidate: torch.Tensor, eager: torch.Tensor, reference: torch.Tensor, *,
                          factor: float = FACTOR, ulps: float = ULPS, what: str = "candidate") -> Parity:
    """Fail unless `candidate` is as close to `reference` as float32 rounding explains (see the module docstring)."""
    parity = float32_parity(candidate, eager, reference, factor=factor, ulps=ulps)
    _log(what, f"{parity.error / parity.bound:.3f} of the bound; {parity}")
    assert parity.ok, f"{what}: {parity}"
    return parity


def float64_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| relative to max |expected|."""
    return max_error(got, expected) / max(max_abs(expected), 1e-300)


def assert_float64_close(got: torch.Tensor, expected: torch.Tensor, *, rel: float = FLOAT64_REL,
                         what: str = "candidate") -> float:
    """Both float64: equal up to float64 rounding, i.e. within `rel` of the output's scale."""
    assert got.dtype == expected.dtype == torch.float64, (got.dtype, expected.dtype)
    error = float64_error(got, expected)
    _log(what, f"{error / rel:.3g} of the bound; float64 relative error {error:.3g}")
    assert error <= rel, f"{what}: relative error {error:.3g} > {rel:g} (float64 against float64)"
    return error


def corrupt_one_weight(model: nn.Module, delta: float = 1e-3, conv: int | str = 0) -> str:
    """Add `delta` to one element (centre tap of filter 0, input channel 0) of a conv's weight; return its name.

    `conv` is the conv's index among the model's Conv2d modules (0: the stem) or its module name. The smallest
    plausible bug, one wrong number among millions, for the tests that show a parity check can fail.
    """
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    name = conv if isinstance(conv, str) else list(convs)[conv]
    weight = convs[name].weight
    kh, kw = weight.shape[-2:]
    with torch.no_grad():
        weight[0, 0, kh // 2, kw // 2] += delta
    return f"{name}.weight"


def stored_logits_outputs(model: nn.Module, fixture) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(another framework's stored logits, our float32 logits, our float64 logits) on a fixture's batch
    (`fixture["input"]`, `fixture["logits"]`, numpy arrays).

    The other framework computed its logits in float32 on some other CPU; if our network computes the same function,
    their distance from the float64 truth is float32 rounding, of the size of our own float32 error.
    """
    eager, reference = eager_and_reference(model, torch.from_numpy(fixture["input"]))
    return torch.from_numpy(fixture["logits"]), eager, reference
