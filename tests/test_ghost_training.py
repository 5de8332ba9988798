"""A Ghost module trained as one autograd function (ghostnet.layers.ghost_training) is the module: output, input and
parameter gradients and running statistics in float64 against the modules as written, over two steps; it runs
only where it applies, with every backward plan of its convolutions (tests/test_conv_backward.py)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from ghostnet.layers import GhostModule
from ghostnet.layers import ghost_training
from ghostnet.layers import conv_backward
from ghostnet.layers.ghost_training import ghost_training_spec, has_fusable_ghost_modules, set_ghost_fusion
from ghostnet.analysis.training_layout import Layout, LayoutChoice
from support.numerics import assert_float64_close

CL = torch.channels_last
FUSED = "_GhostModuleTrainingBackward"


def _batch(shape, seed):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    # Per-channel offsets and spreads, so that the BatchNorms' statistics matter.
    x = torch.randn(shape, generator=g, dtype=torch.float64) * (1 + torch.rand(c, 1, 1, generator=g,
                                                                                    dtype=torch.float64))
    return x + 2 * torch.randn(c, 1, 1, generator=g, dtype=torch.float64)


def _randomize(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d) and bn.weight is not None:
                bn.weight.uniform_(0.5, 1.5)
    return module


CASES = {
    "Ghost-ResNet stage 1 (16 -> 16, linear)": dict(in_chs=16, out_chs=16, kernel_size=3, act_layer=None),
    "stride 2, 16 -> 32": dict(in_chs=16, out_chs=32, kernel_size=3, stride=2, act_layer=None),
    "GhostNet's ReLU module, 1x1": dict(in_chs=24, out_chs=40, kernel_size=1, act_layer=nn.ReLU),
    "ratio 3, d = 5": dict(in_chs=12, out_chs=24, kernel_size=1, ratio=3, dw_size=5, act_layer=nn.ReLU),
    "dilation 2": dict(in_chs=8, out_chs=16, kernel_size=3, dilation=2, act_layer=None),
    "64 channels": dict(in_chs=64, out_chs=64, kernel_size=3, act_layer=None),
}


@pytest.mark.parametrize("norm", ["momentum 0.1", "momentum None", "no affine", "no running stats"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_fused_module_is_the_module_in_float64(case, norm):
    plain = _randomize(GhostModule(**CASES[case]).double().train())
    for bn in plain.modules():
        if isinstance(bn, nn.BatchNorm2d):
            if norm == "momentum None":
                bn.momentum = None
            elif norm == "no affine":
                bn.weight = bn.bias = None
            elif norm == "no running stats":
                bn.track_running_stats = False
                bn.running_mean = bn.running_var = bn.num_batches_tracked = None
    _assert_fused_is_plain(plain)


def _assert_fused_is_plain(plain: nn.Module) -> None:
    fused = set_ghost_fusion(copy.deepcopy(plain).to(memory_format=CL), True)
    for step in range(2):  # the second step starts from running statistics the first one updated
        x = _batch((4, plain.in_chs, 10, 12), seed=step)
        xa, xb = x.clone().requires_grad_(), x.contiguous(memory_format=CL).requires_grad_()
        ya, yb = plain(xa), fused(xb)
        assert yb.grad_fn.name() == FUSED and yb.is_contiguous(memory_format=CL) and yb._base is None
        grad = _batch(ya.shape, seed=10 + step)
        ya.backward(grad)
        yb.backward(grad)
        assert_float64_close(yb, ya, what="output")
        assert_float64_close(xb.grad, xa.grad, what="input gradient")
        for (name, a), b in zip(plain.named_parameters(), fused.parameters()):
            assert_float64_close(b.grad, a.grad, what=name)
        for (name, a), b in zip(plain.named_buffers(), fused.buffers()):
            assert_float64_close(b.double(), a.double(), what=name)
        plain.zero_grad()
        fused.zero_grad()


@pytest.mark.parametrize("plan", [str(p) for p in conv_backward.candidate_plans(
    torch.empty(8, 16, 3, 3), conv_backward.ConvGeometry((1, 1), (1, 1), (1, 1), 1))])
@pytest.mark.parametrize("case", ["Ghost-ResNet stage 1 (16 -> 16, linear)", "ratio 3, d = 5"])
def test_the_fused_module_is_the_module_with_every_backward_plan(case, plan, monkeypatch):
    """Each convolution's backward as each exact plan would run it (where the plan applies to it)."""
    forced = []

    def force(grad, x, weight, geometry):
        plans = {str(p): p for p in conv_backward.candidate_plans(weight, geometry)}
        forced.append(plan in plans)
        return plans.get(plan, conv_backward.DIRECT)

    monkeypatch.setattr(ghost_training, "backward_plan", force)
    _assert_fused_is_plain(_randomize(GhostModule(**CASES[case]).double().train()))
    assert any(forced) and len(forced) == 4  # two convolutions, two steps


def test_an_in_place_activation_after_the_output_is_allowed():
    """Ghost-ResNet's block applies ReLU(inplace) to the module's output: the fused function keeps nothing the
    backward needs in it."""
    module = set_ghost_fusion(_randomize(GhostModule(8, 16, 3, act_layer=nn.ReLU)).double().to(memory_format=CL),
                              True)
    plain = set_ghost_fusion(copy.deepcopy(module), False)
    x = _batch((2, 8, 6, 6), 0).contiguous(memory_format=CL)
    ya, yb = torch.relu_(plain(x.clone().requires_grad_())), torch.relu_(module(x.requires_grad_()))
    ya.sum().backward()
    yb.sum().backward()
    assert_float64_close(yb, ya)
    for a, b in zip(plain.parameters(), module.parameters()):
        assert_float64_close(b.grad, a.grad)


@pytest.mark.parametrize("case", ["not enabled", "nchw", "eval", "no grad", "autocast", "hook", "dfc",
                                  "pointwise cheap op", "frozen batch norm", "nothing needs a gradient"])
def test_the_fused_function_runs_only_where_it_applies(case):
    kwargs = dict(dfc=True) if case == "dfc" else dict(cheap_op="pointwise") if case == "pointwise cheap op" else {}
    module = GhostModule(8, 16, 3, **kwargs).train().to(memory_format=CL)
    set_ghost_fusion(module, case != "not enabled")
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=CL)
    assert ghost_training_spec(module, x) is not None or case in ("dfc", "pointwise cheap op", "not enabled")
    if case == "nchw":
        x = x.contiguous()
    elif case == "eval":
        module.eval()
    elif case == "hook":
        module.primary_conv[0].register_forward_hook(lambda *args: None)
    elif case == "frozen batch norm":
        module.cheap_operation[1].eval()
    elif case == "nothing needs a gradient":
        module.requires_grad_(False)
    if case == "no grad":
        with torch.no_grad():
            assert ghost_training_spec(module, x) is None
        return
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert ghost_training_spec(module, x) is None
        return
    assert ghost_training_spec(module, x) is None
    out = module(x)
    assert out.grad_fn is None or out.grad_fn.name() != FUSED


def test_fx_tracing_runs_the_modules():
    module = set_ghost_fusion(GhostModule(8, 16, 3).train(), True)
    traced = torch.fx.symbolic_trace(module)
    assert {node.target for node in traced.graph.nodes if node.op == "call_module"} >= {"primary_conv.1",
                                                                                         "cheap_operation.1"}
    assert not any("ghost_training" in str(node.target) for node in traced.graph.nodes)


def test_the_training_layout_offers_and_records_the_fused_form():
    import ghostnet

    assert has_fusable_ghost_modules(ghostnet.create_model("ghost_resnet20_cifar"))
    assert has_fusable_ghost_modules(ghostnet.create_model("ghostnet_050"))
    assert not has_fusable_ghost_modules(ghostnet.create_model("resnet20_cifar"))
    model = Layout(True, True, True).apply(ghostnet.create_model("ghost_resnet20_cifar"))
    assert all(m.fused_training for m in model.modules() if isinstance(m, GhostModule))
    Layout(True).apply(model)
    assert not any(m.fused_training for m in model.modules() if isinstance(m, GhostModule))
    choice = LayoutChoice(Layout.from_name("channels-last-fused"), "measured")
    assert LayoutChoice.from_dict(choice.to_dict()) == choice and choice.layout.fused_ghost
    old_record = {k: v for k, v in choice.to_dict().items() if k != "fused_ghost"}  # written before the field
    assert LayoutChoice.from_dict(old_record).layout == Layout(True)
