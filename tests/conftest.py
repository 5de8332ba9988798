"""Shared test helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

#: Real data sets beside the checkout (../shared/data), or $GHOSTNET_DATA.
SHARED_DATA = Path(os.environ.get("GHOSTNET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data sets not found at {SHARED_DATA} (set GHOSTNET_DATA)")
    return SHARED_DATA


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
