"""ghostify(): turn any CNN into its Ghost twin, optionally starting from the trained model's filters.

Every eligible `nn.Conv2d` becomes a *linear* `GhostModule` (no activation inside) with the same input and output
channels, kernel, stride, padding and dilation, so every output shape stays the same and the activation that
followed the convolution still follows it. A Ghost module carries its own BatchNorms; when the forward pass shows
that a convolution's output goes straight into a plain `BatchNorm2d` (the usual conv -> BN pair), that BN is
absorbed (replaced by `nn.Identity`) rather than stacked twice. Convolutions the module cannot stand in for
(grouped or depthwise ones, subclasses with their own `forward`) are named in the report and left alone; so are,
by default, the stem, small layers, layers where the Ghost module would cost more, and convolutions on 1x1 maps.

Eligibility, BN pairs and MACs come from one forward pass on an example input (batch 1, eval mode); MACs are
counted with `torch.utils.flop_counter` (FLOPs / 2), the paper's convention.
"""
from __future__ import annotations

import copy
import fnmatch
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from ..analysis.macs import MacCounter
from ..constants import DEFAULT_INPUT_SIZE
from ..layers import ghost_channels
from ..layers.swap import ghost_module_like, replace_module, unconvertible_reason
from ..models.registry import input_size_of
from .filter_init import init_from_conv_

#: Norms that may be absorbed into a Ghost module: exactly these classes (a subclass such as timm's
#: BatchNormAct2d does more than normalise, so it stays after the Ghost module).
ABSORBABLE_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)
_GLOB_CHARS = frozenset("*?[")

__all__ = ["GhostifyReport", "ReplacedLayer", "ghostify"]


@dataclass(frozen=True)
class ReplacedLayer:
    """One convolution that became a Ghost module, with its cost before and after (MACs for the example input)."""

    name: str
    in_chs: int
    out_chs: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    norm: Optional[str]  # the BatchNorm absorbed into the Ghost module (now nn.Identity), if any
    params_before: int
    params_after: int
    macs_before: float
    macs_after: float

    @property
    def mac_ratio(self) -> float:
        """MACs before / after: the paper's speed-up ratio r_s for this layer."""
        return self.macs_before / self.macs_after if self.macs_after else math.inf


@dataclass
class GhostifyReport:
    """What ghostify() did: the layers replaced, those left alone (with the reason) and the totals."""

    ratio: int
    dw_size: int
    input_shape: tuple[int, ...]
    replaced: list[ReplacedLayer] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    macs_before: float = 0.0
    macs_after: float = 0.0

    @property
    def replaced_names(self) -> list[str]:
        """Names of the convolutions that became Ghost modules."""
        return [layer.name for layer in self.replaced]

    def summary(self) -> str:
        """A human-readable table of the replaced layers, the skipped ones and the totals."""
        lines = [f"ghostify s={self.ratio} d={self.dw_size} on input {tuple(self.input_shape)}",
                 f"{'layer':<40} {'in':>5} {'out':>5} {'k':>5} {'MACs before':>12} {'after':>12} {'ratio':>6}"]
        for r in self.replaced:
            kernel = "x".join(map(str, r.kernel_size))
            lines.append(f"{r.name:<40} {r.in_chs:>5} {r.out_chs:>5} {kernel:>5} {r.macs_before / 1e6:>11.2f}M "
                         f"{r.macs_after / 1e6:>11.2f}M {r.mac_ratio:>6.2f}")
        for name, reason in self.skipped.items():
            lines.append(f"{name:<40} left alone: {reason}")
        lines.append(f"replaced {len(self.replaced)} of {len(self.replaced) + len(self.skipped)} convolutions; "
                     f"params {self.params_before / 1e6:.3f}M -> {self.params_after / 1e6:.3f}M, "
                     f"MACs {self.macs_before / 1e6:.1f}M -> {self.macs_after / 1e6:.1f}M")
        return "\n".join(lines)


@dataclass
class _Probe:
    """What one forward pass showed about the model."""

    order: list[str]                       # convolutions in the order they first ran
    in_sizes: dict[str, tuple[int, ...]]   # spatial size of each convolution's input
    norm_after: dict[str, str]             # convolution -> the BN that took its output directly
    macs: dict[str, float]                 # MACs per module name ("" is the whole model)
    out_shapes: Any


def count_params(module: nn.Module) -> int:
    """Number of parameters (shared ones once)."""
    return sum(p.numel() for p in module.parameters())


def ghost_saves_macs(conv: nn.Conv2d, ratio: int, dw_size: int) -> bool:
    """True if the Ghost module costs fewer MACs per output pixel than `conv` (the paper's r_s > 1)."""
    init_chs, new_chs = ghost_channels(conv.out_channels, ratio)
    dense = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return init_chs * dense + new_chs * dw_size * dw_size < conv.out_channels * dense


def _shapes(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (list, tuple)):
        return [_shapes(o) for o in out]
    if isinstance(out, dict):
        return {k: _shapes(v) for k, v in out.items()}
    return None


def _probe(model: nn.Module, x: torch.Tensor) -> _Probe:
    """Run `model` once (eval mode, no grad) recording conv order, input sizes, conv -> BN pairs and MACs."""
    conv_names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    norm_names = {m: n for n, m in model.named_modules() if type(m) in ABSORBABLE_NORMS}
    order: list[str] = []
    in_sizes: dict[str, tuple[int, ...]] = {}
    calls: Counter = Counter()
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    fed: dict[str, list[str]] = {}

    def after_conv(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        name = conv_names[module]
        if name not in in_sizes:
            order.append(name)
            in_sizes[name] = tuple(args[0].shape[2:])
        calls[name] += 1
        produced[id(out)] = (name, out)  # holding the tensor keeps its id from being reused

    def before_norm(module: nn.Module, args: tuple) -> None:
        name = norm_names[module]
        calls[name] += 1
        hit = produced.get(id(args[0]))
        if hit is not None and hit[1] is args[0]:
            fed.setdefault(hit[0], []).append(name)

    handles = [m.register_forward_hook(after_conv) for m in conv_names]
    handles += [m.register_forward_pre_hook(before_norm) for m in norm_names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), MacCounter(model) as counter:
            out = model(x)
    except Exception as err:
        raise ValueError(f"could not run the model on an input of shape {tuple(x.shape)} ({type(err).__name__}: "
                         f"{err}); pass example_input= with an input the model accepts") from err
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    # A pair is only absorbed when both ran exactly once and the BN saw nothing but this conv's output.
    norm_after = {conv: norms[0] for conv, norms in fed.items()
                  if len(norms) == 1 and calls[conv] == 1 and calls[norms[0]] == 1}
    macs = {path: flops / 2 for path, flops in counter.flops_by_module().items()}
    macs[""] = counter.get_total_flops() / 2
    return _Probe(order, in_sizes, norm_after, macs, _shapes(out))


def _default_input(model: nn.Module, first_conv: nn.Conv2d) -> torch.Tensor:
    """Zeros of the model's configured input size (`input_size_of`), else the first conv's channels x 224 x 224."""
    size = input_size_of(model, default=(first_conv.in_channels,) + DEFAULT_INPUT_SIZE[1:])
    return torch.zeros(1, *size, device=first_conv.weight.device, dtype=first_conv.weight.dtype)


def _select(convs: dict[str, nn.Conv2d], patterns: Optional[Sequence[str]], what: str) -> set[str]:
    """Names matched by `patterns` (exact names or shell-style globs); a pattern that matches nothing is an error."""
    if patterns is None:
        return set()
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen: set[str] = set()
    for pattern in patterns:
        hits = {n for n in convs if fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            import difflib

            close = difflib.get_close_matches(pattern, list(convs), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"{what} entry {pattern!r} matches no nn.Conv2d of the model{hint}")
        chosen |= hits
    return chosen


def _check_args(ratio: int, dw_size: int, min_channels: int) -> None:
    if isinstance(ratio, bool) or int(ratio) != ratio or ratio < 2:
        raise ValueError(f"ratio s must be an integer >= 2, got {ratio!r}")
    if isinstance(dw_size, bool) or int(dw_size) != dw_size or dw_size < 1 or dw_size % 2 == 0:
        raise ValueError(f"dw_size d must be a positive odd integer, got {dw_size!r}")
    if min_channels < 1:
        raise ValueError(f"min_channels must be >= 1, got {min_channels}")


def _policy_reason(name: str, conv: nn.Conv2d, probe: _Probe, stem: Optional[str], ratio: int, dw_size: int,
                   min_channels: int) -> Optional[str]:
    """Why the default policy leaves a convertible convolution alone (explicit include= overrides this)."""
    if name == stem:
        return "stem (the first convolution run); name it in include= to convert it"
    if name not in probe.in_sizes:
        return "not run by the forward pass on the example input"
    if conv.out_channels < min_channels:
        return f"{conv.out_channels} output channels < min_channels={min_channels}"
    if all(side == 1 for side in probe.in_sizes[name]):
        return "runs on a 1x1 map (squeeze-excitation or classifier); a cheap d x d operation has no neighbours there"
    if not ghost_saves_macs(conv, ratio, dw_size):
        return f"a Ghost module would cost more MACs (in_channels x k x k = " \
               f"{conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]} against d x d = {dw_size * dw_size})"
    return None


def _plan(convs: dict[str, nn.Conv2d], probe: _Probe, report: GhostifyReport, included: Optional[set[str]],
          explicit: set[str], excluded: set[str], checks: dict[str, Any]) -> list[str]:
    """The convolutions to replace, in order; every other one gets its reason in `report.skipped`.

    `included` is None when everything is a candidate; `explicit` names (no glob) override the default policy and
    make an unconvertible convolution an error.
    """
    plan = []
    for name, conv in convs.items():
        if name in excluded:
            report.skipped[name] = "excluded"
        elif included is not None and name not in included:
            report.skipped[name] = "not matched by include"
        elif (reason := unconvertible_reason(conv)) is not None:
            if name in explicit:
                raise ValueError(f"cannot ghostify {name!r}: {reason}")
            report.skipped[name] = reason
        elif name not in explicit and (reason := _policy_reason(name, conv, probe, **checks)) is not None:
            report.skipped[name] = reason
        else:
            plan.append(name)
    return plan


def ghostify(
    model: nn.Module,
    ratio: int = 2,
    dw_size: int = 3,
    include: Optional[Sequence[str]] = None,
    exclude: Optional[Sequence[str]] = None,
    min_channels: int = 16,
    init_from_weights: bool = False,
    example_input: Optional[torch.Tensor] = None,
    inplace: bool = False,
) -> tuple[nn.Module, GhostifyReport]:
    """Replace the eligible convolutions of `model` by Ghost modules; returns (model, report).

    Args:
        ratio, dw_size: the Ghost module's s and d.
        include: module names or shell-style globs of the convolutions to consider (default: all). An exact name
            is an explicit request: it overrides the default policy (stem, min_channels, cost, 1x1 maps) and a
            convolution that cannot be converted (grouped, depthwise, custom forward) raises ValueError.
        exclude: names or globs to leave alone (wins over include).
        min_channels: convolutions with fewer output channels are left alone.
        init_from_weights: start from `model`'s filters (see `init_from_conv_`) instead of a fresh He init.
        example_input: the input for the forward pass that finds conv -> BN pairs and counts MACs (default: zeros
            of `model.pretrained_cfg["input_size"]`, or the first conv's channels at 224 x 224).
        inplace: modify `model` itself rather than a deep copy.
    """
    _check_args(ratio, dw_size, min_channels)
    if not inplace:
        model = copy.deepcopy(model)
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d to ghostify")
    included = _select(convs, include, "include")
    explicit = {p for p in ([include] if isinstance(include, str) else include or []) if not _GLOB_CHARS & set(p)}
    excluded = _select(convs, exclude, "exclude")
    x = example_input if example_input is not None else _default_input(model, next(iter(convs.values())))

    before = _probe(model, x)
    stem = before.order[0] if before.order else None
    report = GhostifyReport(int(ratio), int(dw_size), tuple(x.shape), params_before=count_params(model),
                            macs_before=before.macs[""])
    checks = dict(stem=stem, ratio=ratio, dw_size=dw_size, min_channels=min_channels)
    plan = _plan(convs, before, report, included if include is not None else None, explicit, excluded, checks)

    pending = []
    for name in plan:
        conv = convs[name]
        norm_name = before.norm_after.get(name)
        norm = model.get_submodule(norm_name) if norm_name else None
        ghost = ghost_module_like(conv, ratio, dw_size, ordered=init_from_weights)
        if init_from_weights:
            init_from_conv_(ghost, conv, norm)
        params_before = count_params(conv) + (count_params(norm) if norm is not None else 0)
        replace_module(model, name, ghost)
        if norm_name:
            replace_module(model, norm_name, nn.Identity())
        pending.append((name, conv, norm_name, params_before, count_params(ghost)))

    after = _probe(model, x)
    if after.out_shapes != before.out_shapes:
        raise RuntimeError(f"ghostify changed the output shape from {before.out_shapes} to {after.out_shapes}; "
                           "please report this model")
    for name, conv, norm_name, params_before, params_after in pending:
        report.replaced.append(ReplacedLayer(
            name, conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride), norm_name,
            params_before, params_after, before.macs.get(name, 0.0), after.macs.get(name, 0.0)))
    report.params_after = count_params(model)
    report.macs_after = after.macs[""]
    return model, report
