"""The paper's Ghost-module formulas against torch.utils.flop_counter's count, over a grid of module shapes."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ghostnet.analysis import formulas, profile
from ghostnet.layers import GhostModule
from ghostnet.layers.helpers import conv_output_size

SIZE = 9  # odd, so that stride 2 exercises the floor in the output size


pytestmark = pytest.mark.usefixtures("one_thread")


def counted_conv(c: int, n: int, k: int, stride: int) -> tuple[int, int]:
    """(MACs, weights) of the ordinary k x k convolution c -> n, counted by torch."""
    conv = nn.Conv2d(c, n, k, stride, k // 2, bias=False)
    with FlopCounterMode(display=False) as counter:
        conv(torch.zeros(1, c, SIZE, SIZE))
    return counter.get_total_flops() // 2, conv.weight.numel()


# (c, n, k): n divisible by every s in 2..5 (60), n not divisible (7, 13), 1x1 and 3x3 primary kernels.
SHAPES = [(3, 60, 1), (16, 60, 3), (5, 7, 1), (12, 13, 3)]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("d", [1, 3, 5, 7])
@pytest.mark.parametrize("s", [2, 3, 4, 5])
def test_formula_equals_count(s: int, d: int, stride: int) -> None:
    for c, n, k in SHAPES:
        module = GhostModule(c, n, kernel_size=k, ratio=s, dw_size=d, stride=stride)
        row, = profile(module, (c, SIZE, SIZE), measure_memory=False).ghost_modules
        out = conv_output_size(SIZE, k, stride, k // 2)
        # The count of the module as built equals the paper's formula on its actual channels...
        assert row.counted_macs == row.formula_macs, (c, n, k)
        assert row.counted_params == row.formula_params, (c, n, k)
        m = math.ceil(n / s)
        assert row.formula_macs == out * out * (m * c * k * k + (s - 1) * m * d * d)
        # ... and the ordinary convolution it replaces is what torch counts for a real Conv2d(c, n, k).
        conv_macs, conv_params = counted_conv(c, n, k, stride)
        assert (row.ordinary_macs, row.ordinary_params) == (conv_macs, conv_params)
        assert row.speedup == pytest.approx(conv_macs / row.counted_macs, rel=1e-12)
        assert row.compression == pytest.approx(conv_params / row.counted_params, rel=1e-12)
        if n % s == 0:
            # With s | n the counted ratios are exactly the paper's closed form c k^2 / (c k^2/s + (s-1) d^2/s).
            closed = Fraction(c * k * k) / (Fraction(c * k * k, s) + Fraction((s - 1) * d * d, s))
            assert Fraction(conv_macs, row.counted_macs) == closed
            assert Fraction(conv_params, row.counted_params) == closed
            assert formulas.paper_ratio(c, k * k, s, d * d) == closed
            assert row.paper_ratio == pytest.approx(float(closed), rel=1e-12)


def test_ratio_approaches_s_for_wide_inputs() -> None:
    """The paper's approximation s c / (s + c - 1) -> s, and the exact ratio with d = k tends to it as well."""
    for s in range(2, 6):
        assert formulas.paper_ratio(4096, 9, s, 9) == formulas.paper_ratio_approx(4096, s)
        assert abs(float(formulas.paper_ratio_approx(10**6, s)) - s) < 1e-4


def test_cut_to_out_channels_is_counted() -> None:
    """n = 7, s = 3: three intrinsic maps and six ghosts are computed, one ghost is cut by the slice."""
    module = GhostModule(4, 7, ratio=3, dw_size=3)
    row, = profile(module, (4, 8, 8), measure_memory=False).ghost_modules
    assert (row.init_chs, row.new_chs) == (3, 6)
    assert row.formula_macs == row.counted_macs == 64 * (3 * 4 + 6 * 9)


def test_non_depthwise_cheap_op_has_no_closed_form() -> None:
    """A pointwise cheap operation is counted with its real groups; the paper's closed form does not apply."""
    module = GhostModule(8, 16, ratio=2, cheap_op="pointwise")
    row, = profile(module, (8, 6, 6), measure_memory=False).ghost_modules
    assert row.counted_macs == row.formula_macs == 36 * (8 * 8 + 8 * 8)
    assert row.paper_ratio is None


def test_output_size_rejects_empty_output() -> None:
    with pytest.raises(ValueError, match="leaves no output"):
        conv_output_size(2, 5)
