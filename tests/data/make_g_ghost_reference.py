"""Writes the reference files that tests/test_g_ghost.py checks our G-Ghost RegNet against the official network with.

    mkdir /tmp/gg && cd /tmp/gg   # outside the repository
    git --git-dir=<Efficient-AI-Backbones clone>/.git show HEAD:g_ghost_pytorch/g_ghost_regnet.py > g_ghost_regnet.py
    python <repo>/tests/data/make_g_ghost_reference.py g_ghost_regnet.py

The official file needs only torch and numpy; use a copy with the 2025-03 fix of `Stage` (issue #287, commit
f90e129), older copies do not build. Two reduced networks of the official `GGhostRegNet` class are built, so the
files stay small while every path of the official code runs:

- "a": depths (2, 3, 4, 2), the registered models' pattern: plain stage 1 and 4, G-Ghost stages 2 and 3;
- "b": depths (1, 2, 3, 3): plain stage 2 (two blocks), G-Ghost stage 4 (as in the official 002-008 networks).

Both have widths (8, 12, 16, 24) and group width 4, so the inner blocks' group width is int(0.75 * 4) = 3 and the
intrinsic channels are rounded down to it (16 -> 6, not 8). Convolutions keep the official He initialization (seeded);
every batch norm gets random statistics and affine parameters (a fresh network's are trivial). Weights are rounded
to float32 and saved as safetensors; the eval-mode logits are computed in float64 from those float32 values on a
seeded batch of two non-square images (33x40, odd sizes at every stride).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
CLASSES, WIDTHS, GROUP_WIDTH = 10, (8, 12, 16, 24), 4
DEPTHS = {"a": (2, 3, 4, 2), "b": (1, 2, 3, 3)}
INPUT_SHAPE = (2, 3, 33, 40)


def load_official(path: Path):
    spec = importlib.util.spec_from_file_location("g_ghost_regnet_official", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                shape = m.running_mean.shape
                m.running_mean.copy_(torch.randn(shape, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(shape, generator=gen) * 0.6 + 0.4)
                m.bias.copy_(torch.randn(shape, generator=gen) * 0.1)


def main(official_file: str) -> None:
    path = Path(official_file)
    official = load_official(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(INPUT_SHAPE, generator=gen)  # float32 values: exact in float64 too
    io = {"input": x.numpy()}
    for name, depths in DEPTHS.items():
        torch.manual_seed(1)
        model = official.GGhostRegNet(official.Bottleneck, list(depths), list(WIDTHS), num_classes=CLASSES,
                                      group_width=GROUP_WIDTH).eval()
        randomize(model, gen)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        metadata = {"official_file_sha256": digest, "depths": json.dumps(depths), "widths": json.dumps(WIDTHS),
                    "group_width": str(GROUP_WIDTH), "num_classes": str(CLASSES), "torch": torch.__version__}
        save_file(state, HERE / f"g_ghost_regnet_tiny_{name}.safetensors", metadata=metadata)
        with torch.no_grad():
            logits = model.double()(x.double())
        io[f"logits_{name}"] = logits.numpy()
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, |logits| max "
              f"{logits.abs().max().item():.4f}")
    np.savez(HERE / "g_ghost_regnet_tiny_io.npz", **io)
    print(f"official file sha256 {digest}, torch {torch.__version__}, python {sys.version.split()[0]}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {Path(__file__).name} PATH/TO/g_ghost_regnet.py")
    main(sys.argv[1])
