"""A Ghost module trained as one autograd function (ghostnet.layers.ghost_training) is the module: output, input and
parameter gradients and running statistics in float64 against the modules as written, over two steps; it runs
only where it applies; the primary convolution's transposed weight gradient is the weight gradient, and which of
the two runs is measured once and then read from the cache."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from ghostnet.layers import GhostModule
from ghostnet.layers import ghost_training
from ghostnet.layers.ghost_training import (_ConvGeometry, _transposed_weight_grad, ghost_training_spec,
                                            has_fusable_ghost_modules, set_ghost_fusion, weight_grad_method)
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


@pytest.mark.parametrize("kernel, padding", [(3, 1), (3, 0), (3, 2), (1, 0), (5, 2)])
def test_the_transposed_weight_gradient_is_the_weight_gradient(kernel, padding):
    torch.manual_seed(0)
    x = torch.randn(3, 6, 9, 11, dtype=torch.float64).contiguous(memory_format=CL)
    weight = torch.randn(4, 6, kernel, kernel, dtype=torch.float64).contiguous(memory_format=CL)
    geometry = _ConvGeometry((1, 1), (padding, padding), (1, 1), 1)
    grad = torch.randn_like(geometry.conv(x, weight)).contiguous(memory_format=CL)
    direct = geometry.backward(grad, x, weight, (False, True))[1]
    got = _transposed_weight_grad(grad, x, weight, geometry)
    assert_float64_close(got, direct)
    # ... and the flip is what makes it so: without it the sums land on the mirrored taps.
    if kernel > 1:
        assert float((got.flip(2, 3) - direct).abs().max()) > 1e-3 * float(direct.abs().max())


def test_the_weight_gradient_method_is_measured_once_then_cached(private_tuning_cache, monkeypatch):
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=CL)
    weight = torch.randn(8, 16, 3, 3).contiguous(memory_format=CL)
    geometry = _ConvGeometry((1, 1), (1, 1), (1, 1), 1)
    grad = torch.randn(2, 8, 8, 8).contiguous(memory_format=CL)
    monkeypatch.setattr(ghost_training, "_METHODS", {})
    timed = []
    monkeypatch.setattr(ghost_training, "_time_methods",
                        lambda *args: timed.append(1) or {"direct": 1.0, "transposed": 0.5})
    assert weight_grad_method(grad, x, weight, geometry) == "transposed" and timed == [1]
    assert weight_grad_method(grad, x, weight, geometry) == "transposed" and timed == [1]  # this process: memory
    monkeypatch.setattr(ghost_training, "_METHODS", {})  # a new process: the tuning cache
    monkeypatch.setattr(ghost_training, "_time_methods", lambda *args: pytest.fail("measured again"))
    assert weight_grad_method(grad, x, weight, geometry) == "transposed"
    assert (private_tuning_cache / f"{ghost_training.WEIGHT_GRAD_CACHE_KIND}.json").is_file()
    strided = _ConvGeometry((2, 2), (1, 1), (1, 1), 1)  # no transposed form: nothing to measure
    assert weight_grad_method(grad, x, weight, strided) == "direct"


def test_a_slower_transposed_form_is_not_chosen(monkeypatch):
    monkeypatch.setattr(ghost_training, "_METHODS", {})
    monkeypatch.setattr(ghost_training.tuning, "load_choice", lambda *args: None)
    monkeypatch.setattr(ghost_training.tuning, "store_choice", lambda *args: None)
    monkeypatch.setattr(ghost_training, "_time_methods", lambda *args: {"direct": 1.0, "transposed": 0.95})
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=CL)
    weight = torch.randn(8, 16, 3, 3).contiguous(memory_format=CL)
    grad = torch.randn(2, 8, 8, 8).contiguous(memory_format=CL)
    assert weight_grad_method(grad, x, weight, _ConvGeometry((1, 1), (1, 1), (1, 1), 1)) == "direct"


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
