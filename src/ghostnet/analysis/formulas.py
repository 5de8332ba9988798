"""The GhostNet paper's cost formulas (v1 paper, section 3.1), on a Ghost module's actual channel counts.

Notation (paper): c input channels, n output channels, primary kernel k x k, cheap kernel d x d, ratio s,
output size h' x w'.  The paper assumes s divides n, so that m = n/s intrinsic maps each feed one free identity
and s-1 cheap d x d operations.  A real module takes `init_chs = ceil(n/s)` intrinsic maps and
`new_chs = (s-1) * init_chs` ghost maps and cuts the concat to n channels, so the formulas here are written on
`init_chs` / `new_chs`; with s | n they are exactly the paper's (docs/cost-analysis.md shows the reduction).

Counts are multiply-accumulates (MACs), which the paper calls FLOPs; `torch.utils.flop_counter` counts
2 FLOPs per MAC.  Bias and BatchNorm are not counted (nor are they by torch's counter).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

_Pair = tuple[int, int]


def _pair(v: int | tuple[int, ...]) -> _Pair:
    if isinstance(v, int):
        return (v, v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class GhostGeometry:
    """What the formulas need to know about one Ghost module.

    `cheap_groups` is the group count of the cheap convolution: `init_chs` for the paper's depthwise cheap
    operation (one d x d filter per ghost map, each reading one intrinsic map).
    """

    in_chs: int
    out_chs: int
    init_chs: int
    new_chs: int
    ratio: int
    kernel_size: _Pair
    dw_size: _Pair
    out_hw: _Pair
    primary_groups: int = 1
    cheap_groups: int = -1  # -1: depthwise (init_chs groups)

    @property
    def cheap_group_count(self) -> int:
        return self.init_chs if self.cheap_groups == -1 else self.cheap_groups

    @property
    def is_depthwise(self) -> bool:
        """True when the cheap operation is the paper's: each ghost map from one intrinsic map."""
        return self.cheap_group_count == self.init_chs


def geometry(in_chs: int, out_chs: int, ratio: int, kernel_size: int | tuple[int, int] = 1,
             dw_size: int | tuple[int, int] = 3, out_hw: int | tuple[int, int] = 1) -> GhostGeometry:
    """Geometry of a depthwise Ghost module with ceil(out/s) intrinsic maps, as GhostModule builds it."""
    if in_chs < 1 or out_chs < 1 or ratio < 2:
        raise ValueError(f"need in_chs, out_chs >= 1 and ratio >= 2, got {in_chs}, {out_chs}, {ratio}")
    init = math.ceil(out_chs / ratio)
    return GhostGeometry(in_chs, out_chs, init, init * (ratio - 1), ratio, _pair(kernel_size), _pair(dw_size),
                         _pair(out_hw))


def _area(pair: _Pair) -> int:
    return pair[0] * pair[1]


def ghost_params(g: GhostGeometry) -> int:
    """Weights of the primary conv (init x c x k^2) plus the cheap conv (new x init/groups x d^2)."""
    primary = g.init_chs * (g.in_chs // g.primary_groups) * _area(g.kernel_size)
    cheap = g.new_chs * (g.init_chs // g.cheap_group_count) * _area(g.dw_size)
    return primary + cheap


def ghost_macs(g: GhostGeometry, batch_size: int = 1) -> int:
    """The paper's cost: (n/s) h'w' c k^2 + (s-1)(n/s) h'w' d^2, on the module's actual init/new channels."""
    return batch_size * _area(g.out_hw) * ghost_params(g)


def ordinary_conv_params(g: GhostGeometry) -> int:
    """Weights of the ordinary k x k convolution (c -> n) that the Ghost module stands in for."""
    return g.out_chs * (g.in_chs // g.primary_groups) * _area(g.kernel_size)


def ordinary_conv_macs(g: GhostGeometry, batch_size: int = 1) -> int:
    """n h'w' c k^2: the ordinary convolution's cost at the same output size."""
    return batch_size * _area(g.out_hw) * ordinary_conv_params(g)


def speedup_ratio(g: GhostGeometry) -> Fraction:
    """r_s: ordinary-convolution MACs over Ghost-module MACs (exact)."""
    return Fraction(ordinary_conv_macs(g), ghost_macs(g))


def compression_ratio(g: GhostGeometry) -> Fraction:
    """r_c: ordinary-convolution weights over Ghost-module weights (exact)."""
    return Fraction(ordinary_conv_params(g), ghost_params(g))


def paper_ratio(in_chs: int, kernel_area: int, ratio: int, dw_area: int) -> Fraction:
    """The paper's closed form r_s = r_c = c k^2 / (c k^2 / s + (s-1) d^2 / s), exact when s divides n."""
    ck2 = Fraction(in_chs * kernel_area)
    return ck2 / (ck2 / ratio + Fraction((ratio - 1) * dw_area, ratio))


def paper_ratio_approx(in_chs: int, ratio: int) -> Fraction:
    """The paper's approximation s c / (s + c - 1), taking d ~ k; it tends to s when s << c."""
    return Fraction(ratio * in_chs, ratio + in_chs - 1)


def blog_macs(h: int, w: int, c: int, n: int, m: int, k: int) -> int:
    """The popular write-up's cost H W C n k^2 + H W n m k^2 (wrong: see docs/cost-analysis.md)."""
    return h * w * c * n * k * k + h * w * n * m * k * k


def blog_memory_bytes(h: int, w: int, n: int, m: int) -> int:
    """The popular write-up's memory H W (n + m) 4 bytes (fp32, batch 1, no ghost tensor before the concat)."""
    return h * w * (n + m) * 4
