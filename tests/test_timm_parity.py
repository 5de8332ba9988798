"""Weight parity with timm: a timm checkpoint loads into ours (and ours into timm) with the same logits."""
from __future__ import annotations

import pytest
import torch

import ghostnet

from conftest import randomize_bn

timm = pytest.importorskip("timm", reason="the parity tests need the 'timm' extra (pip install -e '.[dev]')")

# timm's ten GhostNet names (the *_paddle models are PaddleClas's form, checked in test_paddle.py).
GHOSTNET_NAMES = [n for n in ghostnet.list_models("ghostnet*") if not n.endswith("_paddle")]


def test_all_ten_names_are_checked():
    assert len(GHOSTNET_NAMES) == 10 and all(timm.is_model(n) for n in GHOSTNET_NAMES)


@pytest.mark.parametrize("name", GHOSTNET_NAMES)
def test_timm_checkpoint_into_ours_and_back(name, tmp_path):
    torch.manual_seed(0)
    theirs = randomize_bn(timm.create_model(name)).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(theirs.state_dict(), path)
    ours = ghostnet.load_checkpoint(ghostnet.create_model(name), path).eval()
    # 224x224 reaches 7x7 maps, where the DFC branch pools an odd size.
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        reference = theirs(x)
        assert (ours(x) - reference).abs().max() <= 1e-5

    # The converse: our weights into timm.
    torch.manual_seed(1)
    ours2 = randomize_bn(ghostnet.create_model(name), seed=1).eval()
    torch.save(ours2.state_dict(), path)
    theirs2 = timm.create_model(name)
    theirs2.load_state_dict(torch.load(path, weights_only=True))
    theirs2.eval()
    with torch.no_grad():
        assert (theirs2(x) - ours2(x)).abs().max() <= 1e-5
