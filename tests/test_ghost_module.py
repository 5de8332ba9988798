"""The Ghost module: shapes and parameter counts over its whole argument space, pluggable cheap ops, bad args."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from ghostnet.layers import GhostModule, ghost_channels


def conv_out(size: int, k: int, stride: int, dilation: int) -> int:
    pad = dilation * (k - 1) // 2
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(
    in_chs=st.integers(1, 24),
    out_chs=st.integers(1, 40),
    ratio=st.integers(2, 5),
    dw_size=st.sampled_from([1, 3, 5, 7]),
    kernel_size=st.sampled_from([1, 3, 5]),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 3),
    size=st.integers(5, 19),
    act=st.booleans(),
)
def test_shapes_and_params(in_chs, out_chs, ratio, dw_size, kernel_size, stride, dilation, size, act):
    m = GhostModule(in_chs, out_chs, kernel_size=kernel_size, ratio=ratio, dw_size=dw_size, stride=stride,
                    dilation=dilation, act_layer=nn.ReLU if act else None)
    init, new = ghost_channels(out_chs, ratio)
    assert init == math.ceil(out_chs / ratio) and new == init * (ratio - 1)
    y = m(torch.randn(2, in_chs, size, size + 1))
    expected_hw = (conv_out(size, kernel_size, stride, dilation), conv_out(size + 1, kernel_size, stride, dilation))
    assert y.shape == (2, out_chs) + expected_hw
    # primary k x k conv + BN, depthwise d x d cheap op (each intrinsic map feeds s-1 maps) + BN
    expected_params = in_chs * init * kernel_size**2 + 2 * init + new * dw_size**2 + 2 * new
    assert sum(p.numel() for p in m.parameters()) == expected_params
    if act:
        assert (y >= 0).all()


def test_output_is_intrinsic_then_ghost_maps_cut_to_out():
    m = GhostModule(4, 7, ratio=3).eval()  # 3 intrinsic maps, 6 ghost maps, cut to 7
    x = torch.randn(1, 4, 8, 8)
    intrinsic = m.primary_conv(x)
    ghosts = m.cheap_operation(intrinsic)
    y = m(x)
    torch.testing.assert_close(y[:, :3], intrinsic)
    torch.testing.assert_close(y[:, 3:], ghosts[:, :4])


def test_without_activation_is_linear_and_can_be_negative():
    m = GhostModule(8, 16, act_layer=None).eval()
    y = m(torch.randn(2, 8, 6, 6))
    assert (y < 0).any()


@pytest.mark.parametrize("cheap_op,groups", [("depthwise", 8), ("pointwise", 1), ("group", 2)])
def test_builtin_cheap_ops(cheap_op, groups):
    m = GhostModule(16, 16, ratio=2, cheap_op=cheap_op)
    conv = m.cheap_operation[0]
    assert conv.groups == groups
    assert m(torch.randn(1, 16, 8, 8)).shape == (1, 16, 8, 8)


def test_custom_cheap_op_is_used():
    built = []

    def shift_then_scale(in_chs: int, out_chs: int, kernel_size: int, dilation: int) -> nn.Module:
        op = nn.Conv2d(in_chs, out_chs, (1, kernel_size), padding=(0, kernel_size // 2), groups=in_chs, bias=False)
        built.append((in_chs, out_chs, kernel_size, dilation))
        return op

    m = GhostModule(6, 12, ratio=3, dw_size=5, cheap_op=shift_then_scale)
    assert built == [(4, 8, 5, 1)]
    assert m.cheap_operation[0].kernel_size == (1, 5)
    assert m(torch.randn(1, 6, 9, 9)).shape == (1, 12, 9, 9)


@pytest.mark.parametrize("kwargs,message", [
    (dict(ratio=1), "ratio s must be an integer >= 2"),
    (dict(ratio=2.5), "ratio s must be an integer >= 2"),
    (dict(dw_size=4), "cheap kernel size d must be a positive odd integer"),
    (dict(stride=0), "kernel_size, stride and dilation must be >= 1"),
    (dict(cheap_op="fft"), "unknown cheap_op 'fft'"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GhostModule(8, 16, **kwargs)


def test_zero_channels_rejected():
    with pytest.raises(ValueError, match="channel counts must be positive"):
        GhostModule(8, 0)
