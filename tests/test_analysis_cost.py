"""profile(): totals against the published table and torch's own counter, rows that add up, Ghost-module rows."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import ghostnet
from ghostnet.analysis import profile
from ghostnet.layers import GhostBottleneckV3

pytestmark = pytest.mark.usefixtures("one_thread")

# ghostnet-facts.md section 1.1 "Widths [calc]" (params, MACs at 224x224); v3 is counted after reparameterize().
PUBLISHED = {
    "ghostnet_050": (2.59e6, 42.3e6),
    "ghostnet_100": (5.18e6, 141.2e6),
    "ghostnet_130": (7.36e6, 227.0e6),
    "ghostnetv2_100": (6.16e6, 167.0e6),
    "ghostnetv2_130": (8.96e6, 269.3e6),
    "ghostnetv2_160": (12.39e6, 398.6e6),
    "ghostnetv3_050": (2.86e6, 49.6e6),
    "ghostnetv3_100": (6.16e6, 167.0e6),
    "ghostnetv3_130": (8.96e6, 269.3e6),
    "ghostnetv3_160": (12.39e6, 398.6e6),
}


def torch_flops(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def test_every_ghostnet_variant_is_registered_here() -> None:
    # The *_paddle models are PaddleClas's form (smaller SE, same MACs to 0.1%), checked in test_paddle.py.
    assert set(ghostnet.list_models("ghostnet*")) - set(ghostnet.list_models("*_paddle")) == set(PUBLISHED)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_totals_match_published_table_and_torch(name: str) -> None:
    # Counting is shape-based, so the meta device gives torch's exact count without computing anything.
    with torch.device("meta"):
        model = ghostnet.create_model(name).eval()
        model.reparameterize()
    p = profile(model)
    params, macs = PUBLISHED[name]
    assert p.params == pytest.approx(params, rel=5e-3)
    assert p.macs == pytest.approx(macs, rel=5e-3)
    assert p.flops == 2 * p.macs == torch_flops(model, torch.empty(1, 3, 224, 224, device="meta"))
    # Per-layer and per-stage rows add up to the totals.
    assert sum(r.params for r in p.layers) == sum(s.params for s in p.stages) == p.params
    assert sum(r.macs for r in p.layers) == sum(s.macs for s in p.stages) == p.macs
    assert [s.name for s in p.stages] == ["stem", *[f"blocks.{i}" for i in range(10)], "head", "(model)"]
    assert len(p.ghost_modules) == 32
    assert all(g.formula_macs == g.counted_macs for g in p.ghost_modules)


def test_v3_training_form_counts_every_branch() -> None:
    """Train-form v3: 3 primary branches, 3 cheap d x d branches and a 1x1 scale branch, all counted."""
    block = GhostBottleneckV3(16, 48, 24, dw_kernel_size=3, stride=2)
    p = profile(block, (16, 12, 12), measure_memory=False)
    assert p.flops == torch_flops(block.eval(), torch.zeros(1, 16, 12, 12))
    assert sum(r.macs for r in p.layers) == p.macs  # branches in ModuleLists are not counted twice
    for g in p.ghost_modules:
        hw = g.out_hw[0] * g.out_hw[1]
        assert g.counted_macs == hw * (3 * g.init_chs * g.in_chs + 3 * g.new_chs * 9 + g.new_chs)
        assert g.formula_macs == hw * (g.init_chs * g.in_chs + g.new_chs * 9)
    block.reparameterize()
    fused = profile(block, (16, 12, 12), measure_memory=False)
    assert all(g.counted_macs == g.formula_macs for g in fused.ghost_modules)
    assert fused.macs < p.macs


def test_v2_dfc_attention_is_counted_beside_the_formula() -> None:
    model = ghostnet.create_model("ghostnetv2_100")
    p = profile(model, (3, 64, 64), measure_memory=False)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, 64, 64))
    flops = counter.get_flop_counts()
    for g in p.ghost_modules:
        dfc = sum(flops.get(f"GhostNet.{g.path}.short_conv", {}).values()) // 2
        assert g.extra_macs == dfc
        assert g.counted_macs == g.formula_macs
    assert sum(g.extra_macs > 0 for g in p.ghost_modules) == 14  # ghost1 of blocks 2..15


def test_dtype_and_batch_scale_bytes_not_counts() -> None:
    model = ghostnet.create_model("ghostnet_050")
    fp32 = profile(model, (3, 64, 64), measure_memory=False)
    bf16 = profile(model, (3, 64, 64), batch_size=2, dtype="bfloat16", measure_memory=False)
    assert bf16.params == fp32.params and bf16.macs == 2 * fp32.macs
    assert bf16.memory.param_bytes * 2 == fp32.memory.param_bytes
    assert bf16.memory.peak_estimated_bytes == fp32.memory.peak_estimated_bytes  # half the bytes, twice the images
    # The caller's model is not changed.
    assert next(model.parameters()).dtype == torch.float32 and model.training


def test_layer_rows_describe_leaves_and_container_ops() -> None:
    p = profile(ghostnet.create_model("ghostnet_050"), (3, 64, 64), measure_memory=False)
    rows = {r.path: r for r in p.layers}
    stem = rows["conv_stem"]
    assert (stem.type, stem.ops, stem.output_shape) == ("Conv2d", "convolution", (1, 8, 32, 32))
    assert stem.macs == 8 * 3 * 9 * 32 * 32 and stem.bytes_written == stem.bytes_allocated == 8 * 32 * 32 * 4
    relu = rows["act1"]
    assert relu.bytes_written == 8 * 32 * 32 * 4 and relu.bytes_allocated == 0  # in place
    concat = rows["blocks.0.0.ghost1"]
    assert concat.type == "GhostModule" and concat.ops == "cat"


def test_bad_arguments_are_clear() -> None:
    model = ghostnet.create_model("ghostnet_050")
    with pytest.raises(ValueError, match="three positive integers"):
        profile(model, (64, 64))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        profile(model, (3, 64, 64), batch_size=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        profile(model, (3, 64, 64), dtype="int8")
    with pytest.raises(ValueError, match="too small"):
        profile(model, (3, 8, 8))
    with pytest.raises(ValueError, match="unknown model"):
        profile("ghostnet_999")
