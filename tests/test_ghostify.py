"""ghostify(): torchvision, timm and user models; what it refuses; initialisation from trained weights."""
from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from support.common import randomize_bn
from ghostnet import GhostModule, ghostify
from ghostnet.layers.swap import OrderedGhostModule
from support.numerics import assert_float32_parity, assert_float64_close, eager_and_reference, float64_copy, run_float64

SIZE = 64  # large enough that no stage of these ImageNet models shrinks to a 1x1 map

MODELS = [("torchvision", n) for n in ("resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "efficientnet_b0")] + [
    ("timm", n) for n in ("resnet18d", "mobilenetv3_small_100", "regnetx_002")]


def build(source: str, name: str) -> nn.Module:
    if source == "timm":
        return timm.create_model(name, pretrained=False)
    model = getattr(torchvision.models, name)(weights=None)
    if name.startswith("vgg"):
        # The convolutions are what is under test; VGG's 120M-parameter classifier only makes the test slow.
        model.classifier = nn.Linear(model.classifier[0].in_features, 10)
    return model


def conv_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def check_paper_cost(model: nn.Module, report, ratio: int, dw_size: int) -> float:
    """Each replaced layer's counted MACs equal the paper's Ghost cost; returns MACs before / after over them."""
    for layer in report.replaced:
        conv = model.get_submodule(layer.name)
        dense = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        pixels = layer.macs_before / (conv.out_channels * dense)
        assert pixels == int(pixels) > 0
        init_chs = math.ceil(conv.out_channels / ratio)
        # m = ceil(n/s) intrinsic maps from the dense conv, (s-1) cheap d x d maps from each (paper section 3.1).
        expected = pixels * (init_chs * dense + init_chs * (ratio - 1) * dw_size ** 2)
        assert layer.macs_after == pytest.approx(expected, rel=1e-12), layer.name
    return sum(r.macs_before for r in report.replaced) / sum(r.macs_after for r in report.replaced)


@pytest.mark.slow
@pytest.mark.parametrize("source,name", MODELS)
def test_ghostify_keeps_shapes_trains_and_cuts_macs(source, name):
    torch.manual_seed(0)
    model = build(source, name)
    x = torch.randn(2, 3, SIZE, SIZE)
    twin, report = ghostify(model, example_input=x[:1])

    assert sorted(report.replaced_names + list(report.skipped)) == sorted(conv_names(model))
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert "depthwise" in report.skipped[n]
    assert all(isinstance(twin.get_submodule(n), GhostModule) for n in report.replaced_names)

    twin.train()
    out = twin(x)
    assert out.shape == model.eval()(x).shape
    out.pow(2).mean().backward()
    ghost = twin.get_submodule(report.replaced_names[0])
    assert ghost.primary_conv[0].weight.grad is not None and ghost.cheap_operation[0].weight.grad is not None

    # r_s ~ s c k^2 / (c k^2 + (s-1) d^2): close to s, lower where c k^2 is small (1x1 convs on few channels).
    assert 0.8 * 2 < check_paper_cost(model, report, 2, 3) < 2
    assert report.params_after < report.params_before and report.macs_after < report.macs_before


@pytest.mark.slow
def test_higher_ratio_cuts_macs_by_about_s():
    model = torchvision.models.resnet18(weights=None)
    _, report = ghostify(model, ratio=4, dw_size=5, example_input=torch.zeros(1, 3, SIZE, SIZE))
    assert 0.8 * 4 < check_paper_cost(model, report, 4, 5) < 4


class SameConv(nn.Conv2d):
    """A conv with dynamic padding in its own forward (like timm's Conv2dSame)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (1, 1, 1, 1)))


class OddNet(nn.Module):
    """A user model with every kind of convolution ghostify must either handle or name."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.wide = nn.Conv2d(16, 32, (1, 5), padding=(0, 2), bias=True)
        self.dilated = nn.Conv2d(32, 32, 3, padding=2, dilation=2, padding_mode="reflect", bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.strided = nn.Conv2d(32, 48, 3, stride=2, padding="valid")
        self.dw = nn.Conv2d(48, 48, 3, padding=1, groups=48)
        self.same = SameConv(48, 48, 3)
        self.small = nn.Conv2d(48, 8, 1)
        self.thin = nn.Conv2d(8, 48, 1)
        self.head = nn.Conv2d(48, 32, 1)
        self.unused = nn.Conv2d(16, 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.wide(x))
        x = F.relu(self.bn(self.dilated(x)))
        x = self.same(self.dw(self.strided(x)))
        x = x * torch.sigmoid(self.thin(F.relu(self.small(x))))
        return self.head(x.mean((2, 3), keepdim=True)).flatten(1)


ODD_REASONS = {"stem": "stem", "dw": "depthwise", "same": "overrides Conv2d.forward", "small": "min_channels=16",
               "thin": "would cost more MACs", "head": "1x1 map", "unused": "not run by the forward pass"}


@pytest.mark.slow
def test_user_model_odd_convolutions_are_converted_or_named():
    model = OddNet()
    x = torch.randn(2, 3, 20, 20)
    twin, report = ghostify(model, example_input=x[:1])
    assert sorted(report.replaced_names) == ["dilated", "strided", "wide"]
    assert {n: r.norm for n, r in zip(report.replaced_names, report.replaced)} == {
        "wide": None, "dilated": "bn", "strided": None}
    assert isinstance(twin.bn, nn.Identity)  # absorbed: the Ghost module has its own BNs
    assert twin.dilated.primary_conv[0].padding_mode == "reflect"
    assert twin.dilated.primary_conv[0].dilation == (2, 2) and twin.wide.primary_conv[0].kernel_size == (1, 5)
    for name, reason in ODD_REASONS.items():
        assert reason in report.skipped[name], (name, report.skipped[name])
    assert twin(x).shape == model(x).shape
    twin(x).sum().backward()
    summary = report.summary()
    assert all(name in summary for name in ODD_REASONS) and "replaced 3 of 10 convolutions" in summary


def test_explicit_include_overrides_policy_and_exclude_wins():
    _, report = ghostify(OddNet(), include=["stem", "small"], example_input=torch.zeros(1, 3, 20, 20))
    assert sorted(report.replaced_names) == ["small", "stem"]
    assert report.skipped["wide"] == "not matched by include"
    _, report = ghostify(OddNet(), include=["*"], exclude=["wid?"], example_input=torch.zeros(1, 3, 20, 20))
    assert sorted(report.replaced_names) == ["dilated", "strided"] and report.skipped["wide"] == "excluded"


@pytest.mark.parametrize("kwargs,message", [
    ({"include": ["dw"]}, r"cannot ghostify 'dw': grouped or depthwise convolution \(groups=48\)"),
    ({"include": ["same"]}, "cannot ghostify 'same': SameConv overrides Conv2d.forward"),
    ({"include": ["wid"]}, "include entry 'wid' matches no nn.Conv2d of the model; did you mean wide"),
    ({"exclude": ["layer*"]}, "exclude entry 'layer\\*' matches no nn.Conv2d"),
    ({"ratio": 1}, "ratio s must be an integer >= 2"),
    ({"dw_size": 2}, "dw_size d must be a positive odd integer"),
    ({"min_channels": 0}, "min_channels must be >= 1"),
    ({"example_input": torch.zeros(1, 5, 20, 20)}, r"could not run the model on an input of shape \(1, 5, 20, 20\)"),
])
def test_bad_requests_give_clear_errors(kwargs, message):
    kwargs.setdefault("example_input", torch.zeros(1, 3, 20, 20))
    with pytest.raises(ValueError, match=message):
        ghostify(OddNet(), **kwargs)


def test_model_without_convolutions_is_refused():
    with pytest.raises(ValueError, match="Sequential has no nn.Conv2d to ghostify"):
        ghostify(nn.Sequential(nn.Linear(4, 4)))


def test_copy_or_inplace_and_state_left_as_found():
    model = randomize_bn(OddNet()).train()
    running_mean = model.bn.running_mean.clone()
    twin, _ = ghostify(model, example_input=torch.randn(1, 3, 20, 20))
    assert twin is not model and type(model.wide) is nn.Conv2d and twin.training
    assert torch.equal(model.bn.running_mean, running_mean)  # the probe ran in eval mode
    same, _ = ghostify(model, inplace=True, example_input=torch.zeros(1, 3, 20, 20))
    assert same is model and isinstance(model.wide, GhostModule) and model.training


@pytest.mark.slow
def test_init_from_weights_copies_the_largest_l1_filters_and_their_bn():
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.resnet18(weights=None)).eval()
    twin, report = ghostify(model, init_from_weights=True, example_input=torch.zeros(1, 3, SIZE, SIZE))
    twin.eval()
    for layer in report.replaced:
        conv, ghost = model.get_submodule(layer.name), twin.get_submodule(layer.name)
        assert isinstance(ghost, OrderedGhostModule)
        kept = conv.weight.abs().sum(dim=(1, 2, 3)).topk(ghost.init_chs).indices.sort().values
        assert torch.equal(ghost.primary_conv[0].weight, conv.weight[kept])
        bn = model.get_submodule(layer.norm)
        assert torch.equal(ghost.primary_conv[1].running_var, bn.running_var[kept])
        # The kept channels come out where they were, with exactly the original values (eval mode): float64 on both
        # sides, so equal up to float64 rounding (support/numerics.py) whatever the CPU's float32 kernels.
        x = torch.randn(2, conv.in_channels, 8, 8)
        got = run_float64(float64_copy(ghost), x)[:, kept]
        expected = run_float64(float64_copy(nn.Sequential(conv, bn)), x)[:, kept]
        assert_float64_close(got, expected, what=layer.name)


class PairNet(nn.Module):
    """Convolutions with and without BN and bias, an odd channel count, a strided layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.c1, self.b1 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.c2 = nn.Conv2d(32, 32, 1, bias=True)
        self.c3, self.b3 = nn.Conv2d(32, 33, 3, stride=2, padding=1, bias=True), nn.BatchNorm2d(33)
        self.fc = nn.Linear(33, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.c2(x))
        x = F.relu(self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


def pair_net_with_redundant_filters(seed: int = 0) -> PairNet:
    """A PairNet whose dropped filters are multiples of kept ones, so a Ghost twin can reproduce it exactly."""
    torch.manual_seed(seed)
    model = randomize_bn(PairNet(), seed).eval()
    with torch.no_grad():
        for conv in (model.c1, model.c2, model.c3):
            init_chs = math.ceil(conv.out_channels / 2)
            kept = conv.weight[:init_chs]
            # Equal L1 norms of 10 for the kept filters; the multiples below are smaller, so these are kept.
            conv.weight[:init_chs] = 10 * kept / kept.abs().sum(dim=(1, 2, 3), keepdim=True)
            scales = torch.empty(conv.out_channels - init_chs).uniform_(0.2, 0.9)
            signs = torch.tensor([(-1.0) ** j for j in range(len(scales))])
            # Shuffle which kept filter each dropped one copies, so the matching has work to do. Only the first
            # n - ceil(n/2) kept filters have a ghost slot (the Ghost module cuts its output to n channels).
            sources = torch.randperm(len(scales))
            conv.weight[init_chs:] = conv.weight[sources] * (scales * signs)[:, None, None, None]
    return model


def test_init_from_weights_reproduces_a_model_whose_dropped_filters_are_multiples():
    model = pair_net_with_redundant_filters()
    twin, report = ghostify(model, init_from_weights=True, example_input=torch.zeros(1, 3, 16, 16))
    assert report.replaced_names == ["c1", "c2", "c3"]
    x = torch.randn(4, 3, 16, 16)
    # The twin's cheap weights are float32 ratios of the dropped filters to the kept ones, so it matches the model
    # to float32 rounding: held to the model's own float32 error against float64 (support/numerics.py).
    eager, reference = eager_and_reference(model, x)
    with torch.no_grad():
        assert_float32_parity(twin.eval()(x), eager, reference, what="twin initialised from weights")
    # Without the initialisation the twin is a different function: the check above is not trivially true.
    fresh, _ = ghostify(model, example_input=torch.zeros(1, 3, 16, 16))
    with torch.no_grad():
        assert not torch.allclose(fresh.eval()(x), model(x), rtol=1e-2, atol=1e-2)


def test_twin_from_weights_reloads_into_a_rebuilt_twin():
    twin, _ = ghostify(pair_net_with_redundant_filters(0), init_from_weights=True,
                       example_input=torch.zeros(1, 3, 16, 16))
    rebuilt, _ = ghostify(PairNet(), init_from_weights=True, example_input=torch.zeros(1, 3, 16, 16))
    rebuilt.load_state_dict(twin.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), twin.eval()(x), rtol=0, atol=0)


def test_default_probe_input_follows_the_model_config_else_the_first_conv():
    from ghostnet.surgery.ghostify import _default_input

    gray = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8))
    assert _default_input(gray, gray[0]).shape == (1, 1, 224, 224)  # no config: the first conv's channels
    gray.default_cfg = {"input_size": (1, 48, 40)}
    assert _default_input(gray, gray[0]).shape == (1, 1, 48, 40)
