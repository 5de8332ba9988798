"""CIFAR ResNets, VGG-16 and their Ghost twins: sizes against the papers, structure, training, errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ghostnet import GhostModule, create_model, ghostify, list_models
from ghostnet.constants import CIFAR10_MEAN
from ghostnet.models.cifar import CifarBasicBlock, CifarResNet, CifarVGG

# GhostNet paper, Table 3 (reference/ghostnet-facts.md section 2): params, MACs.
PAPER = {
    "resnet56_cifar": (0.85e6, 125e6),
    "ghost_resnet56_cifar": (0.43e6, 63e6),
    "vgg16_cifar": (15e6, 313e6),
    "ghost_vgg16_cifar": (7.7e6, 158e6),
}
# He et al. 2016, Table 6: parameters of the CIFAR ResNets.
HE_PARAMS = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6}
# GhostNet paper, ablation on Ghost-VGG-16 (facts section 2): (s, d) -> params, MACs.
VGG_ABLATION = {(2, 1): (7.6e6, 157e6), (2, 3): (7.7e6, 158e6), (2, 5): (7.7e6, 160e6), (2, 7): (7.7e6, 163e6),
                (3, 3): (5.2e6, 107e6), (4, 3): (4.0e6, 80e6), (5, 3): (3.3e6, 65e6)}
TOLERANCE = 0.05  # the bound: within 5% of the published (rounded) figures


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model: nn.Module, size: int = 32) -> float:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("name", sorted(PAPER))
def test_params_and_macs_match_the_paper(name):
    model = create_model(name)
    params_ref, macs_ref = PAPER[name]
    assert params(model) == pytest.approx(params_ref, rel=TOLERANCE)
    assert macs(model) == pytest.approx(macs_ref, rel=TOLERANCE)


@pytest.mark.parametrize("depth", sorted(HE_PARAMS))
def test_cifar_resnet_params_match_he_et_al(depth):
    assert params(create_model(f"resnet{depth}_cifar")) == pytest.approx(HE_PARAMS[depth], rel=TOLERANCE)


@pytest.mark.parametrize("ratio,dw_size", sorted(VGG_ABLATION))
def test_ghost_vgg16_ablation_matches_the_paper(ratio, dw_size):
    model = create_model("ghost_vgg16_cifar", ratio=ratio, dw_size=dw_size)
    params_ref, macs_ref = VGG_ABLATION[(ratio, dw_size)]
    assert params(model) == pytest.approx(params_ref, rel=TOLERANCE)
    assert macs(model) == pytest.approx(macs_ref, rel=TOLERANCE)


def test_every_model_is_registered_with_a_cifar_config():
    names = list_models("*_cifar")
    for depth in HE_PARAMS:
        assert {f"resnet{depth}_cifar", f"ghost_resnet{depth}_cifar"} <= set(names)
    assert {"vgg16_cifar", "ghost_vgg16_cifar"} <= set(names)
    model = create_model("ghost_resnet20_cifar", num_classes=100)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["mean"] == CIFAR10_MEAN and cfg["num_classes"] == 100
    assert model.fc.out_features == 100
    assert isinstance(model.get_submodule(cfg["first_conv"]), nn.Conv2d)
    vgg = create_model("vgg16_cifar")
    assert isinstance(vgg.get_submodule(vgg.pretrained_cfg["first_conv"]), nn.Conv2d)
    assert vgg.get_submodule(vgg.pretrained_cfg["classifier"]).out_features == 10


def test_vgg16_has_13_conv_bn_layers_and_the_twin_ghosts_all_but_the_stem():
    plain, twin = create_model("vgg16_cifar"), create_model("ghost_vgg16_cifar", ratio=3, dw_size=5)
    assert sum(isinstance(m, nn.Conv2d) for m in plain.features) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in plain.features) == 13
    ghosts = [m for m in twin.features if isinstance(m, GhostModule)]
    assert len(ghosts) == 12 and isinstance(twin.features[0], nn.Conv2d)
    assert all(g.ratio == 3 and g.dw_size == 5 for g in ghosts)
    # Linear Ghost modules: the ReLU after each layer is the original one, not doubled inside the module.
    assert all(isinstance(g.primary_conv[2], nn.Identity) for g in ghosts)


def test_resnet56_structure_and_shortcut_options():
    model = create_model("ghost_resnet56_cifar")
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3) for b in stage]
    assert len(blocks) == 27  # 3 stages x 9 blocks: depth 6 * 9 + 2
    assert sum(isinstance(m, GhostModule) for m in model.modules()) == 54
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())  # option A
    option_b = create_model("resnet56_cifar", shortcut="B")
    projections = [m for m in option_b.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [(p.in_channels, p.out_channels, p.stride) for p in projections] == [(16, 32, (2, 2)), (32, 64, (2, 2))]
    assert option_b(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name,kwargs", [("resnet20_cifar", {}), ("resnet20_cifar", {"shortcut": "B"}),
                                         ("vgg16_cifar", {})])
def test_twin_is_what_ghostify_makes_of_the_plain_network(name, kwargs):
    twin = create_model(f"ghost_{name}", **kwargs)
    converted, report = ghostify(create_model(name, **kwargs))
    assert {k: v.shape for k, v in converted.state_dict().items()} == {k: v.shape for k, v in
                                                                       twin.state_dict().items()}
    assert len(report.replaced) == sum(isinstance(m, GhostModule) for m in twin.modules())


@pytest.mark.parametrize("name,size,steps", [("ghost_resnet20_cifar", 16, 5), ("ghost_vgg16_cifar", 32, 4)])
def test_ghost_twins_learn_a_tiny_batch(name, size, steps):
    torch.manual_seed(0)
    model = create_model(name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(8, 3, size, size), torch.arange(8)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("build,message", [
    (lambda: CifarResNet(depth=57), r"6n \+ 2"),
    (lambda: CifarResNet(depth=20, shortcut="C"), "shortcut must be one of"),
    (lambda: CifarResNet(depth=20, ratio=1), "ratio s must be an integer >= 2"),
    (lambda: CifarVGG(cfg=("M", 64)), "starting with a width"),
    (lambda: CifarVGG(in_chans=0), "in_chans must be >= 1 and num_classes >= 0"),
])
def test_bad_arguments_give_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("name,shape,message", [
    ("resnet20_cifar", (1, 1, 32, 32), r"expected input of shape \(N, 3, H, W\)"),
    ("vgg16_cifar", (1, 3, 16, 16), "needs at least 32x32"),
])
def test_bad_input_gives_clear_error(name, shape, message):
    with pytest.raises(ValueError, match=message):
        create_model(name)(torch.zeros(shape))


@pytest.mark.parametrize("name", ["resnet20_cifar", "ghost_resnet20_cifar"])
def test_zero_init_last_bn_starts_every_block_as_its_shortcut(name):
    torch.manual_seed(0)
    model = create_model(name, zero_init_last_bn=True)
    plain = create_model(name)
    x = torch.randn(2, 3, 32, 32)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        blocks = [m for m in model.modules() if isinstance(m, CifarBasicBlock)]
        assert len(blocks) == 9
        h = model.relu(model.bn1(model.conv1(x)))
        for block in blocks:
            expected = F.relu(block.shortcut(h))
            h = block(h)
            torch.testing.assert_close(h, expected, rtol=0, atol=0)
    # Off by default (He et al.): the residual branches start non-zero.
    block = next(m for m in plain.modules() if isinstance(m, CifarBasicBlock)).eval()
    h = torch.randn(2, 16, 8, 8)
    assert not torch.equal(block(h), F.relu(block.shortcut(h)))
