"""GhostNet v1/v2/v3: the published sizes, dense-prediction taps, dilation, options and input errors."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import ghostnet
from ghostnet.models import GhostNet

# Parameters (M) and multiply-accumulates (M) at 224x224, from ghostnet-facts.md section 1.1 (they match timm's
# parameter counts and the paper's FLOPs, which are MACs).
PUBLISHED = {
    "ghostnet_050": (2.59, 42.3), "ghostnet_100": (5.18, 141.2), "ghostnet_130": (7.36, 227.0),
    "ghostnetv2_100": (6.16, 167.0), "ghostnetv2_130": (8.96, 269.3), "ghostnetv2_160": (12.39, 398.6),
    # v3 after reparameterize(): the same as v2 at that width; 0.5x from the facts table.
    "ghostnetv3_050": (2.86, 49.6), "ghostnetv3_100": (6.16, 167.0), "ghostnetv3_130": (8.96, 269.3),
    "ghostnetv3_160": (12.39, 398.6),
}


def macs(model: torch.nn.Module, size: int = 224) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 2


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_and_macs_match_published(name):
    model = ghostnet.create_model(name).eval()
    if name.startswith("ghostnetv3"):
        model.reparameterize()
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    params_ref, macs_ref = PUBLISHED[name]
    assert params_m == pytest.approx(params_ref, rel=0.005)
    assert macs(model) / 1e6 == pytest.approx(macs_ref, rel=0.005)


def test_every_ghostnet_name_is_registered():
    assert set(PUBLISHED) <= set(ghostnet.list_models())
    assert ghostnet.list_models("ghostnetv2_*") == ["ghostnetv2_100", "ghostnetv2_130", "ghostnetv2_160"]


def test_data_config_travels_with_the_model():
    cfg = ghostnet.create_model("ghostnet_100").pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
    assert cfg["interpolation"] == "bicubic" and cfg["mean"] == (0.485, 0.456, 0.406)


def test_official_channel_rounding_at_1_3x():
    # facts 1.1: mid/out per block at 1.3x, then 1248 for the final conv.
    expected = [(20, 20), (64, 32), (92, 32), (92, 52), (156, 52), (312, 104), (260, 104), (240, 104), (240, 104),
                (624, 144), (872, 144), (872, 208)]
    model = GhostNet(width=1.3)
    blocks = [b for stage in model.blocks[:-1] for b in stage]
    got = [(b.ghost1.out_chs, b.ghost2.out_chs) for b in blocks][: len(expected)]
    assert got == expected
    assert model.num_features == 1248
    # SE reduction rounds to multiples of 4: 72 channels -> 20 (not 18) in block 3 at 1.0x.
    assert GhostNet().blocks[3][0].se.conv_reduce.out_channels == 20


def test_feature_taps_include_every_stride():
    model = ghostnet.create_model("ghostnet_100", features_only=True).eval()
    info = model.feature_info
    assert [(f.num_chs, f.reduction) for f in info] == [(16, 2), (24, 4), (40, 8), (112, 16), (960, 32)]
    feats = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 48), (24, 16, 24), (40, 8, 12), (112, 4, 6),
                                                   (960, 2, 3)]
    assert not hasattr(model, "conv_head") or model.conv_head is None


def test_out_indices_prune_unused_stages():
    model = ghostnet.create_model("ghostnet_100", features_only=True, out_indices=(1, 3))
    assert [f.reduction for f in model.feature_info] == [4, 16]
    assert len(model.blocks) == 7  # stages 7, 8 and the final conv are not built
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [24, 112]


@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_by_dilation(output_stride):
    model = ghostnet.create_model("ghostnetv2_100", features_only=True, output_stride=output_stride).eval()
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [64 // min(r, output_stride) for r in (2, 4, 8, 16, 32)]
    assert [f.reduction for f in model.feature_info] == [min(r, output_stride) for r in (2, 4, 8, 16, 32)]
    # Dilation keeps the weights: a dilated model loads the stride-32 model's state_dict.
    plain = ghostnet.create_model("ghostnetv2_100", features_only=True)
    model.load_state_dict(plain.state_dict())


def test_dilated_classifier_runs():
    model = ghostnet.create_model("ghostnetv3_050", output_stride=8).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.dilation[0] > 1]
    assert max(c.dilation[0] for c in convs) == 4


def test_head_options():
    model = ghostnet.create_model("ghostnet_050", num_classes=0, in_chans=1, global_pool="avgmax").eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 1280)
    model.reset_classifier(7)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert ghostnet.create_model("ghostnet_050", stem_stride=1).min_input_size == 16


def test_dropout_only_in_training():
    model = ghostnet.create_model("ghostnet_050", drop_rate=0.5, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model.forward_head(torch.ones(2, model.num_features, 1, 1), pre_logits=True)
    assert (a == 0).any()


@pytest.mark.parametrize("shape,message", [
    ((3, 224, 224), r"expected a 4-D batch \(N, C, H, W\), got a tensor of shape \(3, 224, 224\)"),
    ((1, 1, 224, 224), "expected 3 input channels, got 1"),
    ((1, 3, 31, 224), "input 31x224 is too small: this network needs at least 32x32 pixels"),
])
def test_bad_input_gives_clear_error(shape, message):
    model = ghostnet.create_model("ghostnet_050")
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))


@pytest.mark.parametrize("kwargs,message", [
    (dict(version="v4"), "unknown GhostNet version 'v4'"),
    (dict(output_stride=4), "output_stride must be 8, 16 or 32"),
    (dict(global_pool="sum"), "global_pool must be one of"),
    (dict(global_pool="catavgmax"), "global_pool must be one of"),  # the head conv takes num_features channels
    (dict(global_pool=""), "global_pool='' leaves the features unpooled"),  # num_classes=0 with it, as in timm
    (dict(features_only=True, out_indices=(5,)), r"out_indices must be in 0..4"),
])
def test_bad_model_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GhostNet(**kwargs)


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'ghostnet_10'; did you mean .*ghostnet_100"):
        ghostnet.create_model("ghostnet_10")
