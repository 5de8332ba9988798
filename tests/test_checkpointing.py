"""Gradient checkpointing: the same step as without it (outputs, gradients, BN statistics), with recomputation."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

import ghostnet
from ghostnet.layers import checkpointing
from ghostnet.layers.checkpointing import set_grad_checkpointing
from ghostnet.train import make_config, read_training_state, train
from support.training import tiny_config, write_npz_data

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = [("ghostnet_050", 64), ("ghostnetv2_100", 64), ("ghostnetv3_050", 64), ("ghost_resnet56_cifar", 16)]


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(1)  # the same dropout masks in both models
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach()


def _plain_and_checkpointed(name: str, size: int):
    torch.manual_seed(0)
    plain = ghostnet.create_model(name, num_classes=10).train().double()
    ckpt = copy.deepcopy(plain)
    set_grad_checkpointing(ckpt)
    x = torch.randn(4, 3, size, size, dtype=torch.float64)
    y = torch.randint(0, 10, (4,))
    return plain, ckpt, x, y


@pytest.mark.slow
@pytest.mark.parametrize("name,size", MODELS)
def test_checkpointed_step_equals_plain_step(name, size):
    plain, ckpt, x, y = _plain_and_checkpointed(name, size)
    calls = {"plain": 0, "ckpt": 0}
    first_stage = {"plain": plain, "ckpt": ckpt}
    for key, model in first_stage.items():
        stage = model.blocks[1] if hasattr(model, "blocks") else model.layer1
        # a pre-hook: the recomputation stops as soon as it has rebuilt what backward needs, before any forward hook
        stage.register_forward_pre_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
    assert torch.equal(_step(plain, x, y), _step(ckpt, x, y))
    assert calls == {"plain": 1, "ckpt": 2}  # the checkpointed stage ran again in the backward pass
    for (pname, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12), pname
    for (bname, a), b in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.equal(a, b), bname  # running statistics moved once, not twice


def test_plain_torch_checkpointing_would_update_bn_statistics_twice(monkeypatch):
    """What the restore is for: without it, the recomputation moves the running statistics a second time."""
    monkeypatch.setattr(checkpointing, "batchnorm_stats_kept", lambda module: contextlib.nullcontext())
    plain, ckpt, x, y = _plain_and_checkpointed("ghostnet_050", 64)
    _step(plain, x, y), _step(ckpt, x, y)
    plain_bn, ckpt_bn = (next(m for m in model.blocks[1].modules() if isinstance(m, torch.nn.BatchNorm2d))
                         for model in (plain, ckpt))  # the stage's first BN: recomputation always reaches it
    assert int(ckpt_bn.num_batches_tracked) == 2 * int(plain_bn.num_batches_tracked) == 2
    assert not torch.allclose(plain_bn.running_mean, ckpt_bn.running_mean)


def test_checkpointing_only_where_gradients_are_recorded(monkeypatch):
    used = []
    monkeypatch.setattr(checkpointing, "checkpoint", lambda fn, x, **kw: used.append(fn) or fn(x))
    plain, ckpt, x, _ = _plain_and_checkpointed("ghostnet_050", 64)
    with torch.no_grad():
        ckpt(x)  # evaluation: nothing to recompute
    assert not used
    ckpt(x)
    assert used == list(ckpt.blocks)  # every stage
    used.clear()
    ckpt.set_grad_checkpointing(False)
    ckpt(x)
    assert not used


def test_models_without_checkpointing_are_a_clear_error():
    with pytest.raises(ValueError, match="no gradient checkpointing"):
        set_grad_checkpointing(torchvision.models.resnet18())  # every registered model has it


@pytest.mark.slow
def test_training_run_with_checkpointing_ends_where_the_plain_run_ends(tmp_path):
    data = write_npz_data(tmp_path / "d")
    states = []
    for label, flag in (("plain", False), ("ckpt", True)):
        train(make_config(tiny_config(data, tmp_path / label, epochs=1, grad_checkpointing=flag)))
        states.append(read_training_state(tmp_path / label / "last.pt")["model"])
    for key, value in states[0].items():
        assert torch.allclose(value.double(), states[1][key].double(), rtol=1e-5, atol=1e-6), key
    with pytest.raises(ValueError, match="no gradient checkpointing"):
        train(make_config(tiny_config(data, tmp_path / "r18", epochs=1, model="torchvision:resnet18",
                                      model_kwargs={}, img_size=32, grad_checkpointing=True)))
