"""The split form of fused Ghost bottlenecks (ghostnet/deploy/split.py): no concat between a bottleneck's Ghost
modules, the same function as the fused model (float64 to 1e-10 of the output's scale; float32, ONNX in onnxruntime
and OpenVINO within float32 rounding of the float64 truth, support/numerics.py), traceable, and blocks it cannot do
exactly left alone.

The inputs are 2 x 45 x 37: odd sides exercise the stride-2 convs' padding and the DFC gate's size-based resize.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from support.common import randomize_bn
from support.numerics import (FLOAT64_REL, assert_float32_parity, assert_float64_close, corrupt_one_weight,
                              eager_and_reference, float64_copy, float64_error, run_float64)

import ghostnet
from ghostnet.deploy import FusedGhostBottleneck, fuse
from ghostnet.deploy.split import SplitGhostBottleneck, can_split, split_ghost_concats
from ghostnet.layers import GhostBottleneck

try:  # the ONNX writer's home while the export layer is being reorganized
    from ghostnet.deploy.onnx_io import export_onnx, onnx_session, run_onnx
except ImportError:
    from ghostnet.deploy.export import export_onnx, onnx_session, run_onnx

pytestmark = pytest.mark.usefixtures("one_thread")

#: The registered families built of Ghost bottlenecks (v1, v2 with DFC, v3 re-parameterized); every block of each
#: splits. `test_split_models_are_every_model_with_fused_bottlenecks` keeps this in step with the registry.
SPLIT_MODELS = ghostnet.list_models("ghostnet_*") + ghostnet.list_models("ghostnetv2_*") + ghostnet.list_models(
    "ghostnetv3_*")
BLOCKS_PER_MODEL = 16


def _input(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 45, 37, generator=torch.Generator().manual_seed(0))


def _fused(name: str, x: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)  # the initial weights: which ReLU maps are dead (hiding a corrupted weight) depends on them
    return fuse(randomize_bn(ghostnet.create_model(name)).eval(), example_input=x, inplace=True)


def _split(fused: nn.Module, expected_count: int) -> nn.Module:
    split = copy.deepcopy(fused)
    assert split_ghost_concats(split) == expected_count
    return split


@pytest.mark.parametrize("name", SPLIT_MODELS)  # 0.2-0.7 s each at 45x37
def test_split_model_computes_the_fused_function(name):
    """Every block splits; float32 within rounding of the float64 truth, float64 equal to the fused model's."""
    x = _input()
    fused = _fused(name, x)
    split = _split(fused, BLOCKS_PER_MODEL)
    assert not any(isinstance(m, FusedGhostBottleneck) for m in split.modules())
    eager, reference = eager_and_reference(fused, x)
    with torch.no_grad():
        assert_float32_parity(split(x), eager, reference, what=f"split {name}")
    assert_float64_close(run_float64(float64_copy(split), x), reference, what=f"float64 split {name}")


def test_onnx_export_runs_in_onnxruntime_and_openvino(tmp_path):
    """The split GhostNetV2 (DFC gates split too) as dynamic-batch ONNX: onnxruntime and OpenVINO (float32 asked for:
    its default on AMX/AVX-512-bf16 CPUs is bfloat16) within float32 rounding of the truth."""
    x = _input()
    fused = _fused("ghostnetv2_100", x)
    split = _split(fused, BLOCKS_PER_MODEL)
    eager, reference = eager_and_reference(fused, x)
    path = export_onnx(split, tmp_path / "split.onnx", x[:1])
    got = run_onnx(onnx_session(path, threads=1), x)
    assert_float32_parity(got, eager, reference, what="split ghostnetv2_100 in onnxruntime")
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_PRECISION_HINT": "f32"})
    got = torch.from_numpy(compiled({0: x.numpy()})[0].copy())
    assert_float32_parity(got, eager, reference, what="split ghostnetv2_100 in OpenVINO")


#: Every kind of split weight: the DFC gate's (first and last conv, each half), the stride-2 depthwise conv's, SE's
#: reduce and expand convs', the second module's primary conv's.
SPLIT_CONVS = ["ghost1.short_conv.a.0", "ghost1.short_conv.a.2", "ghost1.short_conv.b.0", "ghost1.short_conv.b.2",
               "conv_dw.a", "conv_dw.b", "se.reduce_a", "se.reduce_b", "se.expand_a", "se.expand_b",
               "ghost2.primary_a", "ghost2.primary_b"]


def test_one_corrupted_split_weight_is_caught():
    """The check can fail: 1e-3 added to one weight of one split conv of a GhostNetV2 bottleneck (DFC, stride 2, SE)
    is at least 100x over the float64 bound on the block's output.

    On the block, not the whole network: in a randomly initialized network a DFC gate's channel 0 (the one
    `corrupt_one_weight` changes) often gates a dead ReLU map, or one whose effect the layers after it wash out
    below 1e-10 (the whole-network check below catches the other kinds)."""
    torch.manual_seed(0)
    block = randomize_bn(GhostBottleneck(16, 48, 24, dw_kernel_size=3, stride=2, se_ratio=0.25, dfc=True)).eval()
    x = torch.randn(2, 16, 11, 9, generator=torch.Generator().manual_seed(0))
    fused = fuse(nn.Sequential(block), example_input=x)
    split = _split(fused, 1)
    expected = run_float64(float64_copy(fused), x)  # the split weights are the fused float32 weights' exact parts
    assert_float64_close(run_float64(float64_copy(split), x), expected, what="uncorrupted block")
    for conv in SPLIT_CONVS:
        corrupted = copy.deepcopy(split)
        corrupt_one_weight(corrupted, conv=f"0.{conv}")
        error = float64_error(run_float64(float64_copy(corrupted), x), expected)
        assert error > 100 * FLOAT64_REL, f"{conv}: 1e-3 on one weight moved the block's output by only {error:.3g}"


def test_one_corrupted_split_weight_is_caught_in_the_network():
    """Through the whole GhostNetV2, float64: 1e-3 on one weight of block 3's depthwise, SE or second-module convs
    (its DFC gate's channel 0 gates a dead map there) fails the check against the fused model."""
    x = _input()
    fused = _fused("ghostnetv2_100", x)
    split = _split(fused, BLOCKS_PER_MODEL)
    reference = run_float64(float64_copy(fused), x)
    for conv in SPLIT_CONVS[4:]:
        corrupted = copy.deepcopy(split)
        corrupt_one_weight(corrupted, conv=f"blocks.3.0.{conv}")
        with pytest.raises(AssertionError, match="relative error"):
            assert_float64_close(run_float64(float64_copy(corrupted), x), reference, what=conv)


@pytest.mark.parametrize("name", ["ghostnet_050", "ghostnetv2_100"])
def test_symbolic_trace_and_torch_export(name):
    """torch.fx symbolic tracing (the DFC gate one opaque call, its sizes known when it runs) and torch.export give
    the eager split model's numbers."""
    x = _input()
    split = _split(_fused(name, x), BLOCKS_PER_MODEL)
    traced = torch.fx.symbolic_trace(split)
    with torch.no_grad():
        expected = split(x)
        torch.testing.assert_close(traced(x), expected, rtol=0, atol=0)
    program = torch.export.export(split, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), expected, rtol=0, atol=0)


def test_blocks_it_cannot_split_are_left_alone():
    """A single-path first module (no concat to remove), a channel-mixing SE gate and a grouped second primary conv
    stay fused blocks, uncounted; the others split and the model's function is unchanged."""
    x = _input()
    fused = _fused("ghostnet_050", x)
    blocks = [m for m in fused.modules() if isinstance(m, FusedGhostBottleneck)]
    blocks[0].ghost1.to_single_path()
    with_se = next(b for b in blocks if b.se is not None)
    with_se.se.gate = nn.Softmax(dim=1)  # not elementwise: a gate for the halves separately would differ
    grouped = blocks[-1]
    primary = grouped.ghost2.primary
    grouped.ghost2.primary = nn.Conv2d(primary.in_channels, primary.out_channels, 1, groups=2)
    kept = {blocks[0], with_se, grouped}
    assert [can_split(b) for b in blocks].count(False) == len(kept)
    split = copy.deepcopy(fused)
    assert split_ghost_concats(split) == BLOCKS_PER_MODEL - len(kept)
    left = [m for m in split.modules() if isinstance(m, FusedGhostBottleneck)]
    assert len(left) == len(kept) and sum(isinstance(m, SplitGhostBottleneck) for m in split.modules()) == 13
    assert_float64_close(run_float64(float64_copy(split), x), run_float64(float64_copy(fused), x))
    with pytest.raises(ValueError, match="cannot be split"):
        SplitGhostBottleneck(blocks[0])


@pytest.mark.parametrize("mid_chs, ratio, splits", [(15, 2, False), (12, 3, True), (16, 2, True)],
                         ids=["sliced", "ratio3", "plain"])
def test_standalone_bottlenecks(mid_chs, ratio, splits):
    """A sliced first module (ceil(15/2) * 2 = 16 maps cut to 15) is not split; a ratio-3 module (cheap maps twice
    the intrinsic ones) and a plain one, stride 2 with SE, split exactly; `model` itself is never replaced."""
    torch.manual_seed(0)
    block = randomize_bn(GhostBottleneck(8, mid_chs, 16, stride=2, se_ratio=0.25, ratio=ratio)).eval()
    x = torch.randn(2, 8, 9, 7, generator=torch.Generator().manual_seed(0))
    fused = fuse(nn.Sequential(block), example_input=x)
    assert isinstance(fused[0], FusedGhostBottleneck) and can_split(fused[0]) is splits
    assert split_ghost_concats(fused[0]) == 0  # a lone block: nothing holds it to be swapped
    split = _split(fused, int(splits))
    assert isinstance(split[0], SplitGhostBottleneck if splits else FusedGhostBottleneck)
    expected = run_float64(float64_copy(fused), x)
    assert_float64_close(run_float64(float64_copy(split), x), expected, what=f"split mid={mid_chs} ratio={ratio}")


@pytest.mark.slow
def test_split_models_are_every_model_with_fused_bottlenecks():
    """SPLIT_MODELS is every registered model whose fused form has Ghost bottlenecks (so the parametrized tests
    cover them all)."""
    x = torch.randn(1, 3, 64, 64)
    found = []
    for name in ghostnet.list_models():
        model = ghostnet.create_model(name).eval()
        fused = fuse(model, example_input=x, inplace=True)
        if any(isinstance(m, FusedGhostBottleneck) for m in fused.modules()):
            found.append(name)
    assert found == SPLIT_MODELS
