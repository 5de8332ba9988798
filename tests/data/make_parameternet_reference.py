"""Writes the reference files that tests/test_parameternet.py checks our ParameterNet against the official network with.

The official file imports timm 0.4-era names (`SqueezeExcite(gate_fn=..., divisor=...)`, `timm.models.layers`) and
runs unchanged with timm 0.4.9, which has that SqueezeExcite (0.4.12 no longer does); install it outside the environment
(EAB: a clone of huawei-noah/Efficient-AI-Backbones):

    mkdir /tmp/pn && cd /tmp/pn   # outside the repository
    pip download timm==0.4.9 --no-deps && pip install --no-deps --target oldtimm timm-0.4.9-py3-none-any.whl
    git --git-dir=EAB/.git show HEAD:parameternet_pytorch/cv/parameternet.py > parameternet.py
    PYTHONPATH=oldtimm python <repo>/tests/data/make_parameternet_reference.py parameternet.py

The official `_create_parameternet_600m` is built at width 0.1 (the registered model's table, activation and
experts; every channel count a multiple of 4) with 10 classes, so the file stays small while every path of the
official code runs: dynamic stem, Ghost modules, strided depthwise convs, SE, identity and projection shortcuts, the
dynamic 1x1 before the head. Weights keep the official initialization (seeded). Every batch norm gets random affine
parameters and running statistics measured on a seeded batch of random images (train-mode pass, cumulative
average): with a fresh network's trivial statistics the signal fades layer by layer and the logits are little more
than the classifier's bias, so a wrong early layer would hardly show. Weights are rounded to float32 and saved as
safetensors; the eval-mode logits are computed in float64 from those float32 values on a seeded batch of two
non-square images (33x40, odd sizes at every stride), so that the two samples are routed differently.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
WIDTH, CLASSES = 0.1, 10
INPUT_SHAPE = (2, 3, 33, 40)
CALIBRATION_SHAPE = (16, 3, 33, 40)


def load_official(path: Path):
    spec = importlib.util.spec_from_file_location("parameternet_official", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # timm's @register_model looks its module up there
    spec.loader.exec_module(module)
    return module


def condition(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Random BN affine parameters, then running statistics measured on random images."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                shape = m.running_mean.shape
                m.weight.copy_(torch.rand(shape, generator=gen) * 0.6 + 0.4)
                m.bias.copy_(torch.randn(shape, generator=gen) * 0.1)
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batch
        model.train()(torch.randn(CALIBRATION_SHAPE, generator=gen))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.1  # back to the default, so the saved module is an ordinary one
    model.eval()


def main(official_file: str) -> None:
    import timm

    path = Path(official_file)
    official = load_official(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(INPUT_SHAPE, generator=gen)  # float32 values: exact in float64 too
    torch.manual_seed(1)
    with contextlib.redirect_stdout(io.StringIO()):  # the official DynamicConv prints its expert count
        model = official._create_parameternet_600m("ghostnet", width=WIDTH, act_layer=torch.nn.Hardswish,
                                                   num_classes=CLASSES).eval()
    condition(model, gen)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    metadata = {"official_file_sha256": digest, "width": str(WIDTH), "num_classes": str(CLASSES),
                "timm": timm.__version__, "torch": torch.__version__}
    save_file(state, HERE / "parameternet_w0_1.safetensors", metadata=metadata)
    with torch.no_grad():
        logits = model.double()(x.double())
    np.savez(HERE / "parameternet_w0_1_io.npz", input=x.numpy(), logits=logits.numpy())
    print(f"{sum(p.numel() for p in model.parameters())} parameters, |logits| max {logits.abs().max().item():.4f}")
    print(f"official file sha256 {digest}, timm {timm.__version__}, torch {torch.__version__}, "
          f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {Path(__file__).name} PATH/TO/parameternet.py")
    main(sys.argv[1])
