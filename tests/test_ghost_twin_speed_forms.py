"""The Ghost module's faster training path (convs with fewer than 16 output channels run batch-folded) computes what
the plain form computes: outputs, gradients and BN running statistics equal to float rounding, same state_dict keys."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ghostnet
from ghostnet.layers.folded_conv import batch_folded_conv
from ghostnet.layers.ghost import GhostModule, merge_ghost_maps


def plain_forward(module: GhostModule, x: torch.Tensor) -> torch.Tensor:
    """The Ghost module's forward before the training path: every layer of the cheap operation called as it is."""
    x1 = module.primary_conv(x)
    return merge_ghost_maps(module, x, x1, module.cheap_operation(x1))


@pytest.mark.parametrize("in_chs,chs,groups", [(1, 1, 1), (2, 2, 2), (4, 4, 4), (8, 8, 8),  # depthwise
                                              (16, 8, 1), (3, 4, 1), (8, 8, 2)])             # dense, grouped
@pytest.mark.parametrize("stride,dilation,bias", [(1, 1, False), (2, 1, True), (1, 2, False)])
def test_batch_folded_conv_equals_the_convolution(in_chs, chs, groups, stride, dilation, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(in_chs, chs, 3, stride, dilation, dilation=dilation, groups=groups, bias=bias).double()
    x = torch.randn(16, in_chs, 9, 10, dtype=torch.float64, requires_grad=True)
    y = batch_folded_conv(conv, x)
    assert y is not None
    ref = conv(x)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    params = [x, *conv.parameters()]
    for a, b in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_folded_depthwise_conv_is_bit_identical_in_float32():
    """Each output of a folded depthwise conv sums the same products in the same order as the plain one."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    x = torch.randn(32, 8, 16, 16)
    assert torch.equal(batch_folded_conv(conv, x), conv(x))


def test_a_wrong_fold_is_caught():
    """The comparison above can fail: folding samples the other way round (filters interleaved) differs."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False).double()
    x = torch.randn(4, 8, 6, 6, dtype=torch.float64)
    wrong = F.conv2d(x.reshape(2, 16, 6, 6), conv.weight.repeat_interleave(2, 0), None, 1, 1, 1, 16).reshape(4, 8, 6, 6)
    assert not torch.allclose(wrong, conv(x))


@pytest.mark.parametrize("shape,conv_kwargs", [
    ((16, 16, 6, 6), {}),                   # 16 channels: oneDNN's block already, nothing to fold
    ((4, 8, 6, 6), {"padding": "same"}),     # padding given as a string
    ((3, 8, 6, 6), {}),                     # the batch does not divide into pairs
    ((4, 6, 6, 6), {}),                     # 6 does not divide 16
    ((4, 8, 6, 6), {"padding_mode": "reflect"}),
])
def test_fold_is_skipped_where_it_does_not_apply(shape, conv_kwargs):
    chs = shape[1]
    conv = nn.Conv2d(chs, chs, 3, groups=chs, bias=False, **{"padding": 1, **conv_kwargs})
    assert batch_folded_conv(conv, torch.randn(shape)) is None
    assert batch_folded_conv(nn.Conv2d(8, 16, 3, padding=1, bias=False), torch.randn(4, 8, 6, 6)) is None


def _train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
    out = model(x)
    nn.functional.cross_entropy(out, target).backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    return out, grads, {k: b.clone() for k, b in model.named_buffers()}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ghost_resnet20_cifar", "ghost_vgg16_cifar"])
def test_twin_training_step_equals_the_plain_form(name):
    torch.manual_seed(0)
    fast = ghostnet.create_model(name).double().train()
    plain = copy.deepcopy(fast)
    for m in plain.modules():
        if isinstance(m, GhostModule):
            m.forward = plain_forward.__get__(m)
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([0, 3, 5, 9])
    (out_a, grads_a, bufs_a), (out_b, grads_b, bufs_b) = _train_step(fast, x, target), _train_step(plain, x, target)
    torch.testing.assert_close(out_a, out_b, rtol=1e-10, atol=1e-10)
    for k in grads_b:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-9, atol=1e-10, msg=k)
    for k in bufs_b:
        torch.testing.assert_close(bufs_a[k], bufs_b[k], rtol=1e-10, atol=1e-10, msg=k)


def test_resnet_twin_folds_its_16_channel_modules():
    """The fold is used (else the test above would compare the plain form with itself): stage 1's 8 intrinsic maps
    and their 8 ghosts."""
    model = ghostnet.create_model("ghost_resnet20_cifar").train()
    ghost = model.layer1[0].conv1
    assert ghost.init_chs == 8
    assert batch_folded_conv(ghost.primary_conv[0], torch.randn(4, 16, 32, 32)) is not None
    assert batch_folded_conv(ghost.cheap_operation[0], torch.randn(4, 8, 32, 32)) is not None


@pytest.mark.slow
@pytest.mark.parametrize("stride,dilation,bias", [(1, 1, False), (2, 2, True)])
def test_folded_conv_compiles_to_the_same_numbers(stride, dilation, bias):
    """Under torch.compile the fold is one opaque operator pair (its fake shapes must match the real ones), so a
    compiled training step computes exactly what the eager one computes."""
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Conv2d(16, 8, 3, stride, dilation, dilation=dilation, bias=bias), nn.BatchNorm2d(8))
    x = torch.randn(8, 16, 11, 12, requires_grad=True)
    from ghostnet.layers.folded_conv import folded_forward

    compiled = torch.compile(lambda inp: folded_forward(layers, inp), backend="aot_eager", fullgraph=True)
    outs = []
    for fn in (lambda inp: folded_forward(layers, inp), compiled):
        y = fn(x)
        grads = torch.autograd.grad(y.square().sum(), [x, *layers.parameters()])
        outs.append((y, *grads))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_compile_settings_turn_inductor_layout_optimization_off_only_for_folded_models():
    """Inductor's channels-last conversion would undo the fold, so compiling a model that folds turns it off."""
    import torch._inductor.config as inductor_config
    from ghostnet.layers.folded_conv import compile_settings, has_folded_convs

    twin, plain = ghostnet.create_model("ghost_resnet20_cifar"), ghostnet.create_model("resnet20_cifar")
    assert has_folded_convs(twin) and not has_folded_convs(plain)
    assert not has_folded_convs(ghostnet.create_model("ghost_vgg16_cifar"))  # 32 or more intrinsic maps everywhere
    before = inductor_config.layout_optimization
    with compile_settings(twin):
        assert inductor_config.layout_optimization is False
    assert inductor_config.layout_optimization == before
    with compile_settings(plain):
        assert inductor_config.layout_optimization == before


@pytest.mark.parametrize("groups", [1, 8])
def test_folded_conv_under_bfloat16_autocast_casts_as_autocast_does(groups):
    """Under CPU autocast the fold computes in bfloat16 like the convolution it replaces, and its backward sees one
    dtype (mixed bfloat16/float32 inputs failed there on AVX2 kernels); float32 weights get float32 gradients, as
    close to the float64 truth as the plain autocast convolution's (the project's factor 4 on its own error)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=True)
    x = torch.randn(4, 8, 10, 10)

    def run(module, inp, folded, autocast):
        module.zero_grad()
        leaf = inp.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = batch_folded_conv(module, leaf) if folded else module(leaf)
        y.to(inp.dtype).square().sum().backward()
        return y, [y.to(inp.dtype), leaf.grad, module.weight.grad.clone(), module.bias.grad.clone()]

    truth = run(copy.deepcopy(conv).double(), x.double(), folded=False, autocast=False)[1]
    (y_folded, folded), (y_plain, plain) = (run(conv, x, f, autocast=True) for f in (True, False))
    assert y_folded.dtype == y_plain.dtype == torch.bfloat16
    for got, own, exact in zip(folded, plain, truth):
        assert got.dtype == own.dtype == torch.float32
        own_error = (own.double() - exact).abs().max().item()
        assert (got.double() - exact).abs().max().item() <= 4 * own_error + 1e-6 * exact.abs().max().item()
