"""The channel-folded BatchNorm of channels-last CPU training (ghostnet.layers.folded_norm) is nn.BatchNorm2d: output,
gradients and running statistics in float64; it is used where ATen's kernel is slow and nowhere else; and a Ghost
network's channels-last training step runs no BatchNorm kernel on a channel count that is no multiple of 16."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import ghostnet
from ghostnet.analysis.training_layout import Layout
from ghostnet.layers import folded_norm
from ghostnet.layers.folded_norm import (FoldingBatchNorm2d, folded_batch_norm, norm_block, norm_fold_factor,
                                        norm_maybe_folded, set_norm_fold)
from support.numerics import assert_float64_close

CL = torch.channels_last


def _map(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # An offset and a spread per channel, as a convolution's output has, so that mean and variance matter.
    c = shape[1]
    x = torch.randn(shape, generator=g, dtype=dtype) * (1 + torch.rand(c, 1, 1, generator=g, dtype=dtype))
    return (x + 3 * torch.randn(c, 1, 1, generator=g, dtype=dtype)).contiguous(memory_format=CL)


@pytest.mark.parametrize("channels", [2, 4, 8, 12, 24, 40])
@pytest.mark.parametrize("momentum, affine", [(0.1, True), (None, True), (0.3, False)])
def test_folded_batch_norm_is_batch_norm_in_float64(channels, momentum, affine):
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(channels, momentum=momentum, affine=affine).double().train()
    if affine:
        with torch.no_grad():
            plain.weight.uniform_(0.5, 1.5)
            plain.bias.uniform_(-1, 1)
    folded = copy.deepcopy(plain)
    for step in range(2):  # the second step reads running statistics the first one updated
        x = _map((4, channels, 6, 10), seed=step)
        k = norm_fold_factor(folded, x)
        if channels % norm_block() == 0:  # ATen's kernel is fast there (AVX2: 24, 40); the fold's math still holds
            assert k == 0
            k = 2
        else:
            assert k == norm_block() // math.gcd(channels, norm_block())
        # Not torch.randn under seed 0: that is x's own noise, whose gradient through a BatchNorm is zero.
        grad = _map(x.shape, seed=10 + step)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = plain(xa), folded_batch_norm(folded, xb, k)
        assert yb.is_contiguous(memory_format=CL) and yb._base is None  # in-place activations follow
        ya.backward(grad)
        yb.backward(grad)
        assert_float64_close(yb, ya)
        assert_float64_close(xb.grad, xa.grad)
        if affine:
            assert_float64_close(folded.weight.grad, plain.weight.grad)
            assert_float64_close(folded.bias.grad, plain.bias.grad)
        assert_float64_close(folded.running_mean, plain.running_mean)
        assert_float64_close(folded.running_var, plain.running_var)
        assert int(folded.num_batches_tracked) == int(plain.num_batches_tracked) == step + 1


def test_a_wrong_combination_is_caught():
    """The comparison above can fail: the variance of the folded channels averaged without the spread of their means
    (what a careless fold computes) is not the channel's variance."""
    bn = nn.BatchNorm2d(8).double().train()
    x = _map((4, 8, 6, 10))
    rows = x.permute(0, 2, 3, 1).reshape(-1, 16)
    careless_var = rows.var(0, unbiased=False).view(2, 8).mean(0)
    true_var = x.var(dim=(0, 2, 3), unbiased=False)
    assert (careless_var - true_var).abs().max() > 1e-3 * true_var.max()
    assert_float64_close(folded_batch_norm(bn, x, 2).var(dim=(0, 2, 3), unbiased=False),
                         nn.BatchNorm2d(8).double().train()(x).var(dim=(0, 2, 3), unbiased=False))


@pytest.mark.parametrize("case", ["nchw", "16 channels", "eval", "odd count", "bfloat16 map (autocast)",
                                  "bfloat16 map, no affine", "subclass"])
def test_fold_applies_only_where_it_pays(case):
    bn, x = nn.BatchNorm2d(8).train(), _map((2, 8, 4, 4), torch.float32)
    if case == "nchw":
        x = x.contiguous()
    elif case == "16 channels":
        bn, x = nn.BatchNorm2d(16).train(), _map((2, 16, 4, 4), torch.float32)
    elif case == "eval":
        bn.eval()
    elif case == "odd count":  # 8 channels fold by 2: 1 x 3 x 3 positions cannot be split in pairs
        x = _map((1, 8, 3, 3), torch.float32)
    elif case == "bfloat16 map (autocast)":
        x = x.bfloat16()
    elif case == "bfloat16 map, no affine":  # float32 running statistics all the same
        bn, x = nn.BatchNorm2d(8, affine=False).train(), x.bfloat16()
    else:
        bn = type("MyNorm", (nn.BatchNorm2d,), {})(8).train()
    assert norm_fold_factor(bn, x) == 0
    assert torch.equal(norm_maybe_folded(bn, x), copy.deepcopy(bn)(x))


class _NormChannels(TorchDispatchMode):
    """Records the channel counts BatchNorm kernels run on, in all maps and in channels-last ones."""

    def __init__(self):
        super().__init__()
        self.channels: list[int] = []
        self.channels_last: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.native_batch_norm, torch.ops.aten.native_batch_norm_backward,
                                   torch.ops.aten._native_batch_norm_legit,
                                   torch.ops.aten._native_batch_norm_legit_functional):
            x = args[1] if "backward" in str(func) else args[0]
            self.channels.append(x.shape[1])
            if not x.is_contiguous():  # 1x1 maps (both layouts at once) take ATen's fast NCHW kernel
                self.channels_last.append(x.shape[1])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("fused", [False, True], ids=["modules", "fused Ghost modules"])
@pytest.mark.parametrize("name", ["ghost_resnet20_cifar", "ghostnet_050"])
def test_channels_last_training_runs_no_slow_batch_norm(name, fused, monkeypatch):
    """In the trainer's channels-last layout every BatchNorm kernel of a training step on a channels-last map sees a
    multiple of the vector's channels (16 on AVX-512: the 8-, 12-, 20-... channel maps folded); in NCHW the plain
    BatchNorms run on those counts."""
    folds = []  # the statistics computed on a folded view (the fused modules' unfolded ones go through it too)
    real_stats = folded_norm.batch_stats
    monkeypatch.setattr(folded_norm, "batch_stats", lambda x, k: folds.append(k) or real_stats(x, k))
    torch.manual_seed(0)
    model = ghostnet.create_model(name, num_classes=10).train()
    Layout(channels_last=True, fused_ghost=fused).apply(model)
    assert any(type(m) is FoldingBatchNorm2d for m in model.modules())
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=CL)
    with _NormChannels() as seen:
        model(x).sum().backward()
    assert not [c for c in seen.channels_last if c % norm_block()], sorted(set(seen.channels_last))
    needs_fold = any(m.num_features % norm_block() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert any(k > 1 for k in folds) == needs_fold
    Layout(channels_last=False).apply(model)
    assert not any(type(m) is FoldingBatchNorm2d for m in model.modules())
    with _NormChannels() as seen:
        model(x.contiguous()).sum().backward()
    assert any(c % norm_block() for c in seen.channels) == needs_fold


def test_the_fold_keeps_the_state_dict_and_traces():
    model = ghostnet.create_model("ghost_resnet20_cifar", num_classes=10)
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    set_norm_fold(model, True)
    assert {k: v for k, v in model.state_dict().items()}.keys() == keys.keys()
    assert all(torch.equal(v, keys[k]) for k, v in model.state_dict().items())
    traced = torch.fx.symbolic_trace(copy.deepcopy(model).train())  # the fold decides when the graph runs
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64).contiguous(memory_format=CL)
    model.double().train().to(memory_format=CL)
    # The eager Ghost modules train as one function (ghostnet.layers.ghost_training), the graph through their parts:
    # the same function, summed in another order.
    assert_float64_close(traced.double().to(memory_format=CL)(x), model(x))


def test_ghost_training_step_is_the_same_in_both_layouts_in_float64():
    """A whole training step of a Ghost network in the channels-last layout (BatchNorms folded) against NCHW:
    outputs, every gradient and every running statistic."""
    torch.manual_seed(0)
    nchw = ghostnet.create_model("ghost_resnet20_cifar", num_classes=10).double().train()
    cl = Layout(channels_last=True).apply(copy.deepcopy(nchw))
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    out_nchw, out_cl = nchw(x), cl(x.contiguous(memory_format=CL))
    assert_float64_close(out_cl, out_nchw)
    out_nchw.square().sum().backward()
    out_cl.square().sum().backward()
    for (name, a), b in zip(nchw.named_parameters(), cl.parameters()):
        assert_float64_close(b.grad, a.grad, what=name)
    for a, b in zip(nchw.buffers(), cl.buffers()):
        assert_float64_close(b.double(), a.double())
