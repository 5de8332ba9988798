"""GhostNetV2's DFC attention: equal to the official code where that works, and working where it breaks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ghostnet
from ghostnet.layers import dfc_attention
from ghostnet.layers.ghost import make_short_conv

from support.common import randomize_bn
from support.numerics import assert_float64_close


def official_dfc(short_conv, x, out_size):
    """The official / timm formulation: floor pooling, then nearest resize to the output size."""
    res = short_conv(F.avg_pool2d(x, kernel_size=2, stride=2))
    return F.interpolate(torch.sigmoid(res), size=out_size, mode="nearest")


@pytest.mark.parametrize("h,w", [(2, 2), (7, 7), (14, 14), (9, 4), (3, 8), (15, 2)])
def test_matches_official_where_official_works(h, w):
    torch.manual_seed(0)
    short_conv = randomize_bn(make_short_conv(6, 6, 1, 1)).double().eval()
    x = torch.randn(2, 6, h, w, dtype=torch.float64)
    # float64 on both sides: equal up to float64 rounding, whatever the CPU's float32 kernels (support/numerics.py)
    with torch.no_grad():
        assert_float64_close(dfc_attention(short_conv, x, (h, w)), official_dfc(short_conv, x, (h, w)))


@pytest.mark.parametrize("h,w", [(1, 1), (1, 6), (5, 1)])
def test_one_pixel_maps_work(h, w):
    short_conv = make_short_conv(4, 4, 1, 1).eval()
    x = torch.randn(1, 4, h, w)
    with pytest.raises(RuntimeError):
        official_dfc(short_conv, x, (h, w))
    gate = dfc_attention(short_conv, x, (h, w))
    assert gate.shape == (1, 4, h, w) and ((gate > 0) & (gate < 1)).all()


@pytest.fixture(scope="module")
def v2():
    return ghostnet.create_model("ghostnetv2_100").eval()


@pytest.mark.slow
@pytest.mark.parametrize("h,w", [(32, 32), (33, 33), (57, 40), (64, 127), (100, 100), (129, 65), (224, 161),
                                 (257, 257), (32, 257)])
def test_v2_forward_on_any_size(v2, h, w):
    with torch.no_grad():
        out = v2(torch.randn(1, 3, h, w))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
