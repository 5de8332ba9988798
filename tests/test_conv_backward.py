"""A convolution's backward in its other exact forms (ghostnet.layers.conv_backward): the transposed problem's weight
gradient is the weight gradient, the forward convolution with the flipped kernel is the input gradient (dense and
depthwise), each plan gives oneDNN's gradients in float64, and which plan runs is measured once per shape, then read
from the cache, a slower alternative never chosen."""
from __future__ import annotations

import pytest
import torch

from ghostnet.layers import conv_backward
from ghostnet.layers.conv_backward import (DIRECT, BackwardPlan, ConvGeometry, _input_grad_as_forward,
                                           _transposed_weight_grad, backward_plan, candidate_plans)
from support.numerics import assert_float64_close

CL = torch.channels_last


def _problem(in_chs, out_chs, kernel, padding, groups=1, stride=1):
    torch.manual_seed(0)
    x = torch.randn(3, in_chs, 9, 11, dtype=torch.float64).contiguous(memory_format=CL)
    weight = torch.randn(out_chs, in_chs // groups, kernel, kernel, dtype=torch.float64).contiguous(memory_format=CL)
    geometry = ConvGeometry((stride, stride), (padding, padding), (1, 1), groups)
    grad = torch.randn_like(geometry.conv(x, weight)).contiguous(memory_format=CL)
    return grad, x, weight, geometry


@pytest.mark.parametrize("kernel, padding", [(3, 1), (3, 0), (3, 2), (1, 0), (5, 2)])
def test_the_transposed_weight_gradient_is_the_weight_gradient(kernel, padding):
    grad, x, weight, geometry = _problem(6, 4, kernel, padding)
    direct = geometry.backward(grad, x, weight, (False, True))[1]
    got = _transposed_weight_grad(grad, x, weight, geometry)
    assert_float64_close(got, direct)
    # ... and the flip is what makes it so: without it the sums land on the mirrored taps.
    if kernel > 1:
        assert float((got.flip(2, 3) - direct).abs().max()) > 1e-3 * float(direct.abs().max())


@pytest.mark.parametrize("in_chs, out_chs, groups", [(6, 4, 1), (8, 8, 8), (4, 12, 1)])
@pytest.mark.parametrize("kernel, padding", [(3, 1), (3, 0), (3, 2), (1, 0), (5, 2)])
def test_the_input_gradient_as_a_forward_convolution_is_the_input_gradient(in_chs, out_chs, groups, kernel,
                                                                           padding):
    grad, x, weight, geometry = _problem(in_chs, out_chs, kernel, padding, groups)
    direct = geometry.backward(grad, x, weight, (True, False))[0]
    got = _input_grad_as_forward(grad, weight, geometry)
    assert got.shape == x.shape
    assert_float64_close(got, direct)
    if kernel > 1:  # the flip matters here too
        mirrored = torch.nn.functional.conv2d(grad, weight.transpose(0, 1) if groups == 1 else weight, None, 1,
                                              kernel - 1 - padding, 1, groups)
        assert float((mirrored - direct).abs().max()) > 1e-3 * float(direct.abs().max())


@pytest.mark.parametrize("mask", [(True, True), (True, False), (False, True)])
def test_every_plan_gives_the_gradients_asked_for(mask):
    for groups, in_chs, out_chs in ((1, 6, 4), (6, 6, 6)):
        grad, x, weight, geometry = _problem(in_chs, out_chs, 3, 1, groups)
        want = geometry.backward(grad, x, weight, mask)
        plans = candidate_plans(weight, geometry)
        assert len(plans) == (4 if groups == 1 else 2)
        for plan in plans:
            got = conv_backward.conv_backward(plan, grad, x, weight, geometry, mask)
            for g, w in zip(got, want):
                assert (g is None) == (w is None)
                if w is not None:
                    assert_float64_close(g, w, what=str(plan))


def test_only_the_direct_plan_where_no_other_form_is_exact():
    assert candidate_plans(torch.empty(4, 6, 3, 3), ConvGeometry((2, 2), (1, 1), (1, 1), 1)) == [DIRECT]
    assert candidate_plans(torch.empty(4, 6, 3, 3), ConvGeometry((1, 1), (2, 2), (2, 2), 1)) == [DIRECT]
    assert candidate_plans(torch.empty(4, 3, 3, 3), ConvGeometry((1, 1), (1, 1), (1, 1), 2)) == [DIRECT]  # grouped
    assert candidate_plans(torch.empty(4, 6, 3, 3), ConvGeometry((1, 1), (3, 3), (1, 1), 1)) == [DIRECT]  # p > k-1
    depthwise = candidate_plans(torch.empty(8, 1, 3, 3), ConvGeometry((1, 1), (1, 1), (1, 1), 8))
    assert depthwise == [DIRECT, BackwardPlan("forward", "direct")]


def test_the_plan_is_measured_once_then_cached(private_tuning_cache, monkeypatch):
    grad, x, weight, geometry = _problem(6, 4, 3, 1)
    monkeypatch.setattr(conv_backward, "_PLANS", {})
    timed = []
    fake = {"direct+direct": 1.0, "direct+transposed": 0.7, "forward+direct": 0.95, "forward+transposed": 0.5}
    monkeypatch.setattr(conv_backward, "_time_plans", lambda *args: timed.append(1) or fake)
    assert backward_plan(grad, x, weight, geometry) == BackwardPlan("forward", "transposed") and timed == [1]
    assert backward_plan(grad, x, weight, geometry) == BackwardPlan("forward", "transposed") and timed == [1]
    monkeypatch.setattr(conv_backward, "_PLANS", {})  # a new process: the tuning cache
    monkeypatch.setattr(conv_backward, "_time_plans", lambda *args: pytest.fail("measured again"))
    assert backward_plan(grad, x, weight, geometry) == BackwardPlan("forward", "transposed")
    assert (private_tuning_cache / f"{conv_backward.CACHE_KIND}.json").is_file()
    strided = ConvGeometry((2, 2), (1, 1), (1, 1), 1)  # no other form: nothing to measure
    assert backward_plan(strided.conv(x, weight), x, weight, strided) == DIRECT


def test_a_slower_or_barely_faster_plan_is_not_chosen(monkeypatch):
    monkeypatch.setattr(conv_backward, "_PLANS", {})
    monkeypatch.setattr(conv_backward.tuning, "load_choice", lambda *args: None)
    monkeypatch.setattr(conv_backward.tuning, "store_choice", lambda *args: None)
    fake = {"direct+direct": 1.0, "direct+transposed": 0.95, "forward+direct": 1.2, "forward+transposed": 0.93}
    monkeypatch.setattr(conv_backward, "_time_plans", lambda *args: fake)
    assert backward_plan(*_problem(6, 4, 3, 1)) == DIRECT
