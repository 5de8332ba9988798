"""Helpers shared by many test files: the shared data sets' location, one-thread runs, BatchNorm statistics
that make fusion tests meaningful."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

#: Real data sets beside the checkout (../shared/data), or $GHOSTNET_DATA.
SHARED_DATA = Path(os.environ.get("GHOSTNET_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine, small ops are far faster without thread hand-offs
    (a second thread only adds synchronisation; 10 ms per op was seen under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial running stats and affine parameters, so that fusions are really tested."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                shape = m.running_mean.shape
                m.running_mean.copy_(torch.rand(shape, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(shape, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(shape, generator=gen) * 0.2 - 0.1)
    return model
