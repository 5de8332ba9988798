"""GhostNetV2's DFC attention in its deploy form (ghostnet/deploy/dfc.py): the trained model's function exactly (float64
to 1e-12 of the output's scale), on any map size, and a graph that onnxruntime keeps in its blocked layout."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from support.common import randomize_bn
from support.numerics import (GroupedConvAsEinsum, assert_float32_parity, assert_float64_close, corrupt_one_weight,
                              eager_and_reference)

import ghostnet
from ghostnet.deploy import FusedGhostModule, fuse
from ghostnet.deploy.dfc import DeployDFC, dfc_pool_kernel, upsample_factor
from ghostnet.layers import GhostModule, dfc_attention

pytestmark = pytest.mark.usefixtures("one_thread")

#: Exact means equal up to float64 rounding: batch-norm folding and a different summation order, nothing else.
EXACT = 1e-12
#: Every registered model with DFC attention (GhostNetV3 is GhostNetV2 plus training-time branches).
DFC_MODELS = ghostnet.list_models("ghostnetv2*") + ghostnet.list_models("ghostnetv3*")
#: Map sides that exercise every path: one pixel (no pooling along it), 2-3 pixels (a 1-pixel gate, broadcast),
#: even sides (an integer upsampling), odd sides (2n -> 2n+1: PyTorch's size-based resize), non-square maps.
SIZES = [(1, 1), (1, 6), (5, 1), (2, 2), (3, 3), (2, 5), (7, 7), (14, 14), (9, 4), (3, 8), (15, 2), (33, 33),
         (57, 40), (6, 13)]


def _fused_module(module: GhostModule, x: torch.Tensor) -> FusedGhostModule:
    fused = fuse(nn.Sequential(module), example_input=x)[0]
    assert isinstance(fused, FusedGhostModule) and isinstance(fused.short_conv, DeployDFC)
    return fused


@pytest.mark.parametrize("h, w", SIZES)
@pytest.mark.parametrize("geometry", [dict(), dict(kernel_size=3, stride=2)], ids=["1x1", "3x3-stride2"])
def test_gate_equals_the_training_form_in_float64(h, w, geometry):
    """The gated product against `out * dfc_attention(...)` of the unfused module: batch 3, float64."""
    module = randomize_bn(GhostModule(8, 16, dfc=True, **geometry)).double().eval()
    x = torch.randn(3, 8, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(h * 100 + w))
    fused = _fused_module(module, x)
    with torch.no_grad():
        out_size = tuple(module.primary_conv(x).shape[-2:])
        out = torch.randn(3, 16, *out_size, dtype=torch.float64)
        expected = out * dfc_attention(module.short_conv, x, out_size)
        assert_float64_close(fused.short_conv(out, x), expected, rel=EXACT, what=f"DFC gate at {h}x{w}")
        assert_float64_close(fused(x), module(x), rel=EXACT, what=f"fused Ghost module at {h}x{w}")


@pytest.mark.slow
@pytest.mark.parametrize("name", DFC_MODELS)
def test_every_dfc_model_is_exact_at_odd_non_square_sizes(name):
    """Fused v2/v3 against the model as trained, float64, batch 2, 45x37 (maps of 23x19, 12x10, 6x5, 3x3, 2x2)."""
    model = randomize_bn(ghostnet.create_model(name)).double().eval()
    x = torch.randn(2, 3, 45, 37, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), GroupedConvAsEinsum():
        expected = model(x)
        fused = fuse(model, example_input=x, inplace=True)
        assert sum(isinstance(m, DeployDFC) for m in fused.modules()) == 14
        assert_float64_close(fused(x), expected, rel=EXACT, what=f"fused {name} at 45x37")


@pytest.mark.parametrize("conv", [0, 1, 2], ids=["1x1", "horizontal", "vertical"])
def test_one_corrupted_dfc_weight_is_caught(conv):
    """The check can fail: 1e-3 added to one weight of one DFC branch (of 6 million weights) is 1000x over the bound.

    The weight changes the gate of channel 0 only; block 5.0 is one where that channel is not a dead ReLU map on
    this input (in some blocks it is zero everywhere, and no gate on it could show)."""
    torch.manual_seed(0)  # the model's initial weights: which maps are dead ReLU maps depends on them
    model = randomize_bn(ghostnet.create_model("ghostnetv2_100")).double().eval()
    x = torch.randn(2, 3, 45, 37, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), GroupedConvAsEinsum():
        expected = model(x)
        fused = fuse(model, example_input=x, inplace=True)
        weight = corrupt_one_weight(fused, conv=f"blocks.5.0.ghost1.short_conv.{conv}")
        with pytest.raises(AssertionError, match="relative error"):
            assert_float64_close(fused(x), expected, rel=EXACT, what=weight)


def test_upsample_factor_reads_what_pytorch_reads():
    """Where a factor is returned, upsampling by it copies exactly what the size-based nearest resize copies."""
    assert [upsample_factor(n, 2 * n) for n in (1, 3, 7, 28)] == [2, 2, 2, 2]
    assert [upsample_factor(n, 2 * n + 1) for n in (2, 3, 7, 28)] == [None] * 4
    assert upsample_factor(1, 7) == 7 and upsample_factor(5, 5) == 1 and upsample_factor(4, 3) is None
    generator = torch.Generator().manual_seed(0)
    for n in range(1, 24):
        for size in range(1, 70):
            factor = upsample_factor(n, size)
            if factor is None:
                continue
            gate = torch.rand(1, 2, n, n, generator=generator)
            resized = F.interpolate(gate, size=(size, size), mode="nearest")
            assert torch.equal(F.interpolate(gate, scale_factor=float(factor), mode="nearest"), resized), (n, size)


def test_pool_kernel_skips_one_pixel_sides():
    assert dfc_pool_kernel(7, 7) == (2, 2) and dfc_pool_kernel(1, 6) == (1, 2) and dfc_pool_kernel(5, 1) == (2, 1)
    assert dfc_pool_kernel(1, 1) == (1, 1)


# --- onnxruntime -------------------------------------------------------------------------------------------------


def _export(model: nn.Module, path, size: tuple[int, int], align: int = 0):
    from ghostnet.deploy.align import align_channels
    from ghostnet.deploy.onnx_io import export_onnx

    x = torch.randn(1, 3, *size)
    fused = fuse(model, example_input=x)
    return export_onnx(align_channels(fused, align) if align else fused, path, x)


@pytest.mark.slow
@pytest.mark.parametrize("align", [0, 16], ids=["plain", "aligned"])
def test_onnx_at_an_odd_non_square_size_matches_float64(align, tmp_path):
    pytest.importorskip("onnxruntime")
    from ghostnet.deploy.onnx_io import onnx_session, run_onnx

    torch.manual_seed(0)
    model = randomize_bn(ghostnet.create_model("ghostnetv2_100")).eval()
    path = _export(model, tmp_path / "v2.onnx", (72, 56), align)
    x = torch.randn(3, 3, 72, 56, generator=torch.Generator().manual_seed(1))  # a batch size the export did not see
    eager, reference = eager_and_reference(model, x)
    assert_float32_parity(run_onnx(onnx_session(path, threads=1), x), eager, reference,
                          what=f"ghostnetv2_100 onnxruntime at 72x56, aligned to {align}")


@pytest.mark.slow
def test_onnx_graph_has_constant_shapes_and_a_declared_batch(tmp_path):
    """No shape arithmetic where every gate upsamples by an integer factor; every Resize output carries the
    symbolic batch (onnx_shapes.declare_batch_through_resize)."""
    onnx = pytest.importorskip("onnx")
    model = ghostnet.create_model("ghostnetv2_100").eval()
    proto = onnx.load(str(_export(model, tmp_path / "even.onnx", (64, 64))))
    ops = [node.op_type for node in proto.graph.node]
    assert {"Shape", "Gather", "Slice"}.isdisjoint(ops)
    resizes = [node for node in proto.graph.node if node.op_type == "Resize"]
    assert resizes and all(node.input[2] and len(node.input) == 3 for node in resizes)  # constant scales, no sizes
    declared = {v.name: v.type.tensor_type.shape.dim[0].dim_param for v in proto.graph.value_info}
    assert all(declared.get(node.output[0]) == "batch" for node in resizes)
    # At 56x56 the last stage's maps are 7x7: their 3x3 gates take the size-based resize, one Shape node each.
    odd = onnx.load(str(_export(model, tmp_path / "odd.onnx", (56, 56))))
    sized = [node for node in odd.graph.node if node.op_type == "Resize" and len(node.input) == 4]
    assert sized and [node.op_type for node in odd.graph.node].count("Shape") == len(sized)


def _reorders(path, tmp_path, name: str) -> int:
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / name)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sum(node.op_type.startswith("Reorder") for node in onnx.load(str(tmp_path / name)).graph.node)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_declared_batch_keeps_gated_products_in_the_blocked_layout(tmp_path):
    """What the declaration is for: without it onnxruntime reorders every gated product out of NCHWc and back."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from ghostnet.deploy.align import nchwc_block_size

    block = nchwc_block_size()
    if not block:
        pytest.skip("onnxruntime has no blocked (NCHWc) kernels on this CPU")
    path = _export(ghostnet.create_model("ghostnetv2_100").eval(), tmp_path / "d.onnx", (64, 64), block)
    proto = onnx.load(str(path))
    resized = {node.output[0] for node in proto.graph.node if node.op_type == "Resize"}
    for value in [v for v in proto.graph.value_info if v.name in resized]:
        proto.graph.value_info.remove(value)
    onnx.save(proto, str(tmp_path / "undeclared.onnx"))
    declared = _reorders(path, tmp_path, "declared.opt.onnx")
    undeclared = _reorders(tmp_path / "undeclared.onnx", tmp_path, "undeclared.opt.onnx")
    assert declared + 2 * len(resized) <= undeclared, (declared, undeclared)
