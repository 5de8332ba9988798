"""What every exporter does before it captures a graph: insist on eval mode, pick the example batch, declare the
batch dimension dynamic (or pin it), and name the outputs."""
from __future__ import annotations

import contextlib
from typing import Any, Optional

import torch
import torch.nn as nn

from ..layers.dynamic_conv import static_batch_capture

__all__ = ["batch_capture", "batch_dynamic_shapes", "check_eval", "export_batch", "output_names"]


def check_eval(model: nn.Module) -> None:
    """ValueError unless `model` is in eval mode (an export captures inference, not training)."""
    if model.training:
        raise ValueError("export needs a model in eval mode (call model.eval() or ghostnet.deploy.fuse(model))")


def export_batch(example_input: torch.Tensor) -> torch.Tensor:
    """The example of a dynamic-batch capture: torch.export specializes a dimension of size 1 to a constant, which
    would pin the batch, so a batch of one becomes two rows."""
    if example_input.shape[0] >= 2:
        return example_input
    return example_input.expand(2, *example_input.shape[1:]).contiguous()


def batch_dynamic_shapes(dynamic_batch: bool) -> Optional[tuple[dict[int, Any]]]:
    """torch.export's `dynamic_shapes` for a dynamic batch (None: every size fixed)."""
    return ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None


def batch_capture(dynamic_batch: bool) -> contextlib.AbstractContextManager:
    """For a graph of one fixed batch size, dynamic convs (ParameterNet) keep their one-kernel-per-sample form
    (`layers.dynamic_conv.static_batch_capture`)."""
    return contextlib.nullcontext() if dynamic_batch else static_batch_capture()


def output_names(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """"output" for a model with one output, "output_0", "output_1", ... for several."""
    with torch.no_grad():
        out = model(example_input)
    if isinstance(out, torch.Tensor):
        return ["output"]
    return [f"output_{i}" for i in range(len(out))]
