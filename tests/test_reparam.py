"""GhostNetV3: reparameterize() fuses the training branches in place without changing the function."""
from __future__ import annotations

import pytest
import torch

import ghostnet
from ghostnet.layers import GhostModuleV3

from support.common import randomize_bn
from support.numerics import GroupedConvAsEinsum, assert_float64_close, corrupt_one_weight


def branch_modules(model):
    return [n for n, _ in model.named_modules() if "rpr" in n]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ghostnetv3_050", "ghostnetv3_100", "ghostnetv3_130", "ghostnetv3_160"])
def test_reparameterize_is_exact_in_float64(name):
    model = randomize_bn(ghostnet.create_model(name)).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad(), GroupedConvAsEinsum():  # ATen loops over the groups of a float64 grouped conv: slow
        before = model(x)
        fused = model.reparameterize()
        after = model(x)
    assert fused is model and not branch_modules(model)
    # float64 on both sides: equal up to float64 rounding (support/numerics.py), not a float32-sized allowance
    assert_float64_close(after, before, what=f"reparameterized {name}")
    # Fused: one conv (with bias) per branch group, no BN left in primary/cheap or the strided depthwise conv.
    block = model.blocks[1][0]
    assert block.conv_dw.bias is not None and isinstance(block.bn_dw, torch.nn.Identity)
    assert block.ghost1.primary_conv[0].bias is not None


@pytest.mark.slow
def test_reparameterize_is_idempotent_and_keeps_training_form_trainable():
    model = randomize_bn(ghostnet.create_model("ghostnetv3_050", num_classes=5)).eval()
    x = torch.randn(1, 3, 32, 32)
    n_train_form = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        model.reparameterize()
        y = model(x)
        model.reparameterize()
        assert torch.equal(model(x), y)  # a second call has nothing left to fuse: not one bit may change
    assert sum(p.numel() for p in model.parameters()) < n_train_form


def test_module_with_ratio_3_has_no_identity_branch_and_fuses():
    m = randomize_bn(GhostModuleV3(8, 12, ratio=3, dw_size=5, dilation=2)).double().eval()
    assert m.cheap_rpr_skip is None
    x = torch.randn(1, 8, 11, 11, dtype=torch.float64)
    with torch.no_grad():
        before = m(x)
        m.reparameterize()
        assert_float64_close(m(x), before, what="reparameterized GhostModuleV3(ratio=3)")


@pytest.mark.slow
def test_reparam_check_fails_for_one_corrupted_weight():
    """The float64 bound can fail: 1e-3 added to one stem weight after reparameterize() is far over it."""
    torch.manual_seed(0)
    model = randomize_bn(ghostnet.create_model("ghostnetv3_050")).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad(), GroupedConvAsEinsum():  # float64 grouped convs, fast
        before = model(x)
        model.reparameterize()
        weight = corrupt_one_weight(model)
        with pytest.raises(AssertionError, match="relative error"):
            assert_float64_close(model(x), before, what=weight)
