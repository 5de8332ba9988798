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

import os

import torch
import torch.nn as nn

# The library's own check (ghostnet.deploy.exactness, which `--format auto` uses on every candidate) is the one the
# tests hold every export to; this module adds the assertions, the float64-against-float64 check and test helpers.
from ghostnet.deploy.exactness import (EPS32, FACTOR, ULPS, GroupedConvAsEinsum, Parity,  # noqa: F401 - re-exported
                                       eager_and_reference, float32_parity, float64_copy, max_abs, max_error,
                                       run_float64)

EPS64 = torch.finfo(torch.float64).eps  # 2.22e-16

#: Float64 against float64, relative to the output's scale. Float64 rounding amplified by a deep, randomly initialized
#: network stays below 1e-12 (measured: at most 5e-13, ghost_resnet110_cifar fused); one weight off by 1e-3 moves a
#: GhostNet's output by 2e-7 of its scale or more; any float32 rounding in the candidate by about 1e-7.
FLOAT64_REL = 1e-10


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


def assert_file_parity(model: nn.Module, path, x: torch.Tensor, what: str) -> Parity:
    """An exported file, loaded by its runtime at one thread, computes `model` on `x` within float32 rounding."""
    from ghostnet.deploy.export import load_exported

    eager, reference = eager_and_reference(model, x)
    got = load_exported(path, threads=1)(x)
    assert got.shape == eager.shape
    return assert_float32_parity(got, eager, reference, what=what)


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
