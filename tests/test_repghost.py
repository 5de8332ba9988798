"""RepGhostNet: timm parity both ways in both forms, in-place fusion, the official table, taps, options, weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from support.common import randomize_bn

import ghostnet
from ghostnet.analysis import profile
from ghostnet.deploy import fuse
from ghostnet.layers.repghost import RepGhostBottleneck, RepGhostModule
from ghostnet.models.repghost import RepGhostNet

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.usefixtures("one_thread")

#: Official README table (ghostnet-facts.md section 9): params (M) and MACs (M) at 224x224, deploy form, counted by a
#: modified thop over conv and linear layers only.
PUBLISHED = {
    "repghostnet_050": (2.3, 43), "repghostnet_058": (2.5, 60), "repghostnet_080": (3.3, 96),
    "repghostnet_100": (4.1, 142), "repghostnet_111": (4.5, 170), "repghostnet_130": (5.5, 231),
    "repghostnet_150": (6.6, 301), "repghostnet_200": (9.8, 516),
}
NAMES = sorted(PUBLISHED)
SIZE = 64  # 2x2 maps at stride 32: every padding and stride path runs, at a small cost
TIGHT = 1e-10  # float64, relative to the output scale: the same sums in the same order, or a reordering of them


def _images(batch: int = 2, size: int = SIZE, dtype: torch.dtype = torch.float64, chans: int = 3) -> torch.Tensor:
    return torch.randn(batch, chans, size, size, dtype=dtype, generator=torch.Generator().manual_seed(size + batch))


def _rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


def _timm_model(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(timm.create_model(name), seed).double().eval()


def _our_model(name: str, seed: int, **kwargs) -> RepGhostNet:
    torch.manual_seed(seed)
    return randomize_bn(ghostnet.create_model(name, **kwargs), seed).double().eval()


def test_every_width_is_registered_under_timm_s_name():
    assert ghostnet.list_models("repghost*") == NAMES
    assert set(NAMES) <= set(timm.list_models("repghost*"))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_timm_both_ways_in_training_and_deploy_form(name):
    x = _images()
    theirs, ours = _timm_model(name, 1), _our_model(name, 2)
    assert list(ours.state_dict()) == list(theirs.state_dict())  # same keys, same order
    # timm's random weights (and BN statistics) in ours ...
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert _rel_err(_logits(ours, x), _logits(theirs, x)) <= TIGHT
    # ... and ours in timm's.
    ours = _our_model(name, 3)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    reference = _logits(ours, x)
    assert _rel_err(_logits(theirs, x), reference) <= TIGHT
    # Deploy form: in place, the same function, and the same keys as timm's convert_to_deploy() leaves.
    assert ours.reparameterize() is ours
    assert _rel_err(_logits(ours, x), reference) <= TIGHT
    theirs.convert_to_deploy()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert _rel_err(_logits(theirs, x), reference) <= TIGHT


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_fuse_matches_the_float64_reference(name):
    model = _our_model(name, 4)
    x = _images()
    reference = _logits(model, x)
    fused64 = fuse(model, example_input=x)
    fused32 = fuse(model.float(), example_input=x.float(), inplace=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused64.modules())
    assert _rel_err(_logits(fused64, x), reference) <= TIGHT
    # float32 after folding: rounding only (measured 3e-7 to 6e-7 of the output scale).
    assert _rel_err(_logits(fused32, x.float()).double(), reference) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_deploy_form_params_and_macs_match_the_official_table(name):
    # Counted on the meta device (shapes only) by ghostnet.analysis.profile (torch's flop counter: conv and linear
    # multiply-accumulates). After fuse() every batch norm is folded, so every parameter is a conv or linear weight or
    # bias, as in the table. Ours are 0.02-0.8% off in MACs and 0.1-1.4% off in parameters: the table rounds to 0.1M
    # (worth up to 2% at 2.5M), and its count keeps the non-RepGhost BNs unfolded, so it lacks their folded biases
    # (0.15-0.2% of the parameters). Training form: the same MACs (BN and the identity branch are not counted).
    with torch.device("meta"):
        model = ghostnet.create_model(name).eval()
    train_macs = profile(model, measure_memory=False).macs
    fused = fuse(model, example_input=torch.empty(1, 3, 32, 32, device="meta"), inplace=True)
    assert all(isinstance(m, (nn.Conv2d, nn.Linear)) for m in fused.modules() if list(m.parameters(recurse=False)))
    counted = profile(fused, measure_memory=False)
    params, macs = PUBLISHED[name]
    assert counted.params / 1e6 == pytest.approx(params, rel=0.02)
    assert counted.macs / 1e6 == pytest.approx(macs, rel=0.02)
    assert counted.macs == train_macs


def test_reparameterize_leaves_no_bn_branch():
    model = _our_model("repghostnet_050", 5)
    modules = [m for m in model.modules() if isinstance(m, RepGhostModule)]
    bns_before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(modules) == 2 * 16 and all(m.fusion_bn is not None for m in modules)
    model.reparameterize()
    for m in modules:
        assert m.reparameterized and m.fusion_bn is None
        assert type(m.cheap_operation) is nn.Conv2d and m.cheap_operation.bias is not None
        assert m.cheap_operation.groups == m.out_chs
    # Each module loses its identity BN and its depthwise BN; nothing else changes.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bns_before - 2 * len(modules)
    assert not any("fusion_bn" in k or ".cheap_operation.1." in k for k in model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reparameterize()  # a second call changes nothing
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_checks_can_fail():
    """One corrupted weight breaks the parity check; a fusion that drops the identity branch breaks the fusion check."""
    x = _images()
    theirs, ours = _timm_model("repghostnet_050", 6), _our_model("repghostnet_050", 6)
    ours.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        ours.blocks[6][2].ghost2.cheap_operation[0].weight[3, 0, 1, 1] += 0.01  # linear module: no ReLU hides it
    assert _rel_err(_logits(ours, x), _logits(theirs, x)) > 100 * TIGHT
    model = _our_model("repghostnet_050", 7)
    reference = _logits(model, x)
    for m in model.modules():
        if isinstance(m, RepGhostModule):
            m.fusion_bn = None  # as if the BN identity branch were dropped instead of folded
    model.reparameterize()
    assert _rel_err(_logits(model, x), reference) > 1e-2


def test_features_only_taps_at_the_end_of_every_stride():
    model = ghostnet.create_model("repghostnet_100", features_only=True).eval()
    assert [(f.num_chs, f.reduction, f.module) for f in model.feature_info] == [
        (16, 2, "blocks.0"), (24, 4, "blocks.2"), (40, 8, "blocks.4"), (112, 16, "blocks.6"), (960, 32, "blocks.9")]
    assert model.conv_head is None and model.classifier is None
    x = _images(1, dtype=torch.float32)[..., :48]  # non-square: 64 x 48
    feats = _logits(model, x)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 24), (24, 16, 12), (40, 8, 6), (112, 4, 3), (960, 2, 2)]
    # The taps are the classifier's own intermediate maps (same weights: the features model is a prefix of it).
    full = ghostnet.create_model("repghostnet_100").eval()
    full.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(full.forward_intermediates(x, intermediates_only=True), feats))
    pruned = ghostnet.create_model("repghostnet_100", features_only=True, out_indices=(1, 3))
    assert len(pruned.blocks) == 7 and [f.reduction for f in pruned.feature_info] == [4, 16]


@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_stride_by_dilation_keeps_weights_and_early_taps(output_stride):
    base = ghostnet.create_model("repghostnet_050", features_only=True).eval()
    dilated = ghostnet.create_model("repghostnet_050", features_only=True, output_stride=output_stride).eval()
    dilated.load_state_dict(base.state_dict(), strict=True)  # the undilated weights fit
    assert [f.reduction for f in dilated.feature_info] == [2, 4, 8, min(16, output_stride), output_stride]
    x = _images(1, dtype=torch.float32)
    feats, base_feats = _logits(dilated, x), _logits(base, x)
    assert [f.shape[-1] for f in feats] == [SIZE // f.reduction for f in dilated.feature_info]
    kept = 3 if output_stride == 8 else 4  # taps before the first dilated block are unchanged
    assert all(torch.equal(a, b) for a, b in zip(feats[:kept], base_feats[:kept]))


def test_options_and_input_errors():
    model = ghostnet.create_model("repghostnet_050", num_classes=10, in_chans=1, drop_rate=0.5)
    assert _logits(model, _images(2, 32, torch.float32, chans=1)).shape == (2, 10)
    pre_logits = _logits(ghostnet.create_model("repghostnet_050", num_classes=0), torch.randn(1, 3, 32, 32))
    assert pre_logits.shape == (1, 1280)
    x = _images(4, 32, torch.float32, chans=1)
    model.train()
    assert not torch.equal(model(x), model(x))  # dropout before the classifier
    with pytest.raises(ValueError, match="expected 1 input channels, got 3"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        RepGhostNet(output_stride=4)
    with pytest.raises(ValueError, match="dw_size must be odd"):
        RepGhostModule(8, 8, dw_size=2)
    norep = RepGhostNet(width=0.5, reparam=False)  # the official "norep" ablation: no identity branch to fold
    assert not any("fusion_bn" in k for k in norep.state_dict())
    assert isinstance(norep.blocks[1][0], RepGhostBottleneck) and norep.blocks[1][0].conv_dw.stride == (2, 2)


def test_gradient_checkpointing_gives_the_same_step():
    x = _images(2, 32, torch.float32)
    grads, outputs = [], []
    for enable in (False, True):
        torch.manual_seed(0)
        model = ghostnet.create_model("repghostnet_050").train()
        model.set_grad_checkpointing(enable)
        out = model(x)
        out.square().mean().backward()
        outputs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.equal(outputs[0], outputs[1])
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("name", ["repghostnet_050", "repghostnet_130"])
def test_a_timm_checkpoint_file_loads_through_create_model(name, tmp_path):
    """A file saved as timm's hub copies are (safetensors of timm's state_dict) loads unchanged, nothing downloaded."""
    from safetensors.torch import save_file

    theirs = _timm_model(name, 8).float()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(path))
    ours = ghostnet.create_model(name, pretrained=str(path))
    x = _images(1, dtype=torch.float32)
    torch.testing.assert_close(_logits(ours, x), _logits(theirs, x), rtol=1e-5, atol=1e-6)


def test_weights_table_points_at_timm_s_hub_copies():
    from ghostnet.weights import default_tag, get_weights

    for name in NAMES:
        entry = get_weights(name)
        assert default_tag(name) == "timm" == entry.tag
        hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id  # "timm/repghostnet_050.in1k"
        assert entry.url == f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors"
        assert entry.data_config["interpolation"] == timm.models.get_pretrained_cfg(name).interpolation


def test_recipe_keeps_the_official_command():
    from ghostnet.train import load_recipe

    r = load_recipe("imagenet_repghostnet")
    assert (r.model, r.epochs, r.batch_size, r.optimizer, r.lr, r.schedule) == (
        "repghostnet_100", 300, 8 * 128, "sgd", 0.6, "cosine")
    assert (r.warmup_epochs, r.warmup_lr, r.weight_decay, r.model_kwargs["drop_rate"]) == (5, 1e-4, 1e-5, 0.2)
    assert (r.ema_decay, r.random_erasing, r.re_mode, r.amp != "none") == (0.9999, 0.2, "pixel", True)
