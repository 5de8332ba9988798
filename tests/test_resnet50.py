"""ResNet-50 and Ghost-ResNet-50 (s = 2, 4): sizes against the paper, structure, forward and backward."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.resnet import Bottleneck

from ghostnet import GhostModule, create_model, ghostify
from ghostnet.models.resnet import GhostClassifier, ghost_resnet50_model, resnet50_model

# GhostNet paper, ResNet-50 on ImageNet (reference/ghostnet-facts.md section 2): params, MACs at 224 x 224.
PAPER = {"resnet50": (25.6e6, 4.1e9), "ghost_resnet50_s2": (13.0e6, 2.2e9), "ghost_resnet50_s4": (6.5e6, 1.2e9)}
TOLERANCE = 0.05  # the bound: within 5% of the published (rounded) figures


@pytest.fixture(scope="module")
def measured() -> dict[str, tuple[int, float]]:
    """Params and MACs (one 224 x 224 image) of each registered model, counted once for the module."""
    out = {}
    for name in PAPER:
        model = create_model(name).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, 224, 224))
        out[name] = (sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER))
def test_params_and_macs_match_the_paper(measured, name):
    params, macs = measured[name]
    assert params == pytest.approx(PAPER[name][0], rel=TOLERANCE)
    assert macs == pytest.approx(PAPER[name][1], rel=TOLERANCE)


@pytest.mark.parametrize("ratio", [2, 4])
def test_every_conv_but_the_stem_is_a_linear_ghost_module(ratio):
    model = ghost_resnet50_model(ratio=ratio, dw_size=5)
    assert type(model.conv1) is nn.Conv2d and isinstance(model.bn1, nn.BatchNorm2d)  # the stem is kept
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    for block in blocks:
        for i in (1, 2, 3):
            ghost = getattr(block, f"conv{i}")
            assert isinstance(ghost, GhostModule) and (ghost.ratio, ghost.dw_size) == (ratio, 5)
            assert isinstance(getattr(block, f"bn{i}"), nn.Identity)  # the BN lives inside the Ghost module
            assert isinstance(ghost.primary_conv[2], nn.Identity)  # linear: the block's ReLU follows it
    downsamples = [b.downsample for b in blocks if b.downsample is not None]
    assert len(downsamples) == 4 and all(isinstance(d[0], GhostModule) for d in downsamples)
    assert isinstance(model.fc, GhostClassifier) and model.fc.ghost.ratio == ratio


@pytest.mark.slow
def test_twin_body_is_what_ghostify_makes_of_resnet50():
    twin = ghost_resnet50_model(ratio=2, ghost_classifier=False)
    converted, report = ghostify(resnet50_model(), example_input=torch.zeros(1, 3, 64, 64))
    assert report.skipped == {"conv1": report.skipped["conv1"]} and "stem" in report.skipped["conv1"]
    assert {k: v.shape for k, v in converted.state_dict().items()} == {k: v.shape for k, v in
                                                                       twin.state_dict().items()}
    assert isinstance(twin.fc, nn.Linear)  # the official code's plain classifier


@pytest.mark.slow
def test_options_forward_and_backward():
    model = create_model("ghost_resnet50_s4", num_classes=10, in_chans=1)
    assert model.pretrained_cfg["input_size"] == (1, 224, 224) and model.pretrained_cfg["num_classes"] == 10
    out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 10)
    out.logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("kwargs,message", [({"num_classes": -1}, "num_classes >= 0"),
                                            ({"in_chans": 0}, "in_chans must be >= 1")])
def test_bad_arguments_give_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("ghost_resnet50_s2", **kwargs)
