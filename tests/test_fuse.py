"""The fused inference form: same function as the original for every registered model.

Fusing is checked in float64 on both sides (support/numerics.py): equal up to float64 rounding, 1e-10 of the
output's scale, where a float32 tolerance would hide a wrong weight (one weight off by 1e-3 moves a GhostNet's
logits by 5e-7 of their scale or more).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from support.common import randomize_bn
from support.numerics import (GroupedConvAsEinsum, assert_float32_parity, assert_float64_close, corrupt_one_weight,
                              eager_and_reference)
from torch.overrides import TorchFunctionMode

import ghostnet
from ghostnet.deploy import FusedGhostBottleneck, FusedGhostModule, fold_batchnorms, fuse, single_path_ghost_modules
from ghostnet.layers import GhostModule

pytestmark = pytest.mark.usefixtures("one_thread")


def test_grouped_conv_helper_matches_aten():
    x, w, b = torch.randn(2, 12, 9, 7, dtype=torch.float64), torch.randn(24, 3, 3, 3, dtype=torch.float64), None
    for stride, padding, dilation in ((1, 1, 1), (2, 2, 2), ((2, 1), (0, 1), 1)):
        expected = torch.conv2d(x, w, b, stride, padding, dilation, 4)
        with GroupedConvAsEinsum():
            got = F.conv2d(x, w, b, stride, padding, dilation, 4)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _input_for(model: nn.Module) -> torch.Tensor:
    """One image of the model's size, at most 64x64 (CIFAR models: 32x32; ImageNet models: 64x64)."""
    chans, size, _ = model.pretrained_cfg["input_size"]
    size = min(size, 64)
    return torch.randn(1, chans, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
@pytest.mark.parametrize("name", ghostnet.list_models())
def test_fused_matches_original_float64(name):
    model = randomize_bn(ghostnet.create_model(name)).double().eval()
    x = _input_for(model)
    cfg = model.pretrained_cfg
    with torch.no_grad(), GroupedConvAsEinsum():
        expected = model(x)
        fused = fuse(model, example_input=x, inplace=True)  # in place: a copy of the big models costs seconds
        got = fused(x)
    assert_float64_close(got, expected, what=f"fused {name}")
    # Every 2-D batch norm of the registered models follows a convolution, so none may be left.
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert not any(isinstance(m, GhostModule) for m in fused.modules())
    assert fused.pretrained_cfg == cfg and fused.model_name == name
    # The concat-free form of every Ghost module that allows it computes the same function too.
    if name.startswith("ghostnet"):  # ReLU Ghost modules with depthwise cheap ops: all of them allow it
        assert single_path_ghost_modules(fused) == sum(isinstance(m, FusedGhostModule) for m in fused.modules()) > 0
    else:
        single_path_ghost_modules(fused)
    with torch.no_grad(), GroupedConvAsEinsum():
        assert_float64_close(fused(x), expected, what=f"single-path {name}")


def test_fuse_check_fails_for_one_corrupted_weight():
    """The float64 bound can fail: 1e-3 added to one stem weight of the fused model is thousands of times over it."""
    torch.manual_seed(0)
    model = randomize_bn(ghostnet.create_model("ghostnet_100")).double().eval()
    x = _input_for(model)
    with torch.no_grad(), GroupedConvAsEinsum():
        expected = model(x)
        fused = fuse(model, example_input=x, inplace=True)
        weight = corrupt_one_weight(fused)
        with pytest.raises(AssertionError, match="relative error"):
            assert_float64_close(fused(x), expected, what=weight)


def test_fuse_leaves_the_original_alone():
    model = randomize_bn(ghostnet.create_model("ghostnet_050")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fuse(model, example_input=torch.randn(1, 3, 32, 32))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning", "ignore::torch.jit.TracerWarning")
def test_fused_form_traces_without_the_training_models_checkpointing():
    model = ghostnet.create_model("ghostnet_050").eval()
    model.set_grad_checkpointing()
    x = torch.randn(1, 3, 64, 64)
    fused = fuse(model, example_input=x)
    assert not fused.grad_checkpointing and model.grad_checkpointing  # the copy only
    traced = torch.jit.trace(fused, x)  # with gradients on: through a checkpoint this fails its sanity check
    eager, reference = eager_and_reference(model, x)
    with torch.no_grad():
        assert_float32_parity(traced(x), eager, reference, what="traced fused model")


def test_fuse_in_place_returns_the_same_object():
    model = ghostnet.create_model("ghostnet_050").train()
    fused = fuse(model, example_input=torch.randn(1, 3, 32, 32), inplace=True)
    assert fused is model and not fused.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


class _OpCounter(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_fused_ghostnet_structure_and_op_count():
    model = ghostnet.create_model("ghostnet_100").eval()
    fused = fuse(model, example_input=torch.randn(1, 3, 32, 32))
    assert sum(isinstance(m, FusedGhostBottleneck) for m in fused.modules()) == 16
    assert sum(isinstance(m, FusedGhostModule) for m in fused.modules()) == 32
    counts = {}
    for m in (model, fused):
        counter = _OpCounter()
        with torch.no_grad(), counter:
            m(torch.randn(1, 3, 64, 64))
        counts[m] = counter.names
    assert "batch_norm" in counts[model] and "batch_norm" not in counts[fused]
    assert counts[fused].count("conv2d") == counts[model].count("conv2d") == 95
    assert counts[fused].count("cat") == 32
    # hard sigmoid as one op instead of relu6(x + 3) / 6: 7 SE blocks
    assert counts[fused].count("hardsigmoid") == 7
    assert len(counts[fused]) < len(counts[model]) - 80


def test_fused_v3_is_the_v2_inference_architecture():
    """Re-parameterized and fused, GhostNetV3 has exactly GhostNetV2's inference-form tensors."""
    x = torch.randn(1, 3, 32, 32)
    v3 = fuse(ghostnet.create_model("ghostnetv3_100"), example_input=x).state_dict()
    v2 = fuse(ghostnet.create_model("ghostnetv2_100"), example_input=x).state_dict()
    assert {k: v.shape for k, v in v3.items()} == {k: v.shape for k, v in v2.items()}


def test_channels_last_fused_model_matches():
    model = randomize_bn(ghostnet.create_model("ghostnetv2_100")).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad(), GroupedConvAsEinsum():
        fused = fuse(model, example_input=x, channels_last=True)
        assert fused.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
        assert_float64_close(fused(x), model(x), what="channels-last fused")


def test_fuse_works_on_a_torchvision_model():
    torchvision = pytest.importorskip("torchvision")
    model = randomize_bn(torchvision.models.mobilenet_v3_small(num_classes=10)).double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad(), GroupedConvAsEinsum():
        fused = fuse(model, example_input=x)
        assert_float64_close(fused(x), model(x), what="fused mobilenet_v3_small")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())


class _SharedOutput(nn.Module):
    """A conv whose output feeds its BN and also the residual: folding that BN would change the residual."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 4, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn2(self.conv2(self.bn(y) + y))


def test_bn_is_folded_only_when_it_alone_reads_the_conv_output():
    model = randomize_bn(_SharedOutput()).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    expected = model(x)
    assert fold_batchnorms(model, x) == 1
    assert isinstance(model.bn, nn.BatchNorm2d) and isinstance(model.bn2, nn.Identity)
    assert_float64_close(model(x), expected)


def test_fold_batchnorms_needs_eval_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorms(_SharedOutput().train(), torch.randn(1, 3, 8, 8))


def test_fuse_without_input_size_asks_for_an_example():
    with pytest.raises(ValueError, match="pass an example input"):
        fuse(_SharedOutput())


@pytest.mark.parametrize("kwargs", [
    dict(out_chs=16),  # s = 2, ReLU on both halves
    dict(out_chs=15),  # odd: the last cheap map is sliced off
    dict(out_chs=18, ratio=3),  # two cheap maps per intrinsic map
    dict(out_chs=16, dw_size=5, dilation=2),
    dict(out_chs=16, act_layer=None),  # a bottleneck's second module
    dict(out_chs=16, kernel_size=3, stride=2, act_layer=nn.ReLU6),
])
def test_single_path_ghost_module_is_exact_and_concat_free(kwargs):
    module = randomize_bn(GhostModule(8, **kwargs)).double().eval()
    x = torch.randn(2, 8, 11, 9, dtype=torch.float64)
    expected = module(x)
    fused = fuse(nn.Sequential(module), example_input=x)[0]
    assert isinstance(fused, FusedGhostModule) and fused.can_be_single_path()
    assert fused.to_single_path() is fused and not fused.can_be_single_path()  # converts once
    assert fused.primary.out_channels == fused.cheap.out_channels == kwargs["out_chs"]
    ops = _OpCounter()
    with torch.no_grad(), ops:
        got = fused(x)
    assert "cat" not in ops.names and ops.names.count("conv2d") == 2
    assert_float64_close(got, expected, what="single-path Ghost module")


@pytest.mark.parametrize("kwargs, reason", [
    (dict(cheap_op="pointwise"), "cheap maps read every intrinsic map"),
    (dict(act_layer=nn.Hardswish), "hardswish(hardswish(x)) != hardswish(x)"),
])
def test_single_path_refuses_what_it_cannot_rewrite(kwargs, reason):
    module = GhostModule(8, 16, **kwargs).eval()
    fused = fuse(nn.Sequential(module), example_input=torch.randn(1, 8, 6, 6))[0]
    assert not fused.can_be_single_path(), reason
    with pytest.raises(ValueError, match="cannot be rewritten without its concat"):
        fused.to_single_path()
    assert single_path_ghost_modules(fused) == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ghostnet.list_models("ghostnet*"))
def test_aligned_channels_compute_the_same_function(name):
    from ghostnet.deploy.align import align_channels

    model = randomize_bn(ghostnet.create_model(name)).double().eval()
    x = _input_for(model)
    with torch.no_grad(), GroupedConvAsEinsum():
        expected = model(x)
        fused = fuse(model, example_input=x, inplace=True)
        ghosts = [m for m in fused.modules() if isinstance(m, FusedGhostModule)]
        intrinsic = [g.primary.out_channels for g in ghosts]
        aligned = align_channels(fused, 16)
        got = aligned(x)
    assert_float64_close(got, expected, what=f"aligned {name}")
    convs = [m for m in aligned.blocks.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 16 == 0 and (c.in_channels // c.groups) % 16 in (0, 1) for c in convs)
    # Single path only where it fills padding: the 2h maps padded once take fewer channels than two padded halves.
    padded = lambda c: -(-c // 16) * 16  # noqa: E731
    assert all(padded(2 * h) < 2 * padded(h) for g, h in zip(ghosts, intrinsic) if g.single_path)
    assert not all(g.single_path for g in ghosts)


@pytest.mark.parametrize("name, expected", [("ghostnet_100", 8), ("ghostnet_050", 8), ("ghostnet_130", 0)])
def test_align_picks_single_path_where_it_paid_off(name, expected):
    """The choice measured in onnxruntime (docs/deployment.md): 8 of ghostnet_100's 32 modules; none in
    ghostnet_130, where filling all the padding with duplicates made it 14% slower."""
    from ghostnet.deploy.align import align_channels

    aligned = align_channels(fuse(ghostnet.create_model(name).eval()), 16)
    assert sum(m.single_path for m in aligned.modules() if isinstance(m, FusedGhostModule)) == expected


@pytest.mark.slow
@pytest.mark.parametrize("single_path", [True, False])
def test_aligned_channels_with_or_without_single_path(single_path):
    from ghostnet.deploy.align import align_channels

    model = randomize_bn(ghostnet.create_model("ghostnetv2_100")).double().eval()
    x = _input_for(model)
    with torch.no_grad(), GroupedConvAsEinsum():
        expected = model(x)
        aligned = align_channels(fuse(model, example_input=x, inplace=True), 16, single_path=single_path)
        got = aligned(x)
    assert_float64_close(got, expected, what="aligned ghostnetv2_100")
    ghosts = [m for m in aligned.modules() if isinstance(m, FusedGhostModule)]
    assert len(ghosts) == 32 and all(g.single_path == single_path for g in ghosts)


def test_align_refuses_what_it_cannot_pad():
    from ghostnet.deploy.align import align_channels, can_align

    resnet = fuse(ghostnet.create_model("ghost_resnet20_cifar"), example_input=torch.randn(1, 3, 32, 32))
    assert not can_align(resnet)
    with pytest.raises(ValueError, match="needs a fused GhostNet"):
        align_channels(resnet)
    unfused = ghostnet.create_model("ghostnet_050").eval()
    assert not can_align(unfused)
    with pytest.raises(ValueError, match="multiple must be >= 1"):
        align_channels(unfused, 0)


def test_align_keeps_one_layout_along_identity_shortcuts():
    """An identity shortcut adds a block's input to its output, so both must share a layout: a block's last Ghost
    module follows the form of the stage's first; a module converted by hand that cannot follow is a clear error."""
    from ghostnet.deploy.align import _blocks, align_channels

    model = randomize_bn(ghostnet.create_model("ghostnet_100")).double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    expected = model(x)
    fused = fuse(model, example_input=x)
    blocks = _blocks(fused)
    assert not len(blocks[2].shortcut) and blocks[2].ghost2.primary.out_channels == 12
    blocks[2].ghost2.to_single_path()  # block 1 writes its 2 x 12 maps as two padded halves: no match
    with pytest.raises(ValueError, match="identity shortcut between different layouts"):
        align_channels(fused, 16)
    fused = fuse(model, example_input=x)
    blocks = _blocks(fused)
    assert blocks[13].ghost2.primary.out_channels == 80 and not len(blocks[13].shortcut)
    blocks[13].ghost2.to_single_path()  # 80 = 5 blocks: both forms write the same layout, so it fits
    aligned = align_channels(fused, 16)
    assert blocks[13].ghost2.single_path and not blocks[12].ghost2.single_path
    with torch.no_grad():
        assert_float64_close(aligned(x), expected, what="aligned, one module single-path by hand")
