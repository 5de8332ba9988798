"""Activation memory: the lifetime estimate against the profiler's measured peak, concat bytes, weight bytes."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import ghostnet
from ghostnet.analysis import estimate_peak, profile, trace_forward
from ghostnet.analysis.memory import _peaks_from_events

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ghostnet_100() -> nn.Module:
    return ghostnet.create_model("ghostnet_100")


@pytest.mark.parametrize("batch_size", [1, 8])
def test_measured_peak_within_10_percent_of_estimate(ghostnet_100: nn.Module, batch_size: int) -> None:
    p = profile(ghostnet_100, (3, 224, 224), batch_size=batch_size)
    m = p.memory
    assert m.peak_measured_bytes is not None and m.peak_estimated_bytes > 0
    assert abs(m.peak_measured_bytes - m.peak_estimated_bytes) <= 0.10 * m.peak_estimated_bytes, m
    # Kernel scratch (oneDNN's copies of conv inputs) comes on top of the activation tensors, never below.
    assert m.peak_allocator_bytes >= m.peak_measured_bytes
    # The same run gives the published totals (ghostnet-facts.md: 5.18M parameters, 141.2M MACs per image).
    assert p.params == pytest.approx(5.18e6, rel=5e-3)
    assert p.macs == pytest.approx(141.2e6 * batch_size, rel=5e-3)


def test_eager_concat_holds_twice_the_output(ghostnet_100: nn.Module) -> None:
    """ghostnet-facts.md section 4: eager PyTorch holds m + (n - m) + n = 2n channels at the concat."""
    p = profile(ghostnet_100, (3, 96, 96), batch_size=2, measure_memory=False)
    for g in p.ghost_modules:
        output = 2 * g.out_chs * g.out_hw[0] * g.out_hw[1] * 4  # batch 2, float32; s = 2 so init + new = n
        assert g.concat_fused_bytes == output
        assert g.concat_eager_bytes == 2 * output
    # Weights: 4 bytes per float32 parameter.
    assert p.memory.param_bytes == 4 * p.params


class _Branches(nn.Module):
    """a = conv(x); b = conv(a); cat(a, b): a and b are both live at the concat."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(2, 4, 1)
        self.conv_b = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_a(x)
        return torch.cat([a, self.conv_b(a)], dim=1).sum(dim=1)


def test_lifetime_rule_on_a_known_graph() -> None:
    """Live bytes at the concat: a (4 maps) + b (4) + the concatenated tensor (8) = 16 maps."""
    hw = 8 * 8 * 4  # bytes per float32 map
    net = nn.Sequential(_Branches(), nn.Flatten(), nn.Identity())
    trace = trace_forward(net, torch.zeros(1, 2, 8, 8))
    peak = estimate_peak(trace)
    assert peak.peak_bytes == 16 * hw
    assert trace.ops[peak.peak_op].name == "aten.cat"
    # After the sum, a, b and the concat are dead: while Flatten runs (a view), the summed map alone is live.
    assert trace.ops[-1].module == "1"
    assert peak.live_bytes[-1] == hw


def test_scratch_freed_inside_its_op_is_not_an_activation() -> None:
    """Profiler events: (time, ptr, bytes, root op).  A block freed inside the op that made it is scratch."""
    events = [
        (0, 1, 100, 7),  # op 7 allocates its output
        (1, 2, 500, 7),  # op 7's scratch ...
        (2, 2, -500, 7),  # ... freed before op 7 ends
        (3, 3, 50, 8),  # op 8's output
        (4, 1, -100, None),  # the first output is released by Python, outside any op
    ]
    activation, allocator = _peaks_from_events(events)
    assert (activation, allocator) == (150, 600)
