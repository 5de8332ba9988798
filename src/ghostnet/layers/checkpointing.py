"""Gradient checkpointing that leaves batch-norm statistics as an ordinary training step leaves them.

`torch.utils.checkpoint` runs a checkpointed module twice in training: once in the forward pass and again in the
backward pass to rebuild the activations it did not store. A batch norm in training mode updates its running
mean and variance on every call, so plain checkpointing (timm's `set_grad_checkpointing`, for one) moves them twice
per step, and a checkpointed model ends training with other statistics than the same run without it. Here the
recomputation restores the buffers it touched, so the step's outputs, gradients and running statistics are those of
the step without checkpointing.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .tracing import is_symbolic_tracing


@contextlib.contextmanager
def batchnorm_stats_kept(module: nn.Module) -> Iterator[None]:
    """Whatever runs inside leaves the running statistics (and batch counts) of `module`'s batch norms unchanged."""
    saved = [(buffer, buffer.clone()) for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats
             for buffer in (m.running_mean, m.running_var, m.num_batches_tracked) if buffer is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def checkpointed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` without storing its inner activations: they are recomputed in the backward pass, with the
    same random numbers (dropout) and without a second update of batch-norm statistics."""
    if torch.compiler.is_compiling():
        # Under torch.compile the region is traced once and AOT autograd recomputes it as a pure function: buffer
        # updates happen once, and dynamo accepts no custom context_fn.
        return checkpoint(module, x, use_reentrant=False)
    return checkpoint(module, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), batchnorm_stats_kept(module)))


def checkpointing_active(enabled: bool) -> bool:
    """Whether a stage with checkpointing `enabled` is checkpointed now: gradients are being recorded and no tracer
    records the forward (a traced graph stores what it stores; `torch.fx` cannot trace through the checkpoint)."""
    return enabled and torch.is_grad_enabled() and not torch.jit.is_scripting() and not is_symbolic_tracing()


def run_stage(module: nn.Module, x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """`checkpointed(module, x)` when `checkpointing_active(enabled)`, else `module(x)`."""
    if checkpointing_active(enabled):
        return checkpointed(module, x)
    return module(x)


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> None:
    """Turn gradient checkpointing on or off for a model that supports it (its `set_grad_checkpointing` method:
    GhostNet v1/v2/v3, the CIFAR ResNets and their Ghost twins, timm models); a clear error for one that does not."""
    setter = getattr(model, "set_grad_checkpointing", None)
    if not callable(setter):
        raise ValueError(f"{type(model).__name__} has no gradient checkpointing (no set_grad_checkpointing method); "
                         "GhostNet v1/v2/v3, the CIFAR ResNets and timm models have it")
    setter(enable)
