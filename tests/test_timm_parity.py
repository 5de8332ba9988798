"""Weight parity with timm: a timm checkpoint loads into ours (and ours into timm) with the same logits."""
from __future__ import annotations

import pytest
import torch

import ghostnet

from support.common import randomize_bn
from support.numerics import GroupedConvAsEinsum, assert_float64_close, corrupt_one_weight

timm = pytest.importorskip("timm", reason="the parity tests need the 'timm' extra (pip install -e '.[dev]')")

# timm's ten GhostNet names (the *_paddle models are PaddleClas's form, checked in test_paddle.py).
GHOSTNET_NAMES = [n for n in ghostnet.list_models("ghostnet*") if not n.endswith("_paddle")]


def test_all_ten_names_are_checked():
    assert len(GHOSTNET_NAMES) == 10 and all(timm.is_model(n) for n in GHOSTNET_NAMES)


def _logits64(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits in float64 (the weights were saved and loaded in float32; only the arithmetic is float64): both
    networks compute one function, so they must agree to float64 rounding, whatever the CPU's float32 kernels."""
    with torch.no_grad(), GroupedConvAsEinsum():
        return model.double()(x.double())


@pytest.mark.slow
@pytest.mark.parametrize("name", GHOSTNET_NAMES)
def test_timm_checkpoint_into_ours_and_back(name, tmp_path):
    torch.manual_seed(0)
    theirs = randomize_bn(timm.create_model(name)).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(theirs.state_dict(), path)
    ours = ghostnet.load_checkpoint(ghostnet.create_model(name), path).eval()
    # 224x224 reaches 7x7 maps, where the DFC branch pools an odd size.
    x = torch.randn(1, 3, 224, 224)
    assert_float64_close(_logits64(ours, x), _logits64(theirs, x), what=f"timm checkpoint in our {name}")

    # The converse: our weights into timm.
    torch.manual_seed(1)
    ours2 = randomize_bn(ghostnet.create_model(name), seed=1).eval()
    torch.save(ours2.state_dict(), path)
    theirs2 = timm.create_model(name)
    theirs2.load_state_dict(torch.load(path, weights_only=True))
    theirs2.eval()
    assert_float64_close(_logits64(theirs2, x), _logits64(ours2, x), what=f"our checkpoint in timm's {name}")


@pytest.mark.slow
def test_timm_parity_check_fails_for_one_corrupted_weight(tmp_path):
    """The float64 bound can fail: 1e-3 added to one stem weight of the loaded model is far over it (2600x)."""
    name = "ghostnetv2_100"
    torch.manual_seed(0)
    theirs = randomize_bn(timm.create_model(name)).eval()
    torch.save(theirs.state_dict(), tmp_path / "w.pth")
    ours = ghostnet.load_checkpoint(ghostnet.create_model(name), tmp_path / "w.pth").eval()
    weight = corrupt_one_weight(ours)
    x = torch.randn(1, 3, 224, 224)
    with pytest.raises(AssertionError, match="relative error"):
        assert_float64_close(_logits64(ours, x), _logits64(theirs, x), what=weight)
