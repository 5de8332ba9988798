"""The one operation counter: multiply-accumulates of a forward pass, in total and per module.

Counts come from `torch.utils.flop_counter.FlopCounterMode`: matrix products and convolutions at 2 FLOPs per
multiply-accumulate, no bias or elementwise ops, so MACs are conv + linear multiply-accumulates, the paper's
convention (docs/cost-analysis.md). `profile`, `ghostify` and the latency harness all count with it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["MacCounter", "count_macs"]


class MacCounter(FlopCounterMode):
    """The one operation counter (`count_macs`, `profile`, `ghostify`): FLOPs, MACs and FLOPs per module path."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(display=False)
        self.model = model

    def total_macs(self) -> int:
        """Multiply-accumulates of everything run inside the counter: FLOPs // 2, the paper's convention."""
        return self.get_total_flops() // 2

    def flops_by_module(self) -> dict[str, int]:
        """FLOPs per module path of `model` ("" is the model itself); modules that never ran have no entry."""
        # The counter names modules "<RootClass>.<path>"; its "Global" entry is the whole pass.
        prefix = type(self.model).__name__
        flops = {key: sum(by_op.values()) for key, by_op in self.get_flop_counts().items() if key != "Global"}
        return {"" if key == prefix else key[len(prefix) + 1:]: n for key, n in flops.items()
                if key == prefix or key.startswith(prefix + ".")}


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on `example_input`, without gradients (conv + linear, FLOPs // 2)."""
    with torch.no_grad(), MacCounter(model) as counter:
        model(example_input)
    return counter.total_macs()
