"""Registered models with random weights conditioned like trained ones, and fixed test images: what the export
parity tests of every runtime (tests/test_export.py, tests/test_openvino.py, ...) run."""
from __future__ import annotations

import torch
import torch.nn as nn

import ghostnet
from support.common import randomize_bn


def conditioned_model(name: str) -> nn.Module:
    """Random weights conditioned like a trained network, so that float32 rounding errors are a trained network's.

    Batch-norm running statistics are measured on random images (BN affine parameters random), and the last BN of
    each ResNet bottleneck's residual branch is scaled by 0.3, as training leaves it. Without that, random
    ResNet-50s are chaotic: their own float32 and float64 outputs differ by 4e-4 (1e-6 after conditioning).
    """
    from torchvision.models.resnet import Bottleneck

    torch.manual_seed(0)
    model = randomize_bn(ghostnet.create_model(name)).train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
    with torch.no_grad():
        model(sample_images(64))
        for block in model.modules():
            if isinstance(block, Bottleneck):  # bn3, or the BNs inside a Ghost conv3 (bn3 is then Identity)
                for bn in [block.bn3, *block.conv3.modules()]:
                    if isinstance(bn, nn.BatchNorm2d):
                        bn.weight.mul_(0.3)
                        bn.bias.mul_(0.3)
    return model.eval()


def sample_images(batch: int, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))


class ConvDepthwiseLinear(nn.Module):
    """conv, ReLU, depthwise conv, mean, linear: the smallest net with every op an int8 export quantizes (the int8
    tests of each runtime)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dw(torch.relu(self.conv(x))).mean((2, 3)))


class BrokenModel(nn.Module):
    """A model whose forward fails: an export of it must fail and leave no file behind."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("broken model")
